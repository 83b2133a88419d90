"""Distillation targets and losses: guided distillation, then progressive halving.

Imagen Video samples each stage in 8 steps by distilling it twice (Ho et al. 2022,
section 2.6):

1. **Guidance** (Meng et al., "On Distillation of Guided Diffusion Models", stage one):
   a student that also reads the guidance weight w (`UNetConfig.guidance_embed`) learns
   to output in one forward what the teacher's classifier-free guidance makes of two,
   `uncond + w (cond - uncond)`, for w drawn from a range (`guided_loss`).
2. **Halving** (Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion
   Models"): a student initialised from its teacher learns to take in one DDIM step
   what the teacher takes in two (`halving_loss`); repeated, 256 steps become 8.

Everything here is a pure function of *denoisers*: `fn(z, logsnr [B], w [B]) -> model
output` in the stage's parameterisation (close over parameters, text, frame ids and SR
conditioning). The teacher of the halving phase is itself w-conditioned, so both halves
of its guidance are already folded into one output.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from imagen_video_jax.diffusion import objectives, samplers
from imagen_video_jax.diffusion.schedules import CosineSchedule, alpha_sigma

# fn(z, logsnr [B], w [B]) -> model output; w may be ignored (an unguided teacher half).
Denoiser = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """What a distillation phase trains.

  Attributes:
    w_min, w_max: the range guidance weights are drawn from (uniformly), in the
      sampler's convention (w = 1 conditional, w = 0 unconditional).
    student_steps: the halving phase's student takes this many DDIM steps over [0, 1]
      (its teacher twice as many).
    clip: the x-prediction clipping the teacher's steps use ('none' | 'static' |
      'dynamic'), the sampler's own.
  """

  w_min: float = 0.0
  w_max: float = 5.0
  student_steps: int = 8
  clip: str = 'static'

  def __post_init__(self):
    if not 0.0 <= self.w_min <= self.w_max:
      raise ValueError(f'need 0 <= w_min <= w_max; got [{self.w_min}, {self.w_max}]')
    if self.student_steps < 1:
      raise ValueError(f'student_steps must be >= 1; got {self.student_steps}')
    if self.clip not in ('none', 'static', 'dynamic'):
      raise ValueError(f"clip must be 'none', 'static' or 'dynamic'; got {self.clip!r}")


def _bcast(a: jax.Array, ndim: int) -> jax.Array:
  return a.reshape(a.shape + (1,) * (ndim - a.ndim))


def denoised_x(
  denoise: Denoiser,
  z: jax.Array,
  logsnr: jax.Array,
  w: jax.Array,
  prediction: objectives.Prediction,
  clip: str,
) -> jax.Array:
  """The clipped x-prediction a sampler's step uses (samplers.sample's x_eps)."""
  x, _ = objectives.to_x_eps(denoise(z, logsnr, w), z, logsnr, prediction)
  return samplers.threshold(x, clip) if clip != 'none' else x


def ddim_step(x: jax.Array, z_t: jax.Array, logsnr_t: jax.Array, logsnr_s: jax.Array):
  """z_s of a deterministic DDIM step from z_t given the x-prediction x."""
  a_t, s_t = (_bcast(v, z_t.ndim) for v in alpha_sigma(logsnr_t))
  a_s, s_s = (_bcast(v, z_t.ndim) for v in alpha_sigma(logsnr_s))
  eps = (z_t - a_t * x) / s_t
  return a_s * x + s_s * eps


def two_step_target(
  teacher: Denoiser,
  z_t: jax.Array,
  logsnr_t: jax.Array,
  logsnr_mid: jax.Array,
  logsnr_s: jax.Array,
  w: jax.Array,
  *,
  prediction: objectives.Prediction = 'v',
  clip: str = 'static',
) -> jax.Array:
  """The x a one-step student must predict at z_t so that its DDIM step t -> s lands
  where the teacher's two steps t -> mid -> s do (Salimans & Ho, algorithm 2).

  One step gives z_s = a_s x + s_s (z_t - a_t x) / s_t, linear in x, so
  x = (z_s - (s_s / s_t) z_t) / (a_s - (s_s / s_t) a_t); the denominator is positive
  for any s later than t (a larger signal-to-noise ratio).
  """
  x1 = denoised_x(teacher, z_t, logsnr_t, w, prediction, clip)
  z_mid = ddim_step(x1, z_t, logsnr_t, logsnr_mid)
  x2 = denoised_x(teacher, z_mid, logsnr_mid, w, prediction, clip)
  z_s = ddim_step(x2, z_mid, logsnr_mid, logsnr_s)
  a_t, s_t = (_bcast(v, z_t.ndim) for v in alpha_sigma(logsnr_t))
  a_s, s_s = (_bcast(v, z_t.ndim) for v in alpha_sigma(logsnr_s))
  ratio = s_s / s_t
  return (z_s - ratio * z_t) / (a_s - ratio * a_t)


def draw_w(key: jax.Array, batch: int, config: DistillConfig) -> jax.Array:
  """Guidance weights [batch], uniform in [w_min, w_max]."""
  return jax.random.uniform(key, (batch,), minval=config.w_min, maxval=config.w_max)


def guided_loss(
  student: Denoiser,
  cond: Callable[[jax.Array, jax.Array], jax.Array],
  uncond: Callable[[jax.Array, jax.Array], jax.Array],
  x: jax.Array,
  key: jax.Array,
  *,
  config: DistillConfig,
  schedule: CosineSchedule = CosineSchedule(),
  frame_mask: jax.Array | None = None,
  t: jax.Array | None = None,
  eps: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
  """Guided distillation's loss: the student at (z_t, w) against the teacher's guided
  output `uncond + w (cond - uncond)` at the same z_t (MSE in the stage's own
  parameterisation: the guided output is linear in the teacher's two outputs, so it is
  one in every parameterisation), t uniform in [0, 1] and w uniform in the range.

  cond / uncond: the teacher's conditional and unconditional outputs, fn(z, logsnr).
  t [B] and eps (the noise) may be given instead of drawn (a fixed set of points).
  """
  b = x.shape[0]
  k_t, k_eps, k_w = jax.random.split(key, 3)
  t = jax.random.uniform(k_t, (b,)) if t is None else t
  eps = jax.random.normal(k_eps, x.shape, x.dtype) if eps is None else eps
  logsnr = schedule.logsnr(t)
  z = objectives.noisy(x, eps, logsnr)
  w = draw_w(k_w, b, config)
  c, u = cond(z, logsnr), uncond(z, logsnr)
  target = jax.lax.stop_gradient(u + _bcast(w, x.ndim) * (c - u))
  per_frame = jnp.mean(jnp.square(student(z, logsnr, w) - target), axis=(2, 3, 4))
  mask = jnp.ones(per_frame.shape, bool) if frame_mask is None else frame_mask
  loss = objectives.masked_frame_mean(per_frame, mask)
  return loss, {'loss': loss, 'w_mean': jnp.mean(w), 'logsnr_mean': jnp.mean(logsnr)}


def halving_loss(
  student: Denoiser,
  teacher: Denoiser,
  x: jax.Array,
  key: jax.Array,
  *,
  config: DistillConfig,
  schedule: CosineSchedule = CosineSchedule(),
  prediction: objectives.Prediction = 'v',
  frame_mask: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
  """Progressive distillation's loss for a student of `config.student_steps` steps.

  t is one of the student's step starts, i / N for i in 1..N; the target is
  `two_step_target` over t -> t - 1/(2N) -> t - 1/N with the teacher at the same w.
  The loss is the x-space MSE weighted by max(snr_t, 1) ("truncated SNR", Salimans &
  Ho), which keeps the high-noise steps, where x is hard to predict, from vanishing.
  """
  b, n = x.shape[0], config.student_steps
  k_i, k_eps, k_w = jax.random.split(key, 3)
  i = jax.random.randint(k_i, (b,), 1, n + 1).astype(jnp.float32)
  t = i / n
  l_t, l_mid, l_s = (schedule.logsnr(v) for v in (t, t - 0.5 / n, t - 1.0 / n))
  z = objectives.noisy(x, jax.random.normal(k_eps, x.shape, x.dtype), l_t)
  w = draw_w(k_w, b, config)
  target = jax.lax.stop_gradient(
    two_step_target(teacher, z, l_t, l_mid, l_s, w, prediction=prediction, clip=config.clip)
  )
  x_hat, _ = objectives.to_x_eps(student(z, l_t, w), z, l_t, prediction)
  weight = jnp.maximum(jnp.exp(l_t), 1.0)
  per_frame = jnp.mean(jnp.square(x_hat - target), axis=(2, 3, 4)) * weight[:, None]
  mask = jnp.ones(per_frame.shape, bool) if frame_mask is None else frame_mask
  loss = objectives.masked_frame_mean(per_frame, mask)
  return loss, {'loss': loss, 'w_mean': jnp.mean(w), 'logsnr_mean': jnp.mean(l_t)}
