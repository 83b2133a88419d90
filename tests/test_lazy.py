"""`_lazy.exports`: a package's names resolve to their module on first use, and only then."""

import subprocess
import sys
import types

import pytest

from imagen_video_jax import _lazy


def test_names_resolve_on_first_use_and_are_cached(monkeypatch):
  pkg = types.ModuleType('fakepkg')
  monkeypatch.setitem(sys.modules, 'fakepkg', pkg)
  monkeypatch.setitem(sys.modules, 'fakepkg.sub', types.SimpleNamespace(f=len))
  pkg.__getattr__, pkg.__dir__ = _lazy.exports(
    'fakepkg', {'f': 'sub', 'JSONDecoder': 'json.decoder'}
  )
  pkg._private = 1
  assert pkg.__getattr__('f') is len and vars(pkg)['f'] is len  # cached after first use

  import json.decoder

  assert pkg.__getattr__('JSONDecoder') is json.decoder.JSONDecoder  # a full dotted path
  with pytest.raises(AttributeError, match="'fakepkg' has no attribute 'nope'"):
    pkg.__getattr__('nope')
  assert '_private' not in pkg.__dir__() and {'f', 'JSONDecoder'} <= set(pkg.__dir__())


def test_importing_one_training_module_imports_no_other():
  code = (
    'import sys, imagen_video_jax.training.checkpointing\n'
    "print(sorted(m for m in sys.modules if m.startswith('imagen_video_jax.training.')))"
  )
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'imagen_video_jax.training.loop' not in out.stdout, out.stdout
