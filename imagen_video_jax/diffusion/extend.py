"""Sampling a window of frames conditioned on known frames with a model that was not
trained for it: the replacement method and VDM's reconstruction guidance (Ho et al. 2022,
"Video Diffusion Models", section 3.1).

Both wrap a sampler's denoiser (`samplers.Denoiser`). The frames `known` [B, T] are given
(`x_known` there, in [-1, 1]); at every step their part of the noisy video is replaced by
the given frames noised to the step's level (`alpha x + sigma eps`, one fixed draw of eps
for the whole loop, so the sampler stays deterministic given its key). Replacement stops
there: the model sees the known frames only through the noisy input, which VDM found makes
the new frames drift away from them. Reconstruction guidance also moves the prediction of
the new frames along the gradient of how badly the known frames are reconstructed:

    x~ = x^ - (w_r alpha_t / 2) grad_z || x_known - x^_known(z) ||^2

(VDM eq. 7, with w_r the `weight`; the gradient goes through the network, so a step costs
a forward and a backward pass). The wrapper returns the model output that, read against
the sampler's own z, gives x~ (and the eps consistent with it), so any sampler
(`samplers.sample`) runs it unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from imagen_video_jax.diffusion import objectives
from imagen_video_jax.diffusion.samplers import Denoiser
from imagen_video_jax.diffusion.schedules import alpha_sigma

Method = Literal['replacement', 'reconstruction']
METHODS = ('replacement', 'reconstruction')


@dataclasses.dataclass(frozen=True)
class ExtendConfig:
  """How a window is conditioned on the frames it shares with the video so far.

  Attributes:
    method: 'reconstruction' (VDM's reconstruction guidance) or 'replacement'.
    weight: reconstruction guidance's w_r (VDM: larger than 1 helps; 1 is the plain
      conditional score of a Gaussian approximation).
    overlap: frames each new window shares with the one before.
  """

  method: Method = 'reconstruction'
  weight: float = 2.0
  overlap: int = 4

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f'method must be one of {METHODS}; got {self.method!r}')
    if not self.weight >= 0:
      raise ValueError(f'weight must be >= 0; got {self.weight}')
    if self.overlap < 1:
      raise ValueError(f'overlap must be >= 1; got {self.overlap}')


def conditioned_denoiser(
  denoise: Denoiser,
  x_known: jax.Array,
  known: jax.Array,
  eps_known: jax.Array,
  *,
  config: ExtendConfig,
  prediction: objectives.Prediction = 'v',
) -> Denoiser:
  """`denoise` conditioned on the frames `known` [B, T] of `x_known` [B, T, H, W, C].

  eps_known: the fixed noise the known frames are noised with (shape of x_known).
  """
  mask = known.astype(jnp.float32)[:, :, None, None, None]

  def fn(z, logsnr, w):
    a, s = alpha_sigma(logsnr)
    a, s = a[:, None, None, None, None], s[:, None, None, None, None]
    z_in = mask * (a * x_known + s * eps_known) + (1.0 - mask) * z

    def x_hat(z_):
      return objectives.to_x_eps(denoise(z_, logsnr, w), z_, logsnr, prediction)[0]

    if config.method == 'replacement':
      x = x_hat(z_in)
    else:

      def error(z_):
        x = x_hat(z_)
        return jnp.sum(jnp.square(mask * (x_known - x))), x

      grad, x = jax.grad(error, has_aux=True)(z_in)
      x = x - (config.weight * a / 2.0) * grad
    x = mask * x_known + (1.0 - mask) * x  # the known frames are known
    # The output that the sampler, reading it against its own z, turns into x (and the
    # eps that goes with it): the known frames' part of z is the sampler's, not z_in.
    eps = (z - a * x) / s
    return objectives.target(x, eps, logsnr, prediction)

  return fn
