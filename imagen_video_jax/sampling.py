"""Sampling one stage: the function behind `CascadePipeline` and training's sample videos.

A super-resolution stage is conditioned exactly as in training (see
`data.pipeline.sr_condition`): a TSR stage on the video below with every frame
repeated `factor` times, an SSR stage on the video below resized bilinearly to its
output size; the conditioning is noised at the stage's fixed `sample_cond_t` and the
network is told that level (`cond_logsnr`). With text, the conditional and
unconditional (null text or negative prompt) halves run in one batched forward
(`diffusion.samplers.guided_denoiser`); a guidance-distilled stage (`unet.guidance_embed`,
`diffusion/distill.py`) reads the weight itself and runs one forward of the batch.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from imagen_video_jax.diffusion import extend as extend_lib, objectives, samplers
from imagen_video_jax.diffusion.samplers import SamplerConfig
from imagen_video_jax.models.unet import VideoUNet
from imagen_video_jax.stage import Stage, StageSpec


def sr_conditioning(low_BTHWC: jax.Array, spec: StageSpec) -> jax.Array:
  """The previous stage's video brought to this SR stage's output size."""
  b, t, h, w, c = low_BTHWC.shape
  if (t, h, w) != (spec.cond_frames, spec.cond_height, spec.cond_width):
    raise ValueError(
      f'a {spec.kind} stage of output {spec.frames}x{spec.height}x{spec.width} '
      f'needs a {spec.cond_frames}x{spec.cond_height}x{spec.cond_width} input; '
      f'got {t}x{h}x{w}'
    )
  if spec.kind == 'tsr':
    return jnp.repeat(low_BTHWC, spec.factor, axis=1)
  if spec.kind == 'ssr':
    return jax.image.resize(low_BTHWC, (b, t, spec.height, spec.width, c), 'bilinear')
  raise ValueError(f'{spec.kind} is not a super-resolution stage')


def noise_shape(stage: Stage, batch_size: int) -> tuple[int, ...]:
  """The shape of a stage's samples (and of its initial noise): [B, T, H, W, C]."""
  spec = stage.spec
  return (batch_size, spec.frames, spec.height, spec.width, stage.unet.in_channels)


def initial_noise(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """The initial noise `sample_stage(..., key)` draws itself when given no `z_init`.

  Drawn apart so that a caller can hand it to a jitted sampler as a donated argument
  (`CascadePipeline` does): the output then reuses its buffer.
  """
  _, k_sample = jax.random.split(key)
  return samplers.initial_noise(k_sample, shape)


def sample_stage(
  stage: Stage,
  params: Any,
  key: jax.Array,
  batch_size: int,
  *,
  text_emb: jax.Array | None = None,
  text_mask: jax.Array | None = None,
  neg_text_emb: jax.Array | None = None,
  neg_text_mask: jax.Array | None = None,
  low: jax.Array | None = None,
  cond: jax.Array | None = None,
  frame_ids: jax.Array | None = None,
  known: jax.Array | None = None,
  known_frames: jax.Array | None = None,
  fps: jax.Array | float | None = None,
  extend: tuple[jax.Array, jax.Array, extend_lib.ExtendConfig] | None = None,
  sampler: SamplerConfig | None = None,
  on_step: Callable[[Any], None] | None = None,
  traced: samplers.Traced | None = None,
  z_init: jax.Array | None = None,
) -> jax.Array:
  """Samples `batch_size` clips of `stage` in [-1, 1], float32 [B, T, H, W, C]. Jit it.

  Args:
    params: the stage's weights (passed apart from `stage` so that they are traced).
    key: split into the conditioning's augmentation noise and the sampler's noise.
    text_emb, text_mask: [B, L, D] / [B, L] (or per frame, [B, T, L, D] / [B, T, L]);
      required when the stage reads text.
    neg_text_emb, neg_text_mask: the unconditional half's text (default: null text).
    low: SR stages: the video below, [B, T', H', W', C] at the previous stage's size;
      or `cond`: the conditioning already at this stage's size (training batches).
    frame_ids: [B, T] clip ids of packed image rows (None: every row one video).
    known, known_frames: [B, T] / [B, T, H, W, C] frames given to a `frame_cond` stage
      (`diffusion/frame_cond.py`), at this stage's size in [-1, 1]; both halves of a
      guided forward see them.
    fps: the frame rate a stage with `unet.fps_embed` samples at (default `stage.fps`).
    extend: (x_known [B, T, H, W, C] in [-1, 1], known [B, T], ExtendConfig): condition
      the sample on the known frames by replacement or reconstruction guidance
      (`diffusion/extend.py`), with a model not trained for it; the output holds them.
    sampler: default `stage.sampler`.
    traced: its steps and guidance as (traced) values, see `samplers.sample`.
    z_init: the initial noise, `initial_noise(key, noise_shape(stage, batch_size))`
      (default: drawn here, the same).
  """
  spec, unet = stage.spec, stage.unet
  cfg = stage.sampler if sampler is None else sampler
  model = VideoUNet(unet)
  shape = noise_shape(stage, batch_size)
  k_aug, k_sample = jax.random.split(key)  # initial_noise splits the same way
  aug_logsnr = stage.diffusion.schedule.logsnr(stage.sample_cond_t)
  cond_logsnr = None
  if spec.is_sr:
    if cond is None:
      if low is None:
        raise ValueError(f'stage {stage.name} is a {spec.kind} stage: pass the video below')
      cond = sr_conditioning(low, spec)
    cond = objectives.noise_augment(k_aug, cond, jnp.full((batch_size,), aug_logsnr))
    if unet.cond_augment:
      cond_logsnr = jnp.full((batch_size,), aug_logsnr)

  if (known is not None) and not unet.frame_cond:
    raise ValueError(f'stage {stage.name} takes no given frames (its U-Net has no frame_cond)')
  given = dict(known=known, known_frames=known_frames) if unet.frame_cond else {}
  if unet.fps_embed:
    given['fps'] = jnp.full((batch_size,), stage.fps if fps is None else fps, jnp.float32)
  elif fps is not None:
    raise ValueError(f'stage {stage.name} takes no frame rate (its U-Net has no fps_embed)')

  if unet.text_dim is None:

    def denoise(z, logsnr, w):
      del w
      return model.apply(
        {'params': params}, z, logsnr, None, None, frame_ids, cond, cond_logsnr, **given
      )
  elif text_emb is None:
    raise ValueError(f'stage {stage.name} reads text: pass text_emb and text_mask')
  elif unet.guidance_embed:
    if neg_text_emb is not None:
      raise ValueError(
        f'stage {stage.name} is guidance-distilled: its unconditional half is the null '
        'text, folded into its one forward; it takes no negative prompt'
      )

    def denoise(z, logsnr, w):
      w = jnp.full((z.shape[0],), w, jnp.float32)
      return model.apply(
        {'params': params},
        z,
        logsnr,
        text_emb,
        text_mask,
        frame_ids,
        cond,
        cond_logsnr,
        guidance=w,
        **given,
      )
  else:
    double = lambda a: None if a is None else jnp.concatenate([a, a])  # cond + uncond halves
    cond2, cond_logsnr2, frame_ids2 = double(cond), double(cond_logsnr), double(frame_ids)
    given2 = {k: double(v) for k, v in given.items()}

    def apply(z, logsnr, e, m):
      return model.apply(
        {'params': params}, z, logsnr, e, m, frame_ids2, cond2, cond_logsnr2, **given2
      )

    denoise = samplers.guided_denoiser(apply, text_emb, text_mask, neg_text_emb, neg_text_mask)
  if extend is not None:
    x_known, known, ext_cfg = extend
    eps_known = jax.random.normal(jax.random.fold_in(key, 2), shape, jnp.float32)
    denoise = extend_lib.conditioned_denoiser(
      denoise,
      jnp.asarray(x_known, jnp.float32),
      jnp.asarray(known),
      eps_known,
      config=ext_cfg,
      prediction=stage.diffusion.prediction,
    )
  return samplers.sample(
    denoise,
    shape,
    k_sample,
    config=cfg,
    schedule=stage.diffusion.schedule,
    prediction=stage.diffusion.prediction,
    z_init=z_init,
    on_step=on_step,
    traced=traced,
  )
