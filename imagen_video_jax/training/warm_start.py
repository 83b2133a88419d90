"""Warm start: a new run's weights from a trained stage (`config.init_from`).

MaxText's `load_parameters_path`, for this project: the run begins at step 0 with a
fresh optimizer and schedule, but its params and EMA are a trained stage's weights.
For fine-tuning a shipped or a user's cascade on new data, and for carrying training
across machines when only the exported weights travel (the digits cascade is trained
in pieces that way: the EMA weights are 32 MB, a full train state four times that).

`init_from` may name
  - an exported cascade (`cascade.json`): its stage named like this run's `config.stage`
    (a halving phase of distillation: that stage's distilled student);
  - an exported stage directory (`stage.json` + `params.safetensors`);
  - a training workdir (`checkpoints/`): the EMA params of its latest checkpoint.
It is read only when the workdir holds no checkpoint: a run that has begun resumes
from its own checkpoints (so `init_from` may change or go once a run has started).
The source's U-Net must have this run's parameter shapes; a scanned or unscanned
layout (`model.scan_blocks`) is converted.

Inflation (`config.init_inflate=True`): the source may be the image U-Net of this run's
video U-Net (`unet.image_config`: the same config with every level's temporal='none'),
which lacks only the temporal layers. Every source parameter is loaded and the run's
fresh temporal layers are kept; they start as the identity, so before any video
training the video U-Net computes exactly the image U-Net on every frame. With
`optim.trainable='temporal'` training then changes the temporal layers only.
`inflate_params` does the same for params in memory (a notebook).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from flax import linen as nn

from imagen_video_jax import export, params_io
from imagen_video_jax.models import unet as unet_lib


class WarmStartError(ValueError):
  """`init_from` names nothing loadable, or weights that do not fit this run's model."""


_name = params_io.key_path_name


def read_source(path: str, stage: str, student: bool = False) -> tuple[dict, bool, str]:
  """(EMA params as numpy, whether they are in the scanned layout, what was read).

  `student`: from an exported cascade, read the distilled student of the stage (what a
  halving phase starts from) rather than the stage itself."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isfile(os.path.join(path, export.CASCADE_FILE)):
    with open(os.path.join(path, export.CASCADE_FILE)) as f:
      meta = json.load(f)
    stages = meta.get('stages', [])
    if stage not in stages:
      raise WarmStartError(
        f"init_from={path}: the cascade has stages {stages}, not this run's stage {stage!r}"
      )
    if student:
      students = meta.get('students') or {}
      if stage not in students:
        raise WarmStartError(
          f'init_from={path}: the cascade holds no distilled student of the stage {stage!r} '
          '(a halving phase starts from one: give a guidance or halving workdir)'
        )
      try:
        student_dir = export.inside(path, students[stage], 'the student dir')
      except export.ExportError as e:
        raise WarmStartError(f'init_from={path}: {e}') from None
      return read_source(student_dir, stage)
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
  *,
  inflate: bool = False,
  guidance: bool = False,
) -> dict:
  """`source` in the layout of `abstract_params`; raises WarmStartError naming misfits.

  inflate: the source may lack this model's temporal layers (an image U-Net of the same
  family); those stay out of the result (see `fresh_names`), anything else is a misfit.
  guidance: the source may lack the guidance embedding (a guided-distillation student
  starting from its teacher); it stays fresh (zero: the student starts as the teacher).
  A `frame_cond` (`fps_embed`) model may start from a source without frame conditioning
  (the frame-rate embedding): that kernel (embedding) stays fresh (zero: it computes what
  the source did).
  """
  if source_scanned != bool(model_cfg.scan_blocks):
    convert = unet_lib.scan_params if model_cfg.scan_blocks else unet_lib.unscan_params
    try:
      source = convert(source, model_cfg)
    except (KeyError, ValueError, TypeError) as e:
      raise WarmStartError(
        f"init_from: {origin} does not have this model's blocks ({type(e).__name__}: {e})"
      ) from None
  have = params_io.flatten_params(source)
  want = _shapes(abstract_params)
  missing = sorted(set(want) - set(have))
  if inflate:
    missing = [k for k in missing if not unet_lib.is_temporal(k)]
  if guidance:
    missing = [k for k in missing if k.split('/')[0] != unet_lib.GUIDANCE_EMBEDDING]
  if model_cfg.frame_cond:
    missing = [k for k in missing if k.split('/')[0] != unet_lib.FRAME_CONDITIONING]
  if model_cfg.fps_embed:
    missing = [k for k in missing if k.split('/')[0] != unet_lib.FPS_EMBEDDING]
  problems = [f'{k} missing' for k in missing]
  problems += [f'{k} unexpected' for k in sorted(set(have) - set(want))]
  problems += [
    f'{k} has shape {tuple(have[k].shape)}, the model {tuple(want[k])}'
    for k in sorted(set(want) & set(have))
    if tuple(have[k].shape) != tuple(want[k])
  ]
  if problems:
    more = f' (and {len(problems) - 5} more)' if len(problems) > 5 else ''
    hint = '. Use the same config.model as the run that made it'
    if not inflate and all(p.endswith(' missing') and unet_lib.is_temporal(p) for p in problems):
      hint = (
        '. It looks like the image U-Net of this video U-Net (no temporal layers): '
        'set config.init_inflate=True to load it with fresh (identity) temporal layers'
      )
    raise WarmStartError(
      f"init_from: {origin} does not fit this run's model: "
      + '; '.join(problems[:5])
      + more
      + hint
      + '.'
    )
  return params_io.unflatten_params(have)


def _shapes(abstract_params: Any) -> dict[str, tuple]:
  return {
    _name(path): tuple(leaf.shape)
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  }


def _layer(name: str) -> str:
  """'up1_block0/temporal_attn/qkv/kernel' -> 'up1_block0/temporal_attn'."""
  parts = name.split('/')
  i = next((i for i, p in enumerate(parts) if p in unet_lib.TEMPORAL_LAYERS), len(parts) - 1)
  return '/'.join(parts[: i + 1])


def fresh_names(params: dict, abstract_params: Any) -> list[str]:
  """The parameters of `abstract_params` that `params` (from `fit_params`) lacks."""
  return sorted(set(_shapes(abstract_params)) - set(params_io.flatten_params(params)))


def inflate_params(
  image_params: Any,
  video_cfg: unet_lib.UNetConfig,
  key: jax.Array,
  *,
  frames: int,
  height: int,
  width: int,
  text_len: int = 8,
  image_scanned: bool | None = None,
) -> dict:
  """Video U-Net params from an image U-Net's: every image parameter, fresh temporal layers.

  image_params: params of `unet.image_config(video_cfg)` (its layout, scanned or not,
    is `image_scanned`; default: the same as `video_cfg.scan_blocks`).
  key, frames, height, width, text_len: how the fresh temporal layers are initialised
    (as `unet.init_params`; they start as the identity whatever the key).
  Returns numpy params that make `VideoUNet(video_cfg)` compute the image U-Net on every
  frame. Raises WarmStartError if `image_params` is not of that family.
  """
  init = unet_lib.init_fn(video_cfg, frames=frames, height=height, width=width, text_len=text_len)
  fresh = jax.device_get(nn.unbox(jax.jit(init)(key)))
  scanned = bool(video_cfg.scan_blocks) if image_scanned is None else bool(image_scanned)
  source = jax.device_get(image_params)
  loaded = fit_params(source, scanned, fresh, video_cfg, 'the image params', inflate=True)
  out = params_io.flatten_params(fresh)
  out.update(params_io.flatten_params(loaded))
  return params_io.unflatten_params(out)


def place(params: dict, abstract_params: Any, fresh: Any = None) -> Any:
  """Host arrays -> global arrays in the abstract params' shardings and dtypes.

  Every process holds the whole file and contributes the shards of its own devices,
  so this works unchanged on a multi-host mesh. A parameter `params` lacks (an
  inflation's temporal layers) is `fresh`'s, already placed.
  """
  flat = params_io.flatten_params(params)
  fresh_flat = (
    {}
    if fresh is None
    else dict((_name(p), x) for p, x in jax.tree_util.tree_flatten_with_path(fresh)[0])
  )

  def one(path, a):
    name = _name(path)
    if name not in flat:
      return fresh_flat[name]
    host = np.asarray(flat[name], a.dtype)
    return jax.make_array_from_callback(a.shape, a.sharding, lambda idx: host[idx])

  return jax.tree_util.tree_map_with_path(one, abstract_params)


def warm_start(state, abstract_state, config, model_cfg: unet_lib.UNetConfig):
  """`state` (freshly initialised, step 0) with params and EMA from `config.init_from`.

  `config.init_inflate`: the source may be this U-Net's image version; the state's
  fresh temporal layers (params and EMA) are kept.
  """
  inflate = bool(config.get('init_inflate', False))
  phase = str((config.get('distill') or {}).get('phase', ''))
  guidance = phase == 'guidance'
  source, scanned, origin = read_source(
    str(config.init_from), str(config.stage), student=phase == 'halving'
  )
  params = fit_params(
    source, scanned, abstract_state.params, model_cfg, origin, inflate=inflate, guidance=guidance
  )
  fresh = fresh_names(params, abstract_state.params)
  if jax.process_index() == 0:
    print(f'Warm start: params and EMA from {origin}.', flush=True)
    if inflate:
      total = len(_shapes(abstract_state.params))
      layers = {_layer(n) for n in fresh}
      print(
        f'Inflated: {total - len(fresh)} parameters loaded, {len(fresh)} temporal '
        f'parameters fresh (identity) in {len(layers)} layers.',
        flush=True,
      )
  # Two placements, two buffers: params and EMA are donated to the step separately.
  return state.replace(
    params=place(params, abstract_state.params, state.params),
    ema_params=place(params, abstract_state.ema_params, state.ema_params),
  )
