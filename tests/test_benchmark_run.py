"""benchmarks/run.py: the dry run end to end, the analytic FLOP count against XLA's, and
the table of device peaks."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from benchmarks import flops as flops_lib
from benchmarks import run as run_lib
from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.models.unet import LevelConfig as L
from imagen_video_jax.models.unet import UNetConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = run_lib.FLOPS_TOLERANCE

# LLVM at -O0: faster compiles; the HLO (what the cost analysis reads) is the same.
_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def test_same_taps_counts_only_taps_inside_the_input():
  assert flops_lib.same_taps(8, 3) == 22  # 3 * 8 - 2
  assert flops_lib.same_taps(8, 3, stride=2) == 11  # 4 outputs, the last one 2 taps
  assert flops_lib.same_taps(5, 1) == 5


@pytest.mark.parametrize(
  'cfg',
  [
    UNetConfig(
      levels=(L(32, 1, spatial_attention=True, temporal='attention', cross_attention=True),),
      text_dim=32,
      emb_dim=32,
      head_dim=16,
    ),
    UNetConfig(
      levels=(L(32, 1, temporal='conv'), L(48, 1, temporal='conv', cross_attention=True)),
      text_dim=32,
      emb_dim=32,
      head_dim=16,
      cond_channels=3,
      cond_augment=True,
    ),
  ],
  ids=['attention', 'temporal_conv'],
)
def test_analytic_flops_match_xla_cost_analysis(cfg):
  """Forward + backward of the U-Net: XLA's count / the analytic one within TOL (XLA also
  counts normalisation, activations and softmax, which the analytic count leaves out)."""
  b, t, h, w, n_text = 2, 4, 8, 8, 6
  params = nn.unbox(
    jax.eval_shape(
      unet_lib.init_fn(cfg, frames=t, height=h, width=w, text_len=n_text, batch=b),
      jax.random.key(0),
    )
  )
  x, _, _, _, fid, cond, cond_logsnr = unet_lib.dummy_inputs(
    cfg, frames=t, height=h, width=w, text_len=n_text, batch=b
  )
  text = jnp.zeros((b, t, n_text, cfg.text_dim))  # per frame, as the train step passes it
  mask = jnp.ones((b, t, n_text), bool)
  model = unet_lib.VideoUNet(cfg)

  def loss(p, x):
    out = model.apply({'params': p}, x, jnp.zeros((b, t)), text, mask, fid, cond, cond_logsnr)
    return jnp.mean(out**2)

  compiled = _jit(jax.grad(loss)).lower(params, x).compile()
  xla = flops_lib.xla_flops(compiled)
  an = flops_lib.unet_flops(cfg, batch=b, frames=t, height=h, width=w, text_len=n_text)
  ratio = xla / an['xla_view']
  assert 1 - TOL <= ratio <= 1 + TOL, (ratio, xla, an)
  # Without remat or scan the step is forward + backward: between 2x and 3x the forward.
  assert 2 * an['forward'] < an['xla_view'] <= 3 * an['forward'] == an['model_train']


def test_peak_flops_table_known_unknown_and_override():
  assert run_lib.peak_flops('NVIDIA H100 80GB HBM3')[0] == 989e12
  assert run_lib.peak_flops('NVIDIA H100 PCIe')[0] == 756e12
  assert run_lib.peak_flops('NVIDIA H200')[0] == 989e12
  assert run_lib.peak_flops('NVIDIA A100-SXM4-80GB')[0] == 312e12
  assert run_lib.peak_flops('TPU v5 lite')[0] == 197e12
  assert run_lib.peak_flops('TPU v5p')[0] == 459e12
  assert run_lib.peak_flops('TPU v6 lite')[0] == 918e12
  peak, note = run_lib.peak_flops('cpu')
  assert peak is None and 'not in the peak table' in note
  assert run_lib.peak_flops('cpu', 1e12) == (1e12, 'from --peak_flops')
  assert run_lib.peak_flops('NVIDIA H100 80GB HBM3', 5e14)[0] == 5e14


@pytest.mark.slow  # a longer end-to-end run: make test-all
def test_dry_run_end_to_end(tmp_path):
  out, md = tmp_path / 'cpu.json', tmp_path / 'table.md'
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  r = subprocess.run(
    [
      sys.executable,
      '-m',
      'benchmarks.run',
      '--suite=cpu',
      f'--output={out}',
      f'--markdown={md}',
    ],  # fmt: skip
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  rows = json.loads(out.read_text())
  assert [row['workload'] for row in rows] == list(run_lib.SUITES['cpu'])
  for row in rows:
    assert row['error'] is None, row
    for key in ('device_kind', 'jax_version', 'dtype', 'batch', 'params'):
      assert row[key], (key, row)
    assert row['step_s'] > 0 and row['compile_s'] > 0 and row['examples_per_s'] > 0
    assert row['model_flops_per_step'] > 0 and row['xla_flops'] > 0
    assert abs(row['xla_to_analytic'] - 1) <= TOL, row
    assert row['flops_check'] == 'ok'
    assert row['mfu'] is None or 0 < row['mfu'] <= 1
    assert row['peak_memory_bytes'] is None or row['peak_memory_bytes'] > 0
  assert rows[-1]['remat'] == 'full' and rows[-1]['scan_blocks'] and rows[-1]['dtype'] == 'bfloat16'
  table = md.read_text().splitlines()
  assert table[0].startswith('| device |') and len(table) == 2 + len(rows)
  assert all(line.startswith(f'| {rows[0]["device_kind"]} |') for line in table[2:])
