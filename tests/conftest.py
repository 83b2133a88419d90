"""Shared test set-up: CPU only, float32 matmuls at full precision, quick compiles, and one
XLA compilation cache for the whole run.

The environment is set before jax is imported, so the pytest-xdist workers and the
command-line programs the tests start as subprocesses inherit it.
"""

import os
import shutil
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

# The tests check what programs compute, not how fast their machine code runs. LLVM's
# optimisations are most of XLA's CPU compile time, which is most of this suite's time;
# turning them off changes no semantics (XLA's own passes still run, no fast-math either
# way; sampled videos differ by at most 1/255 in ~1 of 16000 values). Tests that time or
# run many steps may ask for more per program (jax.jit(..., compiler_options=...)).
_FAST_COMPILE = '--xla_backend_optimization_level=0'
if _FAST_COMPILE not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {_FAST_COMPILE}'.strip()

# Many tests and their subprocesses compile identical programs (the tiny configs' train
# steps and samplers): one persistent cache for the run, shared by the xdist workers
# (they start after this runs in the controller) and removed at its end.
_CACHE_DIR = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix='ivj_test_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE_DIR

import jax  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')


def pytest_unconfigure(config):
  del config
  if _CACHE_DIR is not None:
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)
