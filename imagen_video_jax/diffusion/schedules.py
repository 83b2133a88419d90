"""Continuous-time noise schedules expressed as log-SNR (docs/design.md, 'Diffusion').

z_t = alpha_t x + sigma_t eps with alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr)
(variance preserving). t = 0 is clean data, t = 1 is noise.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class CosineSchedule:
  """Cosine log-SNR schedule, clipped to [logsnr_min, logsnr_max].

  logsnr(t) = -2 log tan(a t + b) with a, b chosen so that logsnr(0) = logsnr_max
  and logsnr(1) = logsnr_min (the cosine schedule of Nichol & Dhariwal in log-SNR
  form). `shift` adds a constant to log-SNR: shift = 2 log(base_res / res) keeps a
  high-resolution stage as noisy, per pixel, as the base (simple diffusion).
  """

  logsnr_min: float = -20.0
  logsnr_max: float = 20.0
  shift: float = 0.0

  def __post_init__(self):
    for name in ('logsnr_min', 'logsnr_max', 'shift'):
      if not math.isfinite(getattr(self, name)):
        raise ValueError(f'{name} must be finite; got {getattr(self, name)}')
    if not self.logsnr_min < self.logsnr_max:
      raise ValueError(f'logsnr_min ({self.logsnr_min}) must be < logsnr_max ({self.logsnr_max})')

  @property
  def _ab(self) -> tuple[float, float]:
    b = math.atan(math.exp(-0.5 * self.logsnr_max))
    a = math.atan(math.exp(-0.5 * self.logsnr_min)) - b
    return a, b

  def logsnr(self, t: jax.Array) -> jax.Array:
    """t in [0, 1] -> logsnr (decreasing in t)."""
    a, b = self._ab
    t = jnp.asarray(t, jnp.float32)
    # The clip only removes float32 rounding at the ends (tan near pi/2).
    l = jnp.clip(-2.0 * jnp.log(jnp.tan(a * t + b)), self.logsnr_min, self.logsnr_max)
    return l + self.shift

  __call__ = logsnr

  def t_of_logsnr(self, logsnr: jax.Array) -> jax.Array:
    """The inverse map, logsnr -> t."""
    a, b = self._ab
    logsnr = jnp.asarray(logsnr, jnp.float32) - self.shift
    return (jnp.arctan(jnp.exp(-0.5 * logsnr)) - b) / a


def alpha_sigma(logsnr: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(alpha, sigma) of a variance-preserving process at this log-SNR."""
  logsnr = jnp.asarray(logsnr, jnp.float32)
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))
