r"""Does a stage's training step fit a mesh? Abstract arrays and fake CPU devices only.

  python -m imagen_video_jax.plan --config=configs/imagen_video.py:stage=base \
      --mesh=data:16,fsdp:16 [--device_memory_gb=95] [--nocompile]
  python -m imagen_video_jax.plan --config=configs/imagen_video.py:stage=ssr1 \
      --search=8,16,32,64,128,256 --device_memory_gb=80    # smallest pure-FSDP mesh
  # meshes that split each example's frames (time) and rows (space), and crops
  python -m imagen_video_jax.plan --config=configs/imagen_video.py:stage=ssr3 \
      --search='fsdp:256,time:4;fsdp:256,time:8' --crops=full,128x192x320
  # sampling a full-size clip (one forward pass a step, guided)
  python -m imagen_video_jax.plan --config=configs/imagen_video.py:stage=ssr3 \
      --sample --mesh=time:8,space:4

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
  'Instead of --mesh: meshes to try in order, as pure-FSDP device counts (8,16,32) or '
  "meshes separated by ';' (fsdp:256;fsdp:256,time:2;fsdp:256,time:2,space:2); prints "
  'the first that fits.',
)
_CROPS = flags.DEFINE_string(
  'crops',
  'config',
  "Training crops to try, in order, with every mesh of --search (or with --mesh): 'config' "
  "(the config's data.crop), 'full', or FRAMESxHEIGHTxWIDTH (0: the stage's size), e.g. "
  'full,128x192x320.',
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
_SAMPLE = flags.DEFINE_bool(
  'sample',
  False,
  "Plan sampling instead of training: --num_samples full-size clips with the stage's "
  'sampler (crops do not apply), on the whole mesh.',
)
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1, 'With --sample: clips sampled at once.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from imagen_video_jax.cli import _checks

  _checks.quiet_logs()  # library INFO logs only with --verbosity
  if _CONFIG.value is None:
    raise app.UsageError('--config is required.')
  device_bytes = _DEVICE_MEMORY_GB.value * 1e9
  try:
    crops = [planning.parse_crop(c) for c in _CROPS.value.split(',')]
    candidates = (
      planning.parse_search(_SEARCH.value) if _SEARCH.value else [planning.parse_mesh(_MESH.value)]
    )

    def show(p):
      print(planning.report(p, device_bytes), end='\n\n', flush=True)
      if _JSON.value:
        print('JSON', planning.to_json(p, device_bytes), flush=True)

    if _SAMPLE.value:
      if _CROPS.value != 'config':
        raise ValueError('--crops does not apply to --sample: sampling is at full size')
      plans = [planning.plan_sampling(_CONFIG.value, m, num=_NUM_SAMPLES.value) for m in candidates]
      for p in plans:
        show(p)
      return
    if not _SEARCH.value and len(crops) == 1:
      show(
        planning.plan_memory(_CONFIG.value, candidates[0], compile=_COMPILE.value, crop=crops[0])
      )
      return
    best, tried = planning.search(
      _CONFIG.value, candidates, device_bytes, crops=crops, compile=_COMPILE.value
    )
  except ValueError as e:
    raise SystemExit(f'plan: {e}') from None
  for p in tried:
    show(p)
  if best is None:
    print('no candidate mesh fits')
  else:
    clip = 'x'.join(map(str, best.clip)) + (' (crop)' if best.crop else '')
    print(f'first plan that fits: mesh {planning.mesh_text(best.mesh)}, clips {clip}')


if __name__ == '__main__':
  app.run(main)
