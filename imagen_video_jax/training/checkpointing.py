"""Orbax checkpoints of a training job: train state, data iterator, config.

One `CheckpointManager` under `<workdir>/checkpoints`, one composite item per step:

  state   the TrainState (params, EMA params, optimizer state, counters); restored
          into the shardings of the running job (abstract targets with shardings)
  data    the grain iterator's position (grain's own checkpoint handler)
  config  the run's config as JSON; a resume compares it with the new run's config

Saves are asynchronous (the state is copied to host before `save` returns, so the
train step may donate its buffers right away); `keep` checkpoints are kept. A state
with a non-finite value is never saved.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from imagen_video_jax.training import state as state_lib

# Fields a resumed run may change: how long it runs and how it reports, not what it learns.
RESUMABLE_FIELDS = (
  'num_steps',
  'log_every',
  'checkpoint_every_steps',
  'checkpoint_every_secs',
  'keep_checkpoints',
  'sample_every',
  'max_nonfinite_in_a_row',
  'debug_nan_steps',
  'debug_sleep_secs',
  'data.dir',
  'data.num_threads',
  'data.prefetch_rows',
  'data.worker_count',
  'data.skip_bad_records',  # what to do with a bad record, not what the data is
  'sample.*',
  'text.tokenizer',
  'name',
  'mesh.*',  # orbax restores into the new run's shardings: resume on another mesh
  'model.remat',  # recomputation only; model.scan_blocks changes the params' layout
  'stop_after_secs',
  'init_from',  # read at step 0 only: a run that has begun resumes from its checkpoints
)


class ConfigMismatchError(ValueError):
  """The workdir holds a run whose config differs from this one."""


class NonFiniteCheckpointError(RuntimeError):
  """Refused to save a state holding NaN or Inf."""


def flatten(d: Any, prefix: str = '') -> dict[str, Any]:
  """Nested dicts -> {'a.b.c': leaf}; lists and tuples stay leaves (as JSON lists)."""
  out = {}
  if isinstance(d, dict):
    for k, v in d.items():
      out.update(flatten(v, f'{prefix}{k}.'))
  else:
    out[prefix[:-1]] = d
  return out


def config_to_dict(config) -> dict:
  """A ConfigDict (or dict) as plain JSON data (tuples become lists)."""
  if hasattr(config, 'to_json_best_effort'):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config, default=str))


def _allowed(name: str, allowed: Iterable[str]) -> bool:
  for a in allowed:
    if name == a or (a.endswith('.*') and name.startswith(a[:-1])):
      return True
  return False


def _added_field_defaults() -> dict[str, Any]:
  """model.* fields added since runs were first saved, with the value older runs had.

  A checkpoint without such a field resumes under a config that holds its default.
  """
  import dataclasses
  from imagen_video_jax.models.unet import UNetConfig

  return {
    f'model.{f.name}': f.default
    for f in dataclasses.fields(UNetConfig)
    if f.default is not dataclasses.MISSING
  }


def config_differences(
  saved: dict, current: dict, allowed: Iterable[str] = RESUMABLE_FIELDS
) -> list[str]:
  """'field: checkpoint X, now Y' for every field that differs and may not change."""
  a, b = flatten(config_to_dict(saved)), flatten(config_to_dict(current))
  diffs = []
  for name in sorted(set(a) | set(b)):
    if _allowed(name, allowed):
      continue
    va, vb = a.get(name, '<absent>'), b.get(name, '<absent>')
    default = _added_field_defaults().get(name, '<absent>')
    if (
      va != vb
      and not (va == '<absent>' and vb == default)
      and not (vb == '<absent>' and va == default)
    ):
      diffs.append(f'{name}: checkpoint {json.dumps(va)}, now {json.dumps(vb)}')
  return diffs


_all_finite = jax.jit(state_lib.all_finite)


class Checkpointer:
  """A training job's CheckpointManager (see the module doc)."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save
      ),
      item_handlers={
        'state': ocp.StandardCheckpointHandler(),
        'data': grain.checkpoint.CheckpointHandler(),
        'config': ocp.JsonCheckpointHandler(),
      },
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def saved_config(self, step: int) -> dict:
    out = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return out['config']

  def check_config(self, step: int, config) -> None:
    """Raises ConfigMismatchError naming the fields that differ (see RESUMABLE_FIELDS)."""
    diffs = config_differences(self.saved_config(step), config_to_dict(config))
    if diffs:
      raise ConfigMismatchError(
        f'{os.path.dirname(self.directory)} holds a run with a different config '
        f'(checkpoint step {step}); refusing to resume. Differences: '
        + '; '.join(diffs)
        + ". Use a new --workdir, or the checkpoint's values."
      )

  def save(self, step: int, state, data_iter, config, *, force: bool = False) -> bool:
    """Starts an asynchronous save of step `step`; refuses a non-finite state."""
    if not bool(_all_finite(state)):
      raise NonFiniteCheckpointError(
        f'the train state at step {step} holds NaN or Inf; not saving it'
      )
    args = {
      'state': ocp.args.StandardSave(state),
      'config': ocp.args.JsonSave(config_to_dict(config)),
    }
    if data_iter is not None:
      args['data'] = grain.checkpoint.CheckpointSave(data_iter)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, step: int, abstract_state, data_iter=None):
    """The state at `step`, in `abstract_state`'s shardings; sets data_iter's position."""
    args = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      args['data'] = grain.checkpoint.CheckpointRestore(data_iter)
    return self.manager.restore(step, args=ocp.args.Composite(**args))['state']

  def restore_to_host(self, step: int) -> dict:
    """The state at `step` as numpy arrays, whatever mesh or process count saved it.

    For export and inspection on one machine: each array is restored whole onto this
    process's first CPU device (a checkpoint's saved shardings name devices that
    need not exist here), then copied to numpy.
    """
    meta = self.manager.item_metadata(step)['state']
    cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend='cpu')[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), meta)
    out = self.manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )['state']
    return jax.tree.map(np.asarray, out)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
