"""A tiny VideoUNet memorises one short video: the diffusion loss falls >= 10x."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from imagen_video_jax.diffusion import objectives
from imagen_video_jax.models import unet as unet_lib


def _moving_square(t=4, size=8):
  video = -np.ones((t, size, size, 3), np.float32)
  for i in range(t):
    video[i, 2:5, 1 + i:4 + i, 0] = 1.0  # a red square moving right
  return jnp.asarray(video)


def test_tiny_model_overfits_one_video():
  cfg = unet_lib.UNetConfig(
      levels=(unet_lib.LevelConfig(16, 1, temporal='conv'),
              unet_lib.LevelConfig(32, 1, temporal='attention')),
      emb_dim=32, head_dim=16)
  video = _moving_square()[None]
  model = unet_lib.VideoUNet(cfg)
  params = nn.unbox(unet_lib.init_params(cfg, jax.random.key(0), frames=4, height=8, width=8))
  dcfg = objectives.DiffusionConfig(prediction='v')
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)
  batch = 16
  x = jnp.repeat(video, batch, 0)

  def loss_fn(p, key, t=None, eps=None, xx=x):
    apply = lambda z, logsnr: model.apply({'params': p}, z, logsnr)
    return objectives.diffusion_loss(apply, xx, key, config=dcfg, t=t, eps=eps)[0]

  @jax.jit
  def step(p, s, key):
    loss, g = jax.value_and_grad(loss_fn)(p, key)
    updates, s = opt.update(g, s)
    return optax.apply_updates(p, updates), s, loss

  # A fixed evaluation set of noise levels and noises, the same before and after.
  n_eval = 64
  t_eval = jnp.linspace(0.02, 0.98, n_eval)
  eps_eval = jax.random.normal(jax.random.key(1), (n_eval,) + video.shape[1:])
  eval_loss = jax.jit(lambda p: loss_fn(p, None, t_eval, eps_eval, jnp.repeat(video, n_eval, 0)))

  before = float(eval_loss(params))
  for i in range(300):
    params, opt_state, _ = step(params, opt_state, jax.random.fold_in(jax.random.key(2), i))
  after = float(eval_loss(params))
  assert after < before / 10, (before, after)
