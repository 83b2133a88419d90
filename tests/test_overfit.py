"""A tiny VideoUNet memorises one short video: the diffusion loss falls >= 10x."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from imagen_video_jax.diffusion import objectives
from imagen_video_jax.models import unet as unet_lib

# LLVM at -O1 rather than XLA's default: compiles the initialiser and the train step 2-4x
# faster here and runs the 300 steps as fast (-O0 would run them 2x slower). Same HLO
# passes, the same computation.
_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 1})


def _moving_square(t=4, size=8):
  video = -np.ones((t, size, size, 3), np.float32)
  for i in range(t):
    video[i, 2:5, 1 + i : 4 + i, 0] = 1.0  # a red square moving right
  return jnp.asarray(video)


def test_tiny_model_overfits_one_video():
  cfg = unet_lib.UNetConfig(
    levels=(
      unet_lib.LevelConfig(16, 1, temporal='conv'),
      unet_lib.LevelConfig(32, 1, temporal='attention'),
    ),
    emb_dim=32,
    head_dim=16,
  )
  video = _moving_square()[None]
  model = unet_lib.VideoUNet(cfg)
  params = nn.unbox(_jit(unet_lib.init_fn(cfg, frames=4, height=8, width=8))(jax.random.key(0)))
  dcfg = objectives.DiffusionConfig(prediction='v')
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)
  batch = 16
  x = jnp.repeat(video, batch, 0)

  def loss_fn(p, key, t=None, eps=None, xx=x):
    apply = lambda z, logsnr: model.apply({'params': p}, z, logsnr)
    return objectives.diffusion_loss(apply, xx, key, config=dcfg, t=t, eps=eps)[0]

  @_jit
  def step(p, s, i):
    loss, g = jax.value_and_grad(loss_fn)(p, jax.random.fold_in(jax.random.key(2), i))
    updates, s = opt.update(g, s)
    return optax.apply_updates(p, updates), s, loss

  # A fixed evaluation set of noise levels and noises, the same before and after.
  n_eval = 64
  t_eval = jnp.linspace(0.02, 0.98, n_eval)
  # numpy, not jax.random: an eager draw would compile its own program.
  eps_eval = (
    np.random.default_rng(1).standard_normal((n_eval,) + video.shape[1:]).astype(np.float32)
  )
  eval_loss = _jit(lambda p: loss_fn(p, None, t_eval, eps_eval, jnp.repeat(video, n_eval, 0)))

  before = float(eval_loss(params))
  for i in range(300):
    params, opt_state, _ = step(params, opt_state, i)
  after = float(eval_loss(params))
  assert after < before / 10, (before, after)
