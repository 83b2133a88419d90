r"""Times FrameGroupNorm against GroupNorm written on the grouped view, forward and backward.

    .venv/bin/python benchmarks/group_norm.py [--iters=5]

The grouped-view form (reshape to [B, T, H, W, G, C/G], mean and variance over
(H, W, C/G)) is how FrameGroupNorm was written before; FrameGroupNorm now takes per-channel
sums over (H, W) first. Shapes: the digits base stage's three levels at batch 32 x 8
frames. Prints a Markdown table (best of --iters, ms) and the largest relative difference.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from imagen_video_jax.models import layers  # noqa: E402

from benchmarks._timing import best_ms  # noqa: E402


def grouped_view(x, scale, bias, groups):
  b, t, h, w, c = x.shape
  x = x.reshape(b, t, h, w, groups, c // groups)
  mean = x.mean(axis=(2, 3, 5), keepdims=True)
  var = jnp.square(x - mean).mean(axis=(2, 3, 5), keepdims=True)
  return ((x - mean) * jax.lax.rsqrt(var + 1e-6)).reshape(b, t, h, w, c) * scale + bias


def frame_group_norm(x, scale, bias, groups):
  del groups  # the layer picks the same count (layers.num_groups_for)
  return layers.FrameGroupNorm().apply({'params': {'scale': scale, 'bias': bias}}, x)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--iters', type=int, default=5)
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  print(
    '| [B, T, H, W, C] | grouped view fwd / fwd+bwd (ms) | FrameGroupNorm fwd / fwd+bwd (ms) | rel. diff |'
  )
  print('| --- | ---: | ---: | ---: |')
  for shape in [(32, 8, 16, 16, 32), (32, 8, 8, 8, 64), (32, 8, 4, 4, 128)]:
    c = shape[-1]
    groups = layers.num_groups_for(c)
    x = jnp.asarray(rng.standard_normal(shape) * 2 + 0.5, jnp.float32)
    scale, bias = (jnp.asarray(rng.standard_normal(c), jnp.float32) for _ in range(2))
    dy = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    cells, outs = [], []
    for fn in (grouped_view, frame_group_norm):
      fwd = jax.jit(lambda x, s, b, fn=fn: fn(x, s, b, groups))
      grad = jax.jit(
        jax.grad(lambda x, s, b, fn=fn: jnp.sum(fn(x, s, b, groups) * dy), argnums=(0, 1, 2))
      )
      a, g = best_ms(fwd, (x, scale, bias), args.iters), best_ms(grad, (x, scale, bias), args.iters)
      cells.append(f'{a:.1f} / {g:.1f}')
      outs.append(fwd(x, scale, bias))
    rel = float(jnp.max(jnp.abs(outs[0] - outs[1])) / jnp.max(jnp.abs(outs[0])))
    print(f'| {list(shape)} | {cells[0]} | {cells[1]} | {rel:.1e} |', flush=True)


if __name__ == '__main__':
  main()
