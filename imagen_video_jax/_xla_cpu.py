"""XLA CPU settings the U-Nets run faster with, set when the package is imported.

XLA's CPU backend (jaxlib 0.10) hands convolutions to its YNNPACK library one by one;
there, a convolution's kernel gradient runs 2.4-3.5x slower than XLA's own kernels (the
digits U-Nets' 3x3 convolutions: 34 -> 15 ms and 88 -> 25 ms), while YNNPACK's fused dots,
elementwise ops and reductions are faster than XLA's. So convolutions are taken out of the
YNNPACK fusion types and nothing else: the digits base stage's train step is 1.1-1.4x
faster (benchmarks/BENCHMARKS.md).

The setting is a flag in `XLA_FLAGS`, which XLA reads once, when JAX starts its first
backend: it applies to programs compiled after `import imagen_video_jax` unless JAX had
already started. It is left alone when the user's `XLA_FLAGS` names the option already,
when `IMAGEN_VIDEO_JAX_XLA_DEFAULTS=0`, and on a jaxlib it has not been tested with (XLA
aborts on flags it does not know). The flag only concerns the CPU backend.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import MutableMapping

OPTION = 'xla_cpu_experimental_ynn_fusion_type'
# Every YNNPACK fusion type but 'individual_convolution'.
VALUE = 'dot,eltwise,reduce,individual_dot'
TESTED_JAXLIB = ('0.10.',)
OPT_OUT = 'IMAGEN_VIDEO_JAX_XLA_DEFAULTS'


def apply(
  environ: MutableMapping[str, str] = os.environ, jaxlib_version: str | None = None
) -> bool:
  """Adds the flag to environ['XLA_FLAGS'] where it applies; True if it did."""
  if environ.get(OPT_OUT, '1') == '0':
    return False
  flags = environ.get('XLA_FLAGS', '')
  if OPTION in flags:  # the user's own choice stands
    return False
  if jaxlib_version is None:
    try:
      jaxlib_version = importlib.metadata.version('jaxlib')
    except importlib.metadata.PackageNotFoundError:
      return False
  if not jaxlib_version.startswith(TESTED_JAXLIB):
    return False
  environ['XLA_FLAGS'] = f'{flags} --{OPTION}={VALUE}'.strip()
  return True
