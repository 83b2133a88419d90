r"""Times a per-frame 1x3x3 convolution three ways on this machine (fwd+bwd, jit).

    .venv/bin/python benchmarks/frame_conv.py [--batch=32] [--frames=8] [--iters=5]

`conv3d`: nn.Conv's lowering, a 3-D convolution with a 1x3x3 kernel over [B, T, H, W, C];
`conv2d`: the same kernel as a 2-D convolution over the B*T frames (`layers.FrameConv`);
`im2col`: nine shifted copies and one matmul. The three shapes are the digits base U-Net's
levels (16x16x32, 8x8x64, 4x4x128). Prints ms per step and GFLOP/s, then a matmul's
GFLOP/s as this machine's ceiling.
"""

import argparse
import time

import jax
import jax.numpy as jnp


def _time(fn, *args, iters):
  jax.block_until_ready(fn(*args))
  t = time.perf_counter()
  for _ in range(iters):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - t) / iters


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--frames', type=int, default=8)
  ap.add_argument('--iters', type=int, default=5)
  a = ap.parse_args()
  b, t = a.batch, a.frames

  def conv3d(x, w):
    return jax.lax.conv_general_dilated(
      x, w, (1, 1, 1), 'SAME', dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC')
    )

  def conv2d(x, w):
    _, _, h, wd, c = x.shape
    y = jax.lax.conv_general_dilated(
      x.reshape(b * t, h, wd, c), w[0], (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
    return y.reshape(x.shape[:4] + y.shape[-1:])

  def im2col(x, w):
    _, _, h, wd, c = x.shape
    xp = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate(
      [xp[:, :, i : i + h, j : j + wd] for i in range(3) for j in range(3)], -1
    )
    return cols @ w.reshape(9 * c, -1)

  key = jax.random.key(0)
  for size, c in ((16, 32), (8, 64), (4, 128)):
    x = jax.random.normal(key, (b, t, size, size, c))
    w = 0.1 * jax.random.normal(key, (1, 3, 3, c, c))
    flops = 3 * 2 * b * t * size * size * 9 * c * c  # forward + two backward convolutions
    for name, f in (('conv3d', conv3d), ('conv2d', conv2d), ('im2col', im2col)):
      step = jax.jit(jax.value_and_grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), (0, 1)))
      dt = _time(step, x, w, iters=a.iters)
      print(f'{size}x{size}x{c} {name}: {dt * 1e3:.1f} ms, {flops / dt / 1e9:.1f} GFLOP/s')
  m = jax.random.normal(key, (2048, 2048))
  dt = _time(jax.jit(lambda m: m @ m), m, iters=a.iters)
  print(f'matmul 2048^3: {2 * 2048**3 / dt / 1e9:.1f} GFLOP/s')


if __name__ == '__main__':
  main()
