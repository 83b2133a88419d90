"""XLA CPU settings the U-Nets run faster with, set when the package is imported.

XLA's CPU backend (jaxlib 0.10) hands convolutions to its YNNPACK library one by one;
there, a convolution's kernel gradient runs 3.4x slower than XLA's own kernels (the
digits U-Nets' 3x3 convolutions: 51.8 -> 15.2 ms and 100.3 -> 29.3 ms), while YNNPACK's fused dots,
elementwise ops and reductions are faster than XLA's. So convolutions are taken out of the
YNNPACK fusion types and nothing else: the digits base stage's train step goes from
2.85 s to 2.19 s (median, batch 32; benchmarks/BENCHMARKS.md).

The setting is a flag in `XLA_FLAGS`, which XLA reads once, when JAX starts its first
backend: it applies to programs compiled after `import imagen_video_jax` unless JAX had
already started. It is left alone when the user's `XLA_FLAGS` names the option already,
when `IMAGEN_VIDEO_JAX_XLA_DEFAULTS=0`, on a jaxlib it has not been tested with (XLA
aborts on flags it does not know), and when `XLA_FLAGS` splits the CPU into several
devices (`--xla_force_host_platform_device_count`): there, programs sharded over a
tensor axis failed to compile with it in jaxlib 0.10.2 ("unsupported layout in YNN
fusion"), while one-device programs (every test of the fast suite) compiled and matched.
The flag only concerns the CPU backend.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import MutableMapping

OPTION = 'xla_cpu_experimental_ynn_fusion_type'
# Every YNNPACK fusion type but 'individual_convolution'.
VALUE = 'dot,eltwise,reduce,individual_dot'
TESTED_JAXLIB = ('0.10.',)
OPT_OUT = 'IMAGEN_VIDEO_JAX_XLA_DEFAULTS'
applied = False  # whether `apply` added the flag in this process (planning takes it out)


def _forced_host_devices(flags: str) -> int:
  m = re.search(r'--xla_force_host_platform_device_count=(\d+)', flags)
  return int(m.group(1)) if m else 1


def apply(
  environ: MutableMapping[str, str] = os.environ, jaxlib_version: str | None = None
) -> bool:
  """Adds the flag to environ['XLA_FLAGS'] where it applies; True if it did."""
  if environ.get(OPT_OUT, '1') == '0':
    return False
  flags = environ.get('XLA_FLAGS', '')
  if OPTION in flags:  # the user's own choice stands
    return False
  if _forced_host_devices(flags) > 1:  # fake-device meshes: see the module docstring
    return False
  if jaxlib_version is None:
    try:
      jaxlib_version = importlib.metadata.version('jaxlib')
    except importlib.metadata.PackageNotFoundError:
      return False
  if not jaxlib_version.startswith(TESTED_JAXLIB):
    return False
  environ['XLA_FLAGS'] = f'{flags} --{OPTION}={VALUE}'.strip()
  global applied
  applied = environ is os.environ
  return True
