"""Checkpoint plumbing: sharded loading, lazy slicing, pickle refusal, CLI errors."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from imagen_video_jax import parallel
from imagen_video_jax.models.t5 import T5Config, init_params
from imagen_video_jax.text import checkpoints

ENV = dict(os.environ, HF_HUB_OFFLINE='1', JAX_PLATFORMS='cpu')


def run_convert(*args):
  return subprocess.run(
    [sys.executable, '-m', 'imagen_video_jax.convert_t5', *args],
    capture_output=True,
    text=True,
    timeout=300,
    env=ENV,
  )


class FakeMesh:
  def __init__(self, shape):
    self.shape = shape


def test_fit_drops_missing_and_non_dividing_axes():
  mesh = FakeMesh({'data': 2, 'fsdp': 4, 'tensor': 4})
  assert parallel._fit(P('fsdp', 'tensor', None), (64, 6, 16), mesh) == P('fsdp', None, None)
  assert parallel._fit(
    P(
      ('data', 'fsdp'),
    ),
    (8,),
    mesh,
  ) == P(('data', 'fsdp'))
  assert parallel._fit(
    P(
      ('data', 'fsdp'),
    ),
    (6,),
    mesh,
  ) == P('data')
  assert parallel._fit(P('tensor', 'fsdp'), (32, 64), FakeMesh({'data': 8})) == P(None, None)


@pytest.mark.parametrize('transpose', [False, True])
@pytest.mark.parametrize('split', [None, 'last', 'first'])
def test_lazy_slices_match_the_full_array(transpose, split):
  rng = np.random.default_rng(0)
  full_src = rng.normal(size=(12, 20)).astype(np.float32)
  reads = []

  def read(idx):
    reads.append(idx)
    return full_src[idx]

  m = checkpoints._Mapped(
    checkpoints._Tensor('w', full_src.shape, read), transpose=transpose, split=split, d_kv=4
  )
  dense = full_src.T if transpose else full_src
  want = {
    'last': lambda a: a.reshape(a.shape[0], -1, 4),
    'first': lambda a: a.reshape(-1, 4, a.shape[-1]),
    None: lambda a: a,
  }[split](dense)
  assert m.shape == want.shape
  for index in [
    (slice(None),) * want.ndim,
    tuple(slice(1, n // 2 + 1) for n in want.shape),
    tuple(slice(n // 2, n) for n in want.shape),
  ]:
    np.testing.assert_array_equal(m[index], want[index])
  # A shard reads a slice, never the whole source.
  assert any(np.prod([s.stop - s.start for s in r]) < full_src.size for r in reads)


def test_pickles_are_refused_with_a_clear_message(tmp_path):
  (tmp_path / 'pytorch_model.bin').write_bytes(b'\x80\x04 not even read')
  (tmp_path / 'config.json').write_text('{}')
  for source in (tmp_path, tmp_path / 'pytorch_model.bin'):
    proc = run_convert(f'--source={source}', f'--output={tmp_path}/out')
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    assert 'pytorch_model.bin' in proc.stderr and 'safetensors' in proc.stderr
    assert 'save_pretrained' in proc.stderr
  (tmp_path / 'config.json').unlink()
  (tmp_path / 'model.pt').write_bytes(b'x')
  with pytest.raises(checkpoints.CheckpointError, match='Refusing.*model.pt'):
    checkpoints.load_source(str(tmp_path))


def test_cli_usage_and_missing_source(tmp_path):
  proc = run_convert(f'--output={tmp_path}/out')
  assert proc.returncode != 0 and '--source and --output are required' in proc.stderr
  proc = run_convert(f'--source={tmp_path}/nope', f'--output={tmp_path}/out')
  assert proc.returncode != 0 and 'does not exist' in proc.stderr
  assert 'Traceback' not in proc.stderr
  (tmp_path / 'empty').mkdir()
  with pytest.raises(checkpoints.CheckpointError, match='neither a Hugging Face'):
    checkpoints.load_source(str(tmp_path / 'empty'))


def test_missing_config_file_is_explained(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match='convert_t5'):
    checkpoints.load_t5(str(tmp_path))


def test_loading_into_a_sharded_mesh(tmp_path):
  """Orbax restore into ('data', 'fsdp', 'tensor') shardings on 4 fake devices."""
  config = T5Config.from_name('tiny', vocab_size=64)
  checkpoints.save_t5(str(tmp_path / 't5'), config, init_params(config, 1))
  script = textwrap.dedent(f"""
      import os
      os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
      import jax, numpy as np
      from jax.sharding import Mesh
      from imagen_video_jax.models.t5 import T5Encoder, init_params
      from imagen_video_jax.text import checkpoints
      mesh = Mesh(np.array(jax.devices()).reshape(1, 2, 2), ('data', 'fsdp', 'tensor'))
      config, params = checkpoints.load_t5({str(tmp_path / 't5')!r}, mesh=mesh)
      q = params['layers_0']['attention']['query']['kernel']
      print('SPEC', tuple(q.sharding.spec), len(q.addressable_shards[0].data.reshape(-1)))
      ref = init_params(config, 1)
      jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
                   params, ref)
      ids = np.array([[5, 6, 7, 1], [9, 1, 0, 0]], np.int32)
      out = jax.jit(lambda p, i: T5Encoder(config).apply({{'params': p}}, i, i > 0))(
          params, ids)
      want = T5Encoder(config).apply({{'params': ref}}, ids, ids > 0)
      print('MAXDIFF', float(np.abs(np.asarray(out) - np.asarray(want)).max()))
  """)
  proc = subprocess.run(
    [sys.executable, '-c', script], capture_output=True, text=True, timeout=300, env=ENV
  )
  assert proc.returncode == 0, proc.stderr
  assert "SPEC ('fsdp', 'tensor', None)" in proc.stdout
  q_size = config.d_model * config.num_heads * config.d_kv
  assert f' {q_size // 4}\n' in proc.stdout  # each device holds a quarter
  assert float(proc.stdout.split('MAXDIFF')[1]) < 1e-5
