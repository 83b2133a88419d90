"""Parameterisations, the training loss, guidance dropout and noise augmentation.

Everything is written for videos [B, T, H, W, C] with per-row ([B]) or per-frame
([B, T]) log-SNR; `frame_mask [B, T]` removes padding frames from the loss.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal

import jax
import jax.numpy as jnp

from imagen_video_jax.diffusion.schedules import CosineSchedule, alpha_sigma

Prediction = Literal['v', 'eps', 'x']
Weighting = Literal['uniform', 'min_snr']


def _bcast(a: jax.Array, ndim: int) -> jax.Array:
  """[B] or [B, T] -> broadcastable against an array of `ndim` dims."""
  return a.reshape(a.shape + (1,) * (ndim - a.ndim))


def noisy(x: jax.Array, eps: jax.Array, logsnr: jax.Array) -> jax.Array:
  """z = alpha x + sigma eps."""
  alpha, sigma = alpha_sigma(logsnr)
  return _bcast(alpha, x.ndim) * x + _bcast(sigma, x.ndim) * eps


def target(x: jax.Array, eps: jax.Array, logsnr: jax.Array, prediction: Prediction) -> jax.Array:
  """The regression target of a parameterisation (v = alpha eps - sigma x)."""
  if prediction == 'x':
    return x
  if prediction == 'eps':
    return eps
  if prediction == 'v':
    alpha, sigma = alpha_sigma(logsnr)
    return _bcast(alpha, x.ndim) * eps - _bcast(sigma, x.ndim) * x
  raise ValueError(f"prediction must be 'v', 'eps' or 'x'; got {prediction!r}")


def to_x_eps(
  out: jax.Array, z: jax.Array, logsnr: jax.Array, prediction: Prediction
) -> tuple[jax.Array, jax.Array]:
  """Model output in any parameterisation -> (x_hat, eps_hat), exactly."""
  alpha, sigma = (_bcast(a, z.ndim) for a in alpha_sigma(logsnr))
  if prediction == 'v':
    return alpha * z - sigma * out, sigma * z + alpha * out
  if prediction == 'eps':
    return (z - sigma * out) / alpha, out
  if prediction == 'x':
    return out, (z - alpha * out) / sigma
  raise ValueError(f"prediction must be 'v', 'eps' or 'x'; got {prediction!r}")


def convert(
  out: jax.Array, z: jax.Array, logsnr: jax.Array, source: Prediction, dest: Prediction
) -> jax.Array:
  """Re-expresses a model output in another parameterisation."""
  if source == dest:
    return out
  x, eps = to_x_eps(out, z, logsnr, source)
  return target(x, eps, logsnr, dest)


def loss_weight(
  logsnr: jax.Array, prediction: Prediction, weighting: Weighting, min_snr_gamma: float = 5.0
) -> jax.Array:
  """Per-example weight of the MSE on the prediction target.

  'uniform': plain MSE on the target. 'min_snr' (Hang et al. 2023): the x-space
  weight min(snr, gamma) re-expressed for the target's parameterisation.
  """
  if weighting == 'uniform':
    return jnp.ones_like(logsnr)
  if weighting == 'min_snr':
    snr = jnp.exp(logsnr)
    w_x = jnp.minimum(snr, min_snr_gamma)
    # ||x - x_hat||^2 = ||eps - eps_hat||^2 snr^-1 = ||v - v_hat||^2 / (snr + 1)
    return {'x': w_x, 'eps': w_x / snr, 'v': w_x / (snr + 1)}[prediction]
  raise ValueError(f"weighting must be 'uniform' or 'min_snr'; got {weighting!r}")


def masked_frame_mean(per_frame: jax.Array, frame_mask: jax.Array) -> jax.Array:
  """Mean of per-frame values [B, T] over the frames where frame_mask is True."""
  m = frame_mask.astype(jnp.float32)
  return jnp.sum(per_frame * m) / jnp.maximum(jnp.sum(m), 1.0)


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """How a stage is trained and what its network predicts."""

  prediction: Prediction = 'v'
  weighting: Weighting = 'uniform'
  min_snr_gamma: float = 5.0
  schedule: CosineSchedule = CosineSchedule()
  p_uncond: float = 0.1

  def __post_init__(self):
    if self.prediction not in ('v', 'eps', 'x'):
      raise ValueError(f"prediction must be 'v', 'eps' or 'x'; got {self.prediction!r}")
    if self.weighting not in ('uniform', 'min_snr'):
      raise ValueError(f"weighting must be 'uniform' or 'min_snr'; got {self.weighting!r}")
    if not (math.isfinite(self.min_snr_gamma) and self.min_snr_gamma > 0):
      raise ValueError(f'min_snr_gamma must be finite and > 0; got {self.min_snr_gamma}')
    if not 0.0 <= self.p_uncond <= 1.0:
      raise ValueError(f'p_uncond must be in [0, 1]; got {self.p_uncond}')


def diffusion_loss(
  apply_fn: Callable[..., jax.Array],
  x: jax.Array,
  key: jax.Array | None,
  *,
  config: DiffusionConfig,
  frame_ids: jax.Array | None = None,
  t: jax.Array | None = None,
  eps: jax.Array | None = None,
  per_frame_time: bool = False,
) -> tuple[jax.Array, dict]:
  """Weighted MSE on the prediction target, averaged over real frames only.

  apply_fn(z, logsnr) returns the network's output for the noisy video z (close
  over text, cond and frame ids). t [B] (or [B, T] with per_frame_time) and eps may
  be given for a fixed evaluation; otherwise they are drawn from `key`.
  Padding frames (negative frame_ids) never count.
  """
  b, tt = x.shape[:2]
  if t is None or eps is None:
    if key is None:
      raise ValueError('diffusion_loss needs a key unless both t and eps are given')
    k_t, k_eps = jax.random.split(key)
  if t is None:
    t = jax.random.uniform(k_t, (b, tt) if per_frame_time else (b,))
  if eps is None:
    eps = jax.random.normal(k_eps, x.shape, x.dtype)
  logsnr = config.schedule.logsnr(t)
  z = noisy(x, eps, logsnr)
  out = apply_fn(z, logsnr)
  tgt = target(x, eps, logsnr, config.prediction)
  per_frame = jnp.mean(jnp.square(out.astype(jnp.float32) - tgt), axis=(2, 3, 4))  # [B, T]
  w = loss_weight(logsnr, config.prediction, config.weighting, config.min_snr_gamma)
  per_frame = per_frame * (w[:, None] if w.ndim == 1 else w)
  frame_mask = jnp.ones((b, tt), bool) if frame_ids is None else frame_ids >= 0
  loss = masked_frame_mean(per_frame, frame_mask)
  return loss, {'loss': loss, 'logsnr_mean': jnp.mean(logsnr)}


def drop_text(
  key: jax.Array,
  text_emb: jax.Array,
  text_mask: jax.Array,
  p_uncond: float,
  frame_ids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Classifier-free-guidance dropout: with probability p_uncond a caption becomes null.

  The null text is an all-False mask (and zero embeddings), exactly what the
  sampler feeds for the unconditional half.

  Per-row text (mask [B, L], emb [B, L, D]): each row is dropped independently.
  Per-frame text (mask [B, T, L], emb [B, T, L, D]) is dropped per clip, never per
  frame, so no clip is ever partly captioned: frames with the same `frame_ids [B, T]`
  in a row share one draw (the rule of the training step: a video row is one clip, a
  row packed with images has one clip per image; padding frames, id < 0, follow clip
  0 and carry an all-False mask anyway). Without `frame_ids`, each row of per-frame
  text is one clip (a video batch).
  """
  mask = text_mask.astype(bool)
  if mask.ndim == 3:
    b, t = mask.shape[:2]
    if frame_ids is None:
      frame_ids = jnp.zeros((b, t), jnp.int32)
    if frame_ids.shape != (b, t):
      raise ValueError(f'frame_ids must be [B, T] = {(b, t)}, got {frame_ids.shape}')
    u = jax.random.uniform(key, (b, t))
    # Frame ids index the row's draws: every frame of clip k takes draw k.
    u = jnp.take_along_axis(u, jnp.clip(frame_ids, 0, t - 1), axis=1)
  elif mask.ndim == 2:
    if frame_ids is not None:
      raise ValueError('frame_ids only apply to per-frame text (mask [B, T, L])')
    u = jax.random.uniform(key, mask.shape[:1])
  else:
    raise ValueError(f'text_mask must be [B, L] or [B, T, L], got shape {text_mask.shape}')
  mask = mask & (u >= p_uncond)[..., None]
  emb = text_emb * mask[..., None].astype(text_emb.dtype)
  return emb, mask


def null_text(text_emb: jax.Array, text_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The unconditional text of the same shape."""
  return jnp.zeros_like(text_emb), jnp.zeros_like(text_mask, dtype=bool)


def noise_augment(key: jax.Array, cond: jax.Array, cond_logsnr: jax.Array) -> jax.Array:
  """Noise conditioning augmentation: cond -> alpha cond + sigma eps at cond_logsnr [B]."""
  eps = jax.random.normal(key, cond.shape, cond.dtype)
  return noisy(cond, eps, cond_logsnr)


def sample_augment_logsnr(
  key: jax.Array, batch: int, schedule: CosineSchedule, max_t: float = 0.5
) -> jax.Array:
  """Training-time augmentation level: t ~ U(0, max_t) mapped through the schedule.

  At sampling time a fixed level is used instead (e.g. schedule.logsnr(0.1)).
  """
  return schedule.logsnr(jax.random.uniform(key, (batch,), maxval=max_t))
