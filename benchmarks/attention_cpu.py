r"""Times the attention kernels on this CPU: the reference against the chunked kernel.

    .venv/bin/python benchmarks/attention_cpu.py [--iters=5] [--cases=all]

For the attention shapes of the digits base stage at batch 32 (per-frame spatial attention
at 8x8 and 4x4, temporal attention over 8 frames with its bias and frame-id mask, text
cross-attention over 33 tokens) and of a 32x32 frame (16 sequences of 1024 tokens, 4 heads
of 64): forward, and forward + backward of a scalar loss, each kernel in the same process,
alternating. Prints a Markdown table (best of --iters, in ms) and the largest difference.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from imagen_video_jax.models import attention_kernels as ak  # noqa: E402

from benchmarks._timing import best_ms  # noqa: E402

# name -> (q shape, k/v shape, bias shape, mask shape): [..., L, heads, head_dim]
CASES = {
  'spatial 8x8 (B32 T8, 64 tok, 1 head)': ((32, 8, 64, 1, 64), (32, 8, 64, 1, 64), None, None),
  'spatial 4x4 (B32 T8, 16 tok, 2 heads)': ((32, 8, 16, 2, 64), (32, 8, 16, 2, 64), None, None),
  'temporal 8x8 (B32, 8 frames, 1 head)': (
    (32, 64, 8, 1, 64),
    (32, 64, 8, 1, 64),
    (1, 8, 8),
    (32, 1, 1, 8, 8),
  ),
  'temporal 4x4 (B32, 8 frames, 2 heads)': (
    (32, 16, 8, 2, 64),
    (32, 16, 8, 2, 64),
    (2, 8, 8),
    (32, 1, 1, 8, 8),
  ),
  'cross 8x8 (B32, 512 q, 33 text)': (
    (32, 1, 512, 1, 64),
    (32, 1, 33, 1, 64),
    None,
    (32, 1, 1, 1, 33),
  ),
  'spatial 16x16 (B8 T8, 256 tok, 1 head)': ((8, 8, 256, 1, 64), (8, 8, 256, 1, 64), None, None),
  'spatial 16x16 (B32 T8, 256 tok, 1 head)': ((32, 8, 256, 1, 64), (32, 8, 256, 1, 64), None, None),
  'spatial 32x32 (16 frames, 1024 tok, 4 heads)': (
    (16, 1024, 4, 64),
    (16, 1024, 4, 64),
    None,
    None,
  ),
}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--iters', type=int, default=5)
  ap.add_argument('--impls', default='reference,chunked')
  ap.add_argument('--cases', default='all', help='comma-separated substrings of case names')
  args = ap.parse_args()
  impls = args.impls.split(',')
  rng = np.random.default_rng(0)
  print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}, best of {args.iters}')
  print('| attention | ' + ' | '.join(f'{i} fwd / fwd+bwd (ms)' for i in impls) + ' | max diff |')
  print('| --- |' + ' ---: |' * (len(impls) + 1))
  only = args.cases.split(',') if args.cases != 'all' else None
  for name, (qs, ks, bs, ms) in CASES.items():
    if only and not any(o in name for o in only):
      continue
    q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (qs, ks, ks))
    bias = None if bs is None else jnp.asarray(rng.standard_normal(bs), jnp.float32)
    mask = None if ms is None else jnp.asarray(rng.random(ms) > 0.2)
    dy = jnp.asarray(rng.standard_normal(qs), jnp.float32)
    cells, outs = [], []
    for impl in impls:

      def fwd(q, k, v, bias, impl=impl):
        return ak.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation=impl)

      grad = jax.jit(
        jax.grad(lambda q, k, v, b, f=fwd: jnp.sum(f(q, k, v, b) * dy), argnums=(0, 1, 2))
      )
      fwd = jax.jit(fwd)
      a = best_ms(fwd, (q, k, v, bias), args.iters)
      b = best_ms(grad, (q, k, v, bias), args.iters)
      outs.append(fwd(q, k, v, bias))
      cells.append(f'{a:.1f} / {b:.1f}')
    diff = max(float(jnp.max(jnp.abs(o - outs[0]))) for o in outs)
    print(f'| {name} | ' + ' | '.join(cells) + f' | {diff:.1e} |', flush=True)


if __name__ == '__main__':
  main()
