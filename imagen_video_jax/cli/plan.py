r"""Does a stage's training step fit a mesh? Abstract arrays and fake CPU devices only.

  python -m imagen_video_jax.plan --config=configs/imagen_video.py:stage=base \
      --mesh=data:16,fsdp:16 [--device_memory_gb=95] [--nocompile]
  python -m imagen_video_jax.plan --config=configs/imagen_video.py:stage=tsr3 \
      --search=8,16,32,64,128,256 --device_memory_gb=80    # smallest pure-FSDP mesh

Prints the parameter count, per-device bytes of params, optimizer state and EMA, XLA's
compiled memory analysis of the train step on that mesh, and whether it fits.
`--config.x=y` overrides as in train (e.g. --config.data.batch_size=64).
This module sets XLA_FLAGS=--xla_force_host_platform_device_count=N (and
JAX_PLATFORMS=cpu) from --mesh/--search itself, before jax is imported; the memory
analysis is therefore the CPU backend's, an estimate standing in for TPU/GPU.
"""

import os
import sys

from imagen_video_jax import planning  # imports no jax


if __name__ == '__main__':  # before jax is imported anywhere
  planning.ensure_fake_devices(planning.devices_from_argv(sys.argv[1:]))
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'A stage config, e.g. configs/imagen_video.py:stage=base.', lock_config=True
)
_MESH = flags.DEFINE_string('mesh', 'fsdp:8', 'Mesh sizes, e.g. data:16,fsdp:16 (missing axes: 1).')
_SEARCH = flags.DEFINE_string(
  'search',
  '',
  'Instead of --mesh: pure-FSDP device counts to try in '
  'order, e.g. 8,16,32,64,128,256; prints the smallest that fits.',
)
_DEVICE_MEMORY_GB = flags.DEFINE_float(
  'device_memory_gb', 95.0, 'Memory per device in GB (1e9 bytes): TPU v5p 95, H100 80.'
)
_COMPILE = flags.DEFINE_bool(
  'compile',
  True,
  'Compile the step for its memory analysis; '
  "--nocompile: only the shardings' arithmetic (seconds).",
)
_JSON = flags.DEFINE_bool('json', False, 'Also print each plan as one line: JSON {...}.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from imagen_video_jax.cli import _checks

  _checks.quiet_logs()  # library INFO logs only with --verbosity
  if _CONFIG.value is None:
    raise app.UsageError('--config is required.')
  device_bytes = _DEVICE_MEMORY_GB.value * 1e9
  try:
    if _SEARCH.value:
      candidates = [{'fsdp': int(n)} for n in _SEARCH.value.split(',') if n.strip()]
      best, tried = planning.smallest_fitting(
        _CONFIG.value, candidates, device_bytes, compile=_COMPILE.value
      )
      for p in tried:
        print(planning.report(p, device_bytes), end='\n\n', flush=True)
        if _JSON.value:
          print('JSON', planning.to_json(p, device_bytes))
      print(f'smallest mesh that fits: {best}' if best else 'no candidate mesh fits')
      return
    plan = planning.plan_memory(
      _CONFIG.value, planning.parse_mesh(_MESH.value), compile=_COMPILE.value
    )
  except ValueError as e:
    raise SystemExit(f'plan: {e}') from None
  print(planning.report(plan, device_bytes), flush=True)
  if _JSON.value:
    print('JSON', planning.to_json(plan, device_bytes))


if __name__ == '__main__':
  app.run(main)
