r"""Times our VideoUNet on the CPU, side by side with an imagen-pytorch Unet3D harness.

    .venv/bin/python benchmarks/unet_cpu.py --config=digits-base --iters=5 --warmup=2

Prints ONE JSON line: params, compile seconds, train step (forward + backward + AdamW,
the project's diffusion_loss) and a classifier-free-guided denoiser call (cond + uncond
as ONE forward at batch 2B, as our sampler does); median / min over --iters runs.
The configs mirror the peer's reference runs (benchmarks/BENCHMARKS.md) in size; the
architectures differ (see `CONFIGS`), so compare per-parameter and per-FLOP as well.
"""

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from imagen_video_jax.diffusion import objectives
from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.models.unet import LevelConfig as L

# name -> (UNetConfig, frames, size, batch). Channels follow the peer's dims [D, D*m...];
# per-frame spatial attention (the peer's joint F*H*W attention is a different operator).
CONFIGS = {
  'digits-base': (
    unet_lib.UNetConfig(
      levels=(
        L(64, 2, temporal='attention', cross_attention=True),
        L(128, 2, spatial_attention=True, cross_attention=True, temporal='attention'),
        L(256, 2, spatial_attention=True, cross_attention=True, temporal='attention'),
      ),
      text_dim=64,
      emb_dim=256,
    ),
    8,
    16,
    8,
  ),
  'digits-ssr': (
    unet_lib.UNetConfig(
      levels=(
        L(32, 2, temporal='conv', cross_attention=True),
        L(64, 2, temporal='conv', cross_attention=True),
        L(128, 2, temporal='conv', cross_attention=True),
      ),
      text_dim=64,
      emb_dim=128,
      cond_channels=3,
      cond_augment=True,
    ),
    16,
    32,
    4,
  ),
  'micro': (
    unet_lib.UNetConfig(
      levels=(L(64, 1, spatial_attention=True, temporal='attention'),), emb_dim=256
    ),
    8,
    32,
    2,
  ),
}


def _time(fn, warmup, iters):
  for _ in range(warmup):
    jax.block_until_ready(fn())
  ts = []
  for _ in range(iters):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    ts.append(time.perf_counter() - t)
  return {'median_s': statistics.median(ts), 'min_s': min(ts)}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--config', default='digits-base', choices=sorted(CONFIGS))
  ap.add_argument('--warmup', type=int, default=2)
  ap.add_argument('--iters', type=int, default=5)
  ap.add_argument('--text-len', type=int, default=32)
  args = ap.parse_args()
  cfg, t, s, b = CONFIGS[args.config]
  model = unet_lib.VideoUNet(cfg)
  params = nn.unbox(unet_lib.init_params(cfg, jax.random.key(0), frames=t, height=s, width=s))
  n_params = sum(p.size for p in jax.tree.leaves(params))
  k = jax.random.split(jax.random.key(1), 4)
  x = jax.random.normal(k[0], (b, t, s, s, 3))
  text = jax.random.normal(k[1], (b, args.text_len, cfg.text_dim)) if cfg.text_dim else None
  mask = jnp.ones((b, args.text_len), bool) if cfg.text_dim else None
  cond = jax.random.normal(k[2], x.shape) if cfg.cond_channels else None
  cl = jnp.zeros((b,)) if cfg.cond_augment else None
  dcfg = objectives.DiffusionConfig()
  opt = optax.adamw(1e-4)
  opt_state = opt.init(params)

  def loss_fn(p, key):
    kd, kl = jax.random.split(key)
    e, m = objectives.drop_text(kd, text, mask, 0.1) if text is not None else (None, None)
    apply = lambda z, l: model.apply({'params': p}, z, l, e, m, None, cond, cl)
    return objectives.diffusion_loss(apply, x, kl, config=dcfg)[0]

  @jax.jit
  def train_step(p, s_, key):
    loss, g = jax.value_and_grad(loss_fn)(p, key)
    u, s_ = opt.update(g, s_, p)
    return optax.apply_updates(p, u), s_, loss

  def cfg_fn(p):
    e2 = None if text is None else jnp.concatenate([text, jnp.zeros_like(text)])
    m2 = None if mask is None else jnp.concatenate([mask, jnp.zeros_like(mask)])
    c2 = None if cond is None else jnp.concatenate([cond, cond])
    cl2 = None if cl is None else jnp.concatenate([cl, cl])
    out = model.apply(
      {'params': p}, jnp.concatenate([x, x]), jnp.zeros((2 * b,)), e2, m2, None, c2, cl2
    )
    c, u = jnp.split(out, 2)
    return u + 5.0 * (c - u)

  cfg_jit = jax.jit(cfg_fn)

  t0 = time.perf_counter()
  train_c = train_step.lower(params, opt_state, k[3]).compile()
  compile_train = time.perf_counter() - t0
  t0 = time.perf_counter()
  cfg_c = cfg_jit.lower(params).compile()
  compile_cfg = time.perf_counter() - t0
  flops = (cfg_c.cost_analysis() or {}).get('flops') if hasattr(cfg_c, 'cost_analysis') else None
  state = {'p': params, 's': opt_state}

  def one_train():
    state['p'], state['s'], loss = train_c(state['p'], state['s'], k[3])
    return loss

  res = {
    'harness': 'imagen_video_jax/benchmarks/unet_cpu.py',
    'label': args.config,
    'jax': jax.__version__,
    'backend': jax.default_backend(),
    'cpu_count': os.cpu_count(),
    'frames': t,
    'size': s,
    'batch': b,
    'params': int(n_params),
    'cfg_fwd_flops_2B': flops,
    'compile_train_s': compile_train,
    'compile_cfg_s': compile_cfg,
    'train_step': _time(one_train, args.warmup, args.iters),
    'cfg_batched': _time(lambda: cfg_c(params), args.warmup, args.iters),
  }
  print(json.dumps(res))


if __name__ == '__main__':
  main()
