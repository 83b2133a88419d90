"""Orbax checkpoints of a training job: train state, data iterator, config.

One `CheckpointManager` under `<workdir>/checkpoints`, one composite item per step:

  state   the TrainState (params, EMA params, optimizer state, counters); restored
          into the shardings of the running job (abstract targets with shardings)
  data    the grain iterator's position (grain's own checkpoint handler)
  config  the run's config as JSON; a resume compares it with the new run's config
  run     fingerprints (sha256) of what the config names but does not hold: the
          tokenizer's spiece.model and the data's dataset_info.json; a resume with
          different files is refused

Saves are asynchronous (the state is copied to host before `save` returns, so the
train step may donate its buffers right away); `keep` checkpoints are kept. A state
with a non-finite value is never saved.

Integrity: once a save has committed (the loop polls for that every step; at the
latest at the next save, `wait` or `close`), process 0 writes `<step>/integrity.json`:
the size and sha256 of every file of the step directory, whichever process wrote it.
Orbax's multi-process saving already needs the directory to be visible to process 0
(which finalizes every save), so this covers the shards of all processes, on any mesh
and process count. Before a resume, process 0 checks the newest checkpoint against its
record (a changed, truncated or missing file is damage), and every process restores
the step it chose. A damaged checkpoint, or one that fails to restore, is reported by
step and cause and moved to `<workdir>/checkpoints.damaged/`, and the next older one
is tried; none good is a `CheckpointError`. A checkpoint without a record (saved
before records existed, or by a job killed in the step between the commit and the
record) restores unverified, with a warning.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Iterable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from imagen_video_jax.digests import sha256_file
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
  'init_inflate',  # (as init_from; both are kept as the run began: loop._started_as)
)


class ConfigMismatchError(ValueError):
  """The workdir holds a run whose config differs from this one."""


class NonFiniteCheckpointError(RuntimeError):
  """Refused to save a state holding NaN or Inf."""


class CheckpointError(RuntimeError):
  """The workdir holds checkpoints, but none of them passed verification and restored."""


INTEGRITY_FILE = 'integrity.json'  # in each step directory (see the module doc)
DAMAGED_DIR = 'checkpoints.damaged'  # next to `checkpoints`: damaged steps are moved here


def fingerprint(path: str | None) -> dict | None:
  """{'path', 'sha256'} of a file, or None if there is none."""
  if not path or not os.path.isfile(path):
    return None
  return {'path': os.path.abspath(path), 'sha256': sha256_file(path)}


def file_digests(directory: str) -> dict[str, list]:
  """{relative path: [size, sha256]} of every file under `directory` but the record."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, directory)
      if rel != INTEGRITY_FILE:
        out[rel] = [os.path.getsize(path), sha256_file(path)]
  return out


def _canonical(record: dict) -> str:
  """The one text a record is written as: any changed byte is detected."""
  return json.dumps(record, sort_keys=True, separators=(',', ':'))


def damage(directory: str, record: dict) -> list[str]:
  """What differs between the files under `directory` and their record (empty: none)."""
  problems = []
  for rel, (size, digest) in sorted(record.items()):
    path = os.path.join(directory, rel)
    if not os.path.isfile(path):
      problems.append(f'{rel} is missing')
    elif os.path.getsize(path) != size:
      problems.append(f'{rel} has {os.path.getsize(path)} bytes, {size} when saved')
    elif sha256_file(path) != digest:
      problems.append(f'{rel} differs from what was saved (sha256 mismatch)')
  return problems


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
  """Fields added since runs were first saved (model.*, data.crop.*, optim.trainable,
  data.bounce, distill.*),
  with the value older runs had.

  A checkpoint without such a field resumes under a config that holds its default.
  """
  import dataclasses
  from imagen_video_jax.data.pipeline import Crop
  from imagen_video_jax.models.unet import UNetConfig

  out = {
    f'model.{f.name}': f.default
    for f in dataclasses.fields(UNetConfig)
    if f.default is not dataclasses.MISSING
  }
  out.update({f'data.crop.{f.name}': f.default for f in dataclasses.fields(Crop)})
  out['optim.trainable'] = 'all'
  out['data.bounce'] = True  # runs saved before world v2 trained on the bouncing world
  from imagen_video_jax.configs import common

  out.update({f'distill.{k}': v for k, v in common.distill().items()})
  return out


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
        'run': ocp.JsonCheckpointHandler(),
      },
    )
    self._unrecorded: list[int] = []  # saved steps whose integrity record is not written
    self.finite_steps: set[int] = set()  # steps this process saw finite (saved or restored)

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _record_saved(self) -> None:
    """Writes the integrity record of every committed save that lacks one (process 0)."""
    if not self._unrecorded:
      return
    self.manager.wait_until_finished()
    if jax.process_index() == 0:
      for step in self._unrecorded:
        d = self.step_dir(step)
        if os.path.isdir(d):  # (not removed by keep_checkpoints meanwhile)
          text = _canonical({'format': 1, 'files': file_digests(d)})
          tmp = os.path.join(d, INTEGRITY_FILE + '.tmp')
          with open(tmp, 'w') as f:
            f.write(text)
          os.replace(tmp, os.path.join(d, INTEGRITY_FILE))
    self._unrecorded = []

  def record_finished(self) -> None:
    """Writes the records of saves that have committed meanwhile (a cheap poll; call it
    every step, so a job killed soon after a save leaves that save its record)."""
    if self._unrecorded and jax.process_index() == 0 and not self.manager.is_saving_in_progress():
      self._record_saved()

  def verify(self, step: int) -> list[str]:
    """What is wrong with checkpoint `step` (empty: it matches its integrity record)."""
    d = self.step_dir(step)
    record_path = os.path.join(d, INTEGRITY_FILE)
    if not os.path.isfile(record_path):  # a restore failure is still caught (loop.py)
      if os.path.isdir(os.path.join(d, 'run')):
        why = 'the job stopped right after saving it, or the record was deleted'
      else:
        why = 'saved by an older version'
      print(
        f'Checkpoint step {step} in {self.directory} has no integrity record ({why}): '
        'restoring it unverified.',
        flush=True,
      )
      return []
    try:
      with open(record_path) as f:
        text = f.read()
      record = json.loads(text)
      if _canonical(record) != text:  # e.g. changed whitespace: the record itself is damaged
        raise ValueError('not as written')
      record = record['files']
    except (OSError, ValueError, KeyError, TypeError) as e:
      return [f'its integrity record {INTEGRITY_FILE} is unreadable ({e})']
    return damage(d, record)

  def set_aside(self, step: int, why: str) -> None:
    """Reports a damaged checkpoint and moves it to DAMAGED_DIR (on process 0; the
    caller syncs the processes and reloads the manager)."""
    if jax.process_index() != 0:
      return
    dest = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR, str(step))
    n = 1
    while os.path.exists(dest):
      dest, n = os.path.join(os.path.dirname(dest), f'{step}.{n}'), n + 1
    print(
      f'Checkpoint step {step} in {self.directory} is damaged: {why}. Moved it to {dest}.',
      flush=True,
    )
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.move(self.step_dir(step), dest)

  def newest_good_step(self) -> int | None:
    """The newest checkpoint that matches its integrity record; damaged newer ones are
    reported and set aside. None without checkpoints; CheckpointError if none is good.

    Process 0 verifies and decides; every process gets its answer.
    """
    self.manager.reload()
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      return None
    step = -1
    if jax.process_index() == 0:
      for s in steps:
        problems = self.verify(s)
        if not problems:
          step = s
          break
        self.set_aside(s, '; '.join(problems[:3]) + (' ...' if len(problems) > 3 else ''))
    step = _agree(step)  # (a collective: the moves are done when it returns)
    self.manager.reload()
    if step < 0:
      raise CheckpointError(
        f'no checkpoint in {self.directory} is intact (steps {steps}, now in '
        f'{DAMAGED_DIR}/). Use a new --workdir, or put good checkpoints back.'
      )
    return step

  def fingerprints(self, step: int) -> dict:
    """The fingerprints checkpoint `step` was saved with ({} if it predates them)."""
    if not os.path.isdir(os.path.join(self.step_dir(step), 'run')):
      return {}
    out = self.manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))
    return out['run'].get('fingerprints', {})

  def check_fingerprints(self, step: int, current: dict) -> None:
    """Raises ConfigMismatchError if a file the run was trained with has changed."""
    diffs = []
    for name, saved in sorted(self.fingerprints(step).items()):
      now = current.get(name)
      if saved and now and saved['sha256'] != now['sha256']:
        diffs.append(
          f'the {name} differs: checkpoint {saved["path"]} (sha256 {saved["sha256"]}), '
          f'now {now["path"]} (sha256 {now["sha256"]})'
        )
    if diffs:
      raise ConfigMismatchError(
        f'{os.path.dirname(self.directory)} holds a run (checkpoint step {step}) trained '
        'with other files; refusing to resume: ' + '; '.join(diffs) + '.'
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

  def save(
    self, step: int, state, data_iter, config, *, fingerprints=None, force: bool = False
  ) -> bool:
    """Starts an asynchronous save of step `step`; refuses a non-finite state.

    `fingerprints`: {name: fingerprint(path)} of the files the run depends on.
    """
    if not bool(_all_finite(state)):
      raise NonFiniteCheckpointError(
        f'the train state at step {step} holds NaN or Inf; not saving it'
      )
    self.finite_steps.add(step)
    args = {
      'state': ocp.args.StandardSave(state),
      'config': ocp.args.JsonSave(config_to_dict(config)),
      'run': ocp.args.JsonSave({'format': 1, 'fingerprints': dict(fingerprints or {})}),
    }
    if data_iter is not None:
      args['data'] = grain.checkpoint.CheckpointSave(data_iter)
    self._record_saved()
    saved = self.manager.save(step, args=ocp.args.Composite(**args), force=force)
    if saved:
      self._unrecorded.append(step)
    return saved

  def restore(self, step: int, abstract_state, data_iter=None):
    """The state at `step`, in `abstract_state`'s shardings; sets data_iter's position."""
    args = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      args['data'] = grain.checkpoint.CheckpointRestore(data_iter)
    state = self.manager.restore(step, args=ocp.args.Composite(**args))['state']
    if bool(_all_finite(state)):
      self.finite_steps.add(step)
    return state

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
    self._record_saved()

  def close(self) -> None:
    self._record_saved()
    self.manager.close()


def _agree(value: int) -> int:
  """Process 0's value, on every process."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils

  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def sync(name: str) -> None:
  """Waits for every process (a no-op in a one-process job)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
