"""Warm start: a new run's weights from a trained stage (`config.init_from`).

MaxText's `load_parameters_path`, for this project: the run begins at step 0 with a
fresh optimizer and schedule, but its params and EMA are a trained stage's weights.
For fine-tuning a shipped or a user's cascade on new data, and for carrying training
across machines when only the exported weights travel (the digits cascade is trained
in pieces that way: the EMA weights are 32 MB, a full train state four times that).

`init_from` may name
  - an exported cascade (`cascade.json`): its stage named like this run's `config.stage`;
  - an exported stage directory (`stage.json` + `params.safetensors`);
  - a training workdir (`checkpoints/`): the EMA params of its latest checkpoint.
It is read only when the workdir holds no checkpoint: a run that has begun resumes
from its own checkpoints (so `init_from` may change or go once a run has started).
The source's U-Net must have this run's parameter shapes; a scanned or unscanned
layout (`model.scan_blocks`) is converted.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from imagen_video_jax import export, params_io
from imagen_video_jax.models import unet as unet_lib


class WarmStartError(ValueError):
  """`init_from` names nothing loadable, or weights that do not fit this run's model."""


def _name(path) -> str:
  """A pytree key path as the '/'-joined name `params_io.flatten_params` gives it."""
  return '/'.join(str(getattr(p, 'key', p)) for p in path)


def read_source(path: str, stage: str) -> tuple[dict, bool, str]:
  """(EMA params as numpy, whether they are in the scanned layout, what was read)."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isfile(os.path.join(path, export.CASCADE_FILE)):
    with open(os.path.join(path, export.CASCADE_FILE)) as f:
      stages = json.load(f).get('stages', [])
    if stage not in stages:
      raise WarmStartError(
        f"init_from={path}: the cascade has stages {stages}, not this run's stage {stage!r}"
      )
    path = os.path.join(path, stage)
  if os.path.isfile(os.path.join(path, export.STAGE_FILE)):
    st = export.load_stage(path)
    return st.params, bool(st.unet.scan_blocks), f'exported stage {path}'
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    config, ema, step = export.read_training_run(path)
    scanned = bool(config.get('model', {}).get('scan_blocks', False))
    return ema, scanned, f'the EMA params of {path} at step {step}'
  raise WarmStartError(
    f'init_from={path} is neither an exported cascade (cascade.json), '
    'an exported stage (stage.json) nor a training workdir (checkpoints/)'
  )


def fit_params(
  source: dict,
  source_scanned: bool,
  abstract_params: Any,
  model_cfg: unet_lib.UNetConfig,
  origin: str,
) -> dict:
  """`source` in the layout of `abstract_params`; raises WarmStartError naming misfits."""
  if source_scanned != bool(model_cfg.scan_blocks):
    convert = unet_lib.scan_params if model_cfg.scan_blocks else unet_lib.unscan_params
    try:
      source = convert(source, model_cfg)
    except (KeyError, ValueError, TypeError) as e:
      raise WarmStartError(
        f"init_from: {origin} does not have this model's blocks ({type(e).__name__}: {e})"
      ) from None
  have = params_io.flatten_params(source)
  want = {
    _name(path): leaf.shape
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  }
  problems = [f'{k} missing' for k in sorted(set(want) - set(have))]
  problems += [f'{k} unexpected' for k in sorted(set(have) - set(want))]
  problems += [
    f'{k} has shape {tuple(have[k].shape)}, the model {tuple(want[k])}'
    for k in sorted(set(want) & set(have))
    if tuple(have[k].shape) != tuple(want[k])
  ]
  if problems:
    more = f' (and {len(problems) - 5} more)' if len(problems) > 5 else ''
    raise WarmStartError(
      f"init_from: {origin} does not fit this run's model: "
      + '; '.join(problems[:5])
      + more
      + '. Use the same config.model as the run that made it.'
    )
  return params_io.unflatten_params(have)


def place(params: dict, abstract_params: Any) -> Any:
  """Host arrays -> global arrays in the abstract params' shardings and dtypes.

  Every process holds the whole file and contributes the shards of its own devices,
  so this works unchanged on a multi-host mesh.
  """
  flat = params_io.flatten_params(params)

  def one(path, a):
    host = np.asarray(flat[_name(path)], a.dtype)
    return jax.make_array_from_callback(a.shape, a.sharding, lambda idx: host[idx])

  return jax.tree_util.tree_map_with_path(one, abstract_params)


def warm_start(state, abstract_state, config, model_cfg: unet_lib.UNetConfig):
  """`state` (freshly initialised, step 0) with params and EMA from `config.init_from`."""
  source, scanned, origin = read_source(str(config.init_from), str(config.stage))
  params = fit_params(source, scanned, abstract_state.params, model_cfg, origin)
  if jax.process_index() == 0:
    print(f'Warm start: params and EMA from {origin}.', flush=True)
  # Two placements, two buffers: params and EMA are donated to the step separately.
  return state.replace(
    params=place(params, abstract_state.params), ema_params=place(params, abstract_state.ema_params)
  )
