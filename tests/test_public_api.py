"""Every public name resolves, has a docstring, and importing the package is cheap."""

import subprocess
import sys

import imagen_video_jax as ivj


def test_every_export_resolves_and_is_documented():
  for name in ivj.__all__:
    obj = getattr(ivj, name)
    if callable(obj):
      assert (obj.__doc__ or '').strip(), f'{name} has no docstring'


def test_import_does_not_pull_in_heavy_stacks():
  code = (
    'import sys, imagen_video_jax as i; '
    'print(any(m.split(".")[0] in ("torch", "tensorflow_datasets", "grain", "jax") '
    'for m in sys.modules))'
  )
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == 'False'
