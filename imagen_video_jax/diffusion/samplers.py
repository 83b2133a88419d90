"""Samplers: ancestral and DDIM, each one jitted `lax.fori_loop` (docs/design.md, 'Diffusion').

A sampler needs a *denoiser* `fn(z, logsnr [B], w) -> model output` where `w` is
the guidance weight of the current step. `guided_denoiser` builds one that runs
the conditional and unconditional halves in a single batched forward and mixes
them: out = w * cond + (1 - w) * uncond (w = 1 is plain conditional sampling).
x-predictions are then clipped (static) or dynamically thresholded before the
update, and eps is recomputed from the clipped x so the step stays consistent.

The step count and guidance weights are values in the compiled loop (`Traced`), not
constants: a sampler jitted with them as an argument serves every step count and
guidance without recompiling. The sampler kind and the clipping shape the program.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.diffusion import objectives
from imagen_video_jax.diffusion.schedules import CosineSchedule, alpha_sigma

Denoiser = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

SAMPLERS = ('ddim', 'ancestral', 'stepback')
MAX_STEPS = 10_000  # far more denoising steps than any stage needs: more is a typo


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """How to sample one stage.

  Attributes:
    sampler: 'ddim' (deterministic given the initial noise), 'ancestral', or 'stepback'
      (Meng et al.'s stochastic sampler for few-step distilled students: a deterministic
      DDIM step of twice the step length, then forward noise back by one step length).
    steps: number of denoising steps.
    guidance: classifier-free guidance weight w (1 = none).
    guidance_low: if set, oscillating guidance as Imagen Video uses it for high weights
      (Ho et al. 2022, section 2.5): a constant high weight (`guidance`) for the first
      `oscillate_from` of the steps, then alternating to the end: `guidance` on even
      steps, `guidance_low` on odd ones.
    oscillate_from: fraction of the steps (from the start) sampled at the constant high
      weight before the alternation begins; 0.0 alternates from the first step.
    clip: 'none', 'static' (x in [-1, 1]) or 'dynamic' (Imagen's percentile thresholding).
    dynamic_percentile: percentile p of |x_hat| for dynamic thresholding.
    gamma: ancestral variance interpolation: sigma^2 = post_var^(1-gamma) * fwd_var^gamma.
  """

  sampler: Literal['ddim', 'ancestral', 'stepback'] = 'ddim'
  steps: int = 64
  guidance: float = 1.0
  guidance_low: float | None = None
  oscillate_from: float = 0.0
  clip: Literal['none', 'static', 'dynamic'] = 'static'
  dynamic_percentile: float = 99.5
  gamma: float = 0.0

  def __post_init__(self):
    if self.sampler not in SAMPLERS:
      raise ValueError(f'sampler must be one of {SAMPLERS}; got {self.sampler!r}')
    if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral):
      raise ValueError(f'steps must be an integer; got {self.steps!r}')
    if not 1 <= self.steps <= MAX_STEPS:
      raise ValueError(f'steps must be in [1, {MAX_STEPS}]; got {self.steps}')
    for name in ('guidance', 'guidance_low', 'oscillate_from', 'dynamic_percentile', 'gamma'):
      value = getattr(self, name)
      if value is None and name == 'guidance_low':
        continue
      if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f'{name} must be a finite number; got {value!r}')
    if not 0.0 <= self.oscillate_from <= 1.0:
      raise ValueError(f'oscillate_from must be in [0, 1]; got {self.oscillate_from}')
    if self.clip not in ('none', 'static', 'dynamic'):
      raise ValueError(f"clip must be 'none', 'static' or 'dynamic'; got {self.clip!r}")
    if not 0.0 < self.dynamic_percentile <= 100.0:
      raise ValueError(f'dynamic_percentile must be in (0, 100]; got {self.dynamic_percentile}')
    if not 0.0 <= self.gamma <= 1.0:
      raise ValueError(f'gamma must be in [0, 1]; got {self.gamma}')

  def traced(self) -> Traced:
    """The settings a compiled sampler takes as values (see `Traced`)."""
    # Step i is in the constant phase iff i < oscillate_from * steps, compared in float32
    # as a float32 step index against the float64 product rounded to float32.
    const = np.arange(self.steps, dtype=np.float32) < np.float32(self.oscillate_from * self.steps)
    return Traced(
      steps=np.int32(self.steps),
      guidance=np.float32(self.guidance),
      guidance_low=np.float32(self.guidance if self.guidance_low is None else self.guidance_low),
      constant_steps=np.int32(const.sum()),
    )

  def static(self) -> SamplerConfig:
    """This config with the `Traced` fields at their defaults: equal for every config
    that one compiled sampler serves (a cache key)."""
    return dataclasses.replace(
      self, steps=SamplerConfig.steps, guidance=1.0, guidance_low=None, oscillate_from=0.0
    )

  def guidance_weights(self) -> jax.Array:
    """[steps] guidance weight of each step (constant or oscillating)."""
    return guidance_weight(self.traced(), jnp.arange(self.steps))


class Traced(NamedTuple):
  """The sampler settings that are traced values, not compile-time constants.

  Users change them often (steps, guidance, oscillation), so a sampler jitted with
  these as an argument runs any of them without recompiling. `SamplerConfig.traced()`
  makes one; `guidance_low` equals `guidance` when the guidance is constant.
  """

  steps: jax.Array  # int32 []
  guidance: jax.Array  # float32 []: the constant phase, then every other step
  guidance_low: jax.Array  # float32 []: the other steps of the alternation
  constant_steps: jax.Array  # int32 []: steps i < this use `guidance`, then it alternates


def guidance_weight(traced: Traced, i: jax.Array) -> jax.Array:
  """The guidance weight of step(s) i: high for the constant phase, then high on even
  and low on odd steps."""
  osc = jnp.where(i % 2 == 0, traced.guidance, traced.guidance_low)
  return jnp.where(i < traced.constant_steps, traced.guidance, osc).astype(jnp.float32)


def threshold(x: jax.Array, clip: str, percentile: float = 99.5) -> jax.Array:
  """Static clipping to [-1, 1] or dynamic thresholding (Imagen, per example)."""
  if clip == 'none':
    return x
  if clip == 'static':
    return jnp.clip(x, -1.0, 1.0)
  s = jnp.percentile(jnp.abs(x).reshape(x.shape[0], -1), percentile, axis=1)
  s = jnp.maximum(s, 1.0).reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.clip(x, -s, s) / s


def guided_denoiser(
  apply_fn: Callable[..., jax.Array],
  text_emb: jax.Array,
  text_mask: jax.Array,
  neg_text_emb: jax.Array | None = None,
  neg_text_mask: jax.Array | None = None,
) -> Denoiser:
  """Classifier-free guidance with cond and uncond in ONE batched forward.

  apply_fn(z, logsnr, text_emb, text_mask) runs the network (close over params,
  frame ids and SR conditioning, which must then have batch 2B: use `jnp.concatenate
  ([c, c])`). The unconditional half uses the null text, or a negative prompt.
  """
  if neg_text_emb is None:
    neg_text_emb, neg_text_mask = objectives.null_text(text_emb, text_mask)
  both_emb = jnp.concatenate([text_emb, neg_text_emb.astype(text_emb.dtype)], axis=0)
  both_mask = jnp.concatenate([text_mask.astype(bool), neg_text_mask.astype(bool)], axis=0)

  def fn(z, logsnr, w):
    out = apply_fn(jnp.concatenate([z, z]), jnp.concatenate([logsnr, logsnr]), both_emb, both_mask)
    cond, uncond = jnp.split(out, 2)
    return uncond + w * (cond - uncond)

  return fn


def _logsnr_at(schedule: CosineSchedule, i: jax.Array, steps: jax.Array) -> jax.Array:
  """logsnr at t = 1 - i/steps (i = 0 .. steps), steps traced.

  The grid `1 - arange(steps + 1, float32) / steps` one point at a time. XLA computes
  it at run time where a constant step count let it fold the grid when compiling, so
  logsnr may differ in the last bit from a sampler compiled for one step count (the
  samples by ~1e-6).
  """
  t = 1.0 - jnp.asarray(i).astype(jnp.float32) / jnp.asarray(steps).astype(jnp.float32)
  return schedule.logsnr(t)


def initial_noise(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """The N(0, I) start `sample(..., key)` draws when given no z_init."""
  k_init, _ = jax.random.split(key)
  return jax.random.normal(k_init, shape, jnp.float32)


def sample(
  denoise: Denoiser,
  shape: tuple[int, ...],
  key: jax.Array,
  *,
  config: SamplerConfig,
  schedule: CosineSchedule = CosineSchedule(),
  prediction: objectives.Prediction = 'v',
  z_init: jax.Array | None = None,
  return_z: bool = False,
  on_step: Callable[[jax.Array], None] | None = None,
  traced: Traced | None = None,
) -> jax.Array:
  """Runs the whole sampling loop (jit it, or call under jit: it is one fori_loop).

  Starts from z_init or N(0, I) of `shape` drawn from `key`; returns the final
  x-prediction (thresholded as configured). DDIM uses `key` only for the initial
  noise; ancestral and stepback also for each step's noise (fold_in(key, step)).
  `on_step(i)` is called on the host after each step (progress bars), through
  `jax.debug.callback`, so the loop stays one compiled program.
  `traced`: the step count and guidance as values (`Traced`, e.g. arguments of the
  jitted caller, so that changing them does not recompile); default `config.traced()`.
  Given, it replaces config's steps, guidance, guidance_low and oscillate_from.
  """
  traced = config.traced() if traced is None else traced
  _, k_steps = jax.random.split(key)
  z = initial_noise(key, shape) if z_init is None else z_init
  b = shape[0]

  def x_eps(z, l_t, w):
    out = denoise(z, jnp.full((b,), l_t), w)
    x, eps = objectives.to_x_eps(out, z, jnp.full((b,), l_t), prediction)
    if config.clip != 'none':
      x = threshold(x, config.clip, config.dynamic_percentile)
      a_t, s_t = alpha_sigma(l_t)
      eps = (z - a_t * x) / s_t
    return x, eps

  def body(i, carry):
    z, _ = carry
    l_t, l_s = _logsnr_at(schedule, i, traced.steps), _logsnr_at(schedule, i + 1, traced.steps)
    x, eps = x_eps(z, l_t, guidance_weight(traced, i))
    a_t, s_t = alpha_sigma(l_t)
    a_s, s_s = alpha_sigma(l_s)
    if config.sampler == 'ddim':
      z_s = a_s * x + s_s * eps
    elif config.sampler == 'stepback':
      # DDIM to u = t - 2/N, then q(z_s | z_u) back up to s = t - 1/N. On the last step
      # u = s = 0 and the noise vanishes: the step is DDIM's.
      l_u = _logsnr_at(schedule, jnp.minimum(i + 2, traced.steps), traced.steps)
      a_u, s_u = alpha_sigma(l_u)
      z_u = a_u * x + s_u * eps
      ratio = a_s / a_u
      var = jnp.maximum(jnp.square(s_s) - jnp.square(ratio * s_u), 0.0)
      noise = jax.random.normal(jax.random.fold_in(k_steps, i), z.shape, z.dtype)
      z_s = ratio * z_u + jnp.sqrt(var) * noise
    else:
      # Posterior q(z_s | z_t, x): mean and variance (VDM eq. 32-33), written with
      # r = exp(l_t - l_s) = snr_t / snr_s in (0, 1).
      r = jnp.exp(l_t - l_s)
      mean = r * (a_s / a_t) * z + (1.0 - r) * a_s * x
      post_var = (1.0 - r) * jnp.square(s_s)
      fwd_var = (1.0 - r) * jnp.square(s_t)
      var = jnp.exp((1.0 - config.gamma) * jnp.log(post_var) + config.gamma * jnp.log(fwd_var))
      noise = jax.random.normal(jax.random.fold_in(k_steps, i), z.shape, z.dtype)
      z_s = mean + jnp.sqrt(var) * noise
    if on_step is not None:
      jax.debug.callback(on_step, i)
    return z_s, x

  z, x = jax.lax.fori_loop(0, traced.steps, body, (z, jnp.zeros(shape, jnp.float32)))
  return z if return_z else x
