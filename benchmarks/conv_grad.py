r"""Times a 3x3 convolution's forward, input gradient and kernel gradient on this CPU.

    .venv/bin/python benchmarks/conv_grad.py                                   # as the package sets XLA
    IMAGEN_VIDEO_JAX_XLA_DEFAULTS=0 .venv/bin/python benchmarks/conv_grad.py   # XLA's defaults

Shapes of the digits U-Nets (batch x frames as the 2-D batch): 256 frames of 16x16x32
(base, batch 32) and 64 frames of 32x32x48 (the matched SSR, batch 4). Best of 5, ms.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import imagen_video_jax  # noqa: E402,F401  (sets the XLA CPU flags before JAX starts)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from benchmarks._timing import best_ms  # noqa: E402


def conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def main():
  rng = np.random.default_rng(0)
  print(f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
  for n, h, c in [(256, 16, 32), (64, 32, 48)]:
    x = jnp.asarray(rng.standard_normal((n, h, h, c)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, c, c)) * 0.1, jnp.float32)
    dy = jnp.asarray(rng.standard_normal((n, h, h, c)), jnp.float32)
    dx = jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
    dw = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
    fwd = best_ms(jax.jit(conv), (x, w))
    print(
      f'{n} x {h}x{h}x{c}: forward {fwd:.1f} ms, input gradient {best_ms(dx, (x, w, dy)):.1f} ms, '
      f'kernel gradient {best_ms(dw, (x, w, dy)):.1f} ms',
      flush=True,
    )


if __name__ == '__main__':
  main()
