r"""Where a digits-base train step's time goes on the CPU: the same U-Net with parts removed.

    .venv/bin/python benchmarks/digits_ablation.py [full no_temporal_attn ...]

Batch 16 of 8x16x16 clips, 10 text tokens; fwd + bwd + AdamW of the project's
diffusion_loss; median of 3 steps after one warm-up; XLA's FLOP count of the step.
"""

import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from configs import digits
from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.diffusion import objectives

c = digits.get_config('stage=base')
base = unet_lib.UNetConfig.from_dict(c.model.to_dict())
B, T, S, L = 16, 8, 16, 10


def variant(name):
  lv = base.levels
  if name == 'no_temporal_attn':
    lv = tuple(dataclasses.replace(l, temporal='conv') for l in lv)
  if name == 'no_temporal':
    lv = tuple(dataclasses.replace(l, temporal='none') for l in lv)
  if name == 'no_spatial_attn':
    lv = tuple(dataclasses.replace(l, spatial_attention=False) for l in lv)
  if name == 'no_cross':
    lv = tuple(dataclasses.replace(l, cross_attention=False) for l in lv)
  if name == 'convs_only':
    lv = tuple(
      dataclasses.replace(l, cross_attention=False, spatial_attention=False, temporal='none')
      for l in lv
    )
  return dataclasses.replace(base, levels=lv)


names = sys.argv[1:] or ['full', 'no_temporal_attn', 'no_spatial_attn', 'no_cross', 'convs_only']
for name in names:
  cfg = variant(name)
  model = unet_lib.VideoUNet(cfg)
  params = nn.unbox(unet_lib.init_params(cfg, jax.random.key(0), frames=T, height=S, width=S))
  k = jax.random.split(jax.random.key(1), 4)
  x = jax.random.normal(k[0], (B, T, S, S, 3))
  text = jax.random.normal(k[1], (B, L, cfg.text_dim))
  mask = jnp.ones((B, L), bool)
  opt = optax.adamw(1e-4)
  st = opt.init(params)

  def loss_fn(p, key):
    apply = lambda z, l: model.apply({'params': p}, z, l, text, mask, None, None, None)
    return objectives.diffusion_loss(apply, x, key, config=objectives.DiffusionConfig())[0]

  @jax.jit
  def step(p, s, key):
    loss, g = jax.value_and_grad(loss_fn)(p, key)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  t0 = time.time()
  comp = step.lower(params, st, k[3]).compile()
  ct = time.time() - t0
  ca = comp.cost_analysis()
  ca = ca[0] if isinstance(ca, list) else ca
  p, s = params, st
  p, s, l = comp(p, s, k[3])
  jax.block_until_ready(l)
  ts = []
  for _ in range(3):
    t0 = time.time()
    p, s, l = comp(p, s, k[3])
    jax.block_until_ready(l)
    ts.append(time.time() - t0)
  print(
    f'{name:18s} params {sum(q.size for q in jax.tree.leaves(params)) / 1e6:.2f}M  GFLOP {ca.get("flops", 0) / 1e9:6.1f}  step {statistics.median(ts):.2f}s  compile {ct:.0f}s',
    flush=True,
  )
