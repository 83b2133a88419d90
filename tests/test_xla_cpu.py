"""The XLA CPU flag set at import: when it is set, and that XLA takes it without changing results."""

import json
import os
import subprocess
import sys

from imagen_video_jax import _xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = f'--{_xla_cpu.OPTION}={_xla_cpu.VALUE}'


def test_the_flag_is_added_to_the_users_flags():
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=1 --xla_cpu_enable_fast_math=false'}
  assert _xla_cpu.apply(env, jaxlib_version='0.10.2')
  assert env['XLA_FLAGS'].endswith(f'--xla_cpu_enable_fast_math=false {FLAG}')
  empty = {}
  assert _xla_cpu.apply(empty, jaxlib_version='0.10.2') and empty['XLA_FLAGS'] == FLAG


def test_the_users_choice_an_opt_out_and_an_untested_jaxlib_are_left_alone():
  own = {'XLA_FLAGS': f'--{_xla_cpu.OPTION}=dot'}
  assert not _xla_cpu.apply(own, jaxlib_version='0.10.2')
  assert own == {'XLA_FLAGS': f'--{_xla_cpu.OPTION}=dot'}
  opted_out = {_xla_cpu.OPT_OUT: '0'}
  assert not _xla_cpu.apply(opted_out, jaxlib_version='0.10.2') and 'XLA_FLAGS' not in opted_out
  # a CPU split into fake devices (sharded programs failed to compile with it)
  fake = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  assert not _xla_cpu.apply(fake, jaxlib_version='0.10.2')
  assert fake == {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  # XLA aborts on a flag it does not know: another jaxlib gets nothing
  other = {}
  assert not _xla_cpu.apply(other, jaxlib_version='0.11.0') and 'XLA_FLAGS' not in other


_PROGRAM = """
import json, os, sys
import imagen_video_jax
import jax, jax.numpy as jnp
from jax import lax

def loss(x, w):
  y = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.sum(jnp.sin(y))

x = jax.random.normal(jax.random.key(0), (64, 16, 16, 32))
w = jax.random.normal(jax.random.key(1), (3, 3, 32, 32)) * 0.1
grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
gx, gw = grad(x, w)
hlo = grad.lower(x, w).compile().as_text()
ynn = sum('__ynn_fusion' in line for line in hlo.splitlines())  # library fusions (the convs)
print(json.dumps(dict(flags=os.environ.get('XLA_FLAGS', ''), ynn=ynn,
                      gx=gx.ravel()[:256].tolist(), gw=gw.ravel()[:256].tolist())))
"""


def _run(extra_env):
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', _xla_cpu.OPT_OUT)}
  env.update(extra_env, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  out = subprocess.run(
    [sys.executable, '-c', _PROGRAM], env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_xla_accepts_the_flag_and_computes_the_same_gradients():
  import numpy as np

  on = _run({})
  off = _run({_xla_cpu.OPT_OUT: '0'})
  assert FLAG in on['flags'] and FLAG not in off['flags']
  # it takes effect: the three convolutions (forward, input and kernel gradients) leave YNNPACK
  assert off['ynn'] >= 3 and on['ynn'] == 0, (on['ynn'], off['ynn'])
  # the same numbers up to float32 summation order (the kernel gradient sums 16384 terms)
  for name in ('gx', 'gw'):
    scale = np.max(np.abs(off[name]))
    np.testing.assert_allclose(on[name], off[name], rtol=0, atol=1e-5 * scale)
