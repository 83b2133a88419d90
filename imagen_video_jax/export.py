"""Exported cascades: what sampling needs, and nothing of training.

Layout of an exported cascade directory (e.g. `checkpoints/digits/`):

    cascade.json            {"format": ..., "stages": ["base", "tsr", "ssr"],
                             "text": {"dir": "text", "max_length": 32}}
    text/                   a converted T5 encoder + spiece.model (`text.checkpoints.save_t5`)
    base/stage.json         the stage: spec, U-Net config, fps, diffusion, default sampler
    base/params.safetensors its EMA parameters, one tensor per '/'-joined parameter path
    tsr/ ...  ssr/ ...

safetensors holds only arrays (no code runs on load) and is small; the JSON is
readable and diffable. Nothing here unpickles anything.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np

from imagen_video_jax.cascade import CascadePipeline, Stage
from imagen_video_jax.data.pipeline import StageSpec
from imagen_video_jax.diffusion.objectives import DiffusionConfig
from imagen_video_jax.diffusion.samplers import SamplerConfig
from imagen_video_jax.diffusion.schedules import CosineSchedule
from imagen_video_jax.models.unet import UNetConfig

FORMAT = 'imagen_video_jax.cascade/1'
CASCADE_FILE = 'cascade.json'
STAGE_FILE = 'stage.json'
PARAMS_FILE = 'params.safetensors'


class ExportError(ValueError):
  """A cascade directory that is missing, incomplete or of another format."""


def flatten_params(params: Mapping[str, Any], prefix: str = '') -> dict[str, np.ndarray]:
  """{'a': {'b': x}} -> {'a/b': x} (numpy, float32 kept as is)."""
  flat = {}
  for k, v in params.items():
    name = f'{prefix}/{k}' if prefix else str(k)
    if isinstance(v, Mapping):
      flat.update(flatten_params(v, name))
    else:
      flat[name] = np.asarray(v)
  return flat


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """The inverse of `flatten_params`."""
  tree: dict[str, Any] = {}
  for name, v in flat.items():
    node = tree
    *parents, leaf = name.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def stage_to_json(stage: Stage) -> dict[str, Any]:
  d = stage.diffusion
  return {
      'name': stage.name, 'fps': stage.fps, 'cond_aug_t': stage.cond_aug_t,
      'spec': dataclasses.asdict(stage.spec), 'unet': stage.unet.to_dict(),
      'diffusion': {'prediction': d.prediction, 'weighting': d.weighting,
                    'min_snr_gamma': d.min_snr_gamma, 'p_uncond': d.p_uncond,
                    'schedule': dataclasses.asdict(d.schedule)},
      'sampler': dataclasses.asdict(stage.sampler),
  }


def stage_from_json(meta: Mapping[str, Any], params: Any) -> Stage:
  d = dict(meta['diffusion'])
  d['schedule'] = CosineSchedule(**d['schedule'])
  return Stage(name=meta['name'], spec=StageSpec(**meta['spec']),
               unet=UNetConfig.from_dict(meta['unet']), params=params, fps=meta['fps'],
               diffusion=DiffusionConfig(**d), sampler=SamplerConfig(**meta['sampler']),
               cond_aug_t=meta['cond_aug_t'])


def save_stage(directory: str, stage: Stage) -> str:
  """Writes stage.json and params.safetensors (float32) under `directory`."""
  from safetensors.numpy import save_file
  os.makedirs(directory, exist_ok=True)
  flat = {k: np.ascontiguousarray(v, np.float32) for k, v in flatten_params(stage.params).items()}
  save_file(flat, os.path.join(directory, PARAMS_FILE))
  with open(os.path.join(directory, STAGE_FILE), 'w') as f:
    json.dump(stage_to_json(stage), f, indent=2)
  return directory


def load_stage(directory: str) -> Stage:
  """Reads a stage written by `save_stage` (params as numpy arrays)."""
  from safetensors.numpy import load_file
  meta_path, params_path = (os.path.join(directory, f) for f in (STAGE_FILE, PARAMS_FILE))
  for p in (meta_path, params_path):
    if not os.path.isfile(p):
      raise ExportError(f'{directory} is not an exported stage: {os.path.basename(p)} is missing')
  with open(meta_path) as f:
    meta = json.load(f)
  return stage_from_json(meta, unflatten_params(load_file(params_path)))


def save_cascade(directory: str, stages: list[Stage], *, text_dir: str | None = 'text',
                 max_length: int = 32) -> str:
  """Writes every stage and cascade.json. The text encoder (if any) is expected at
  `directory/text_dir`, written by `text.checkpoints.save_t5(..., vocab=...)`."""
  os.makedirs(directory, exist_ok=True)
  for st in stages:
    save_stage(os.path.join(directory, st.name), st)
  meta = {'format': FORMAT, 'stages': [s.name for s in stages],
          'text': None if text_dir is None else {'dir': text_dir, 'max_length': max_length}}
  with open(os.path.join(directory, CASCADE_FILE), 'w') as f:
    json.dump(meta, f, indent=2)
  return directory


def load_cascade(directory: str, *, text_encoder=None) -> CascadePipeline:
  """A ready CascadePipeline from an exported directory.

  text_encoder: prompts -> (emb, mask); by default the T5 stored in the directory.
  """
  path = os.path.join(directory, CASCADE_FILE)
  if not os.path.isfile(path):
    raise ExportError(f'{directory} holds no {CASCADE_FILE}: not an exported cascade '
                      '(export one from training checkpoints first)')
  with open(path) as f:
    meta = json.load(f)
  if meta.get('format') != FORMAT:
    raise ExportError(f'{path} has format {meta.get("format")!r}; this version reads {FORMAT!r}')
  stages = [load_stage(os.path.join(directory, name)) for name in meta['stages']]
  if text_encoder is None and meta.get('text'):
    from imagen_video_jax.text.encoder import TextEncoder
    import jax.numpy as jnp
    text_encoder = TextEncoder.load(os.path.join(directory, meta['text']['dir']),
                                    max_length=meta['text']['max_length'],
                                    out_dtype=jnp.float32)
  return CascadePipeline(stages, text_encoder)
