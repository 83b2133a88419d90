"""Embedding cache: bit-exact round trip, TextEncoder, and the encode_text CLI."""

import os
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

from imagen_video_jax.models.t5 import T5Config, T5Encoder, init_params
from imagen_video_jax.text import cache, checkpoints
from imagen_video_jax.text.encoder import TextEncoder, read_captions
from imagen_video_jax.text.tokenizer import Tokenizer, train_sentencepiece

CAPTIONS = [
  'a red 3 moving left',
  'a green 7',
  'a blue 0 moving up',
  'a white 9',
  'a cyan 4 moving down',
  'a magenta 2 moving right',
  'a yellow 5',
  'ein gelber 5 — bewegt sich nach links ✓',
  'a red 3 moving left ' * 10,
]


def random_record(rng, length=16, dim=8, n=5, caption='a red 3 — ünïcode ✓'):
  ids = np.zeros(length, np.int32)
  ids[:n] = rng.integers(1, 32000, n)
  mask = ids != 0
  emb = rng.normal(size=(length, dim)).astype(ml_dtypes.bfloat16)
  emb[~mask] = 0
  return caption, ids, emb, mask


def test_record_round_trip_is_bit_exact():
  rng = np.random.default_rng(0)
  caption, ids, emb, mask = random_record(rng)
  emb[0, 0] = np.float32('-0.0')  # sign of zero, subnormals, inf: all bits kept
  emb[1, 1], emb[2, 2] = ml_dtypes.finfo(ml_dtypes.bfloat16).smallest_subnormal, np.inf
  rec = cache.decode_record(cache.encode_record(caption, ids, emb, mask))
  assert rec['caption'] == caption
  assert rec['ids'].dtype == np.int32 and rec['mask'].dtype == bool
  assert rec['emb'].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(rec['ids'], ids)
  np.testing.assert_array_equal(rec['mask'], mask)
  assert rec['emb'].tobytes() == emb.tobytes()


def test_record_validation():
  rng = np.random.default_rng(0)
  caption, ids, emb, mask = random_record(rng)
  with pytest.raises(ValueError, match='bfloat16'):
    cache.encode_record(caption, ids, emb.astype(np.float32), mask)
  with pytest.raises(ValueError, match='Expected ids'):
    cache.encode_record(caption, ids[:3], emb, mask)


def test_writer_and_reader_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  records = [
    random_record(rng, n=int(rng.integers(1, 16)), caption=f'caption {i} ✓') for i in range(7)
  ]
  with cache.CacheWriter(str(tmp_path), len(records), shard_size=3, metadata={'dim': 8}) as w:
    for r in records:
      w.write(*r)
  reader = cache.CacheReader(str(tmp_path))
  assert len(reader) == 7 and len(cache.cache_files(str(tmp_path))) == 3
  assert reader.metadata['dim'] == 8
  for (caption, ids, emb, mask), got in zip(records, reader):
    assert got['caption'] == caption
    assert got['ids'].tobytes() == ids.tobytes()
    assert got['mask'].tobytes() == mask.tobytes()
    assert got['emb'].tobytes() == emb.tobytes()
  assert reader.lookup('caption 5 ✓')['caption'] == 'caption 5 ✓'
  with pytest.raises(KeyError):
    reader.lookup('nope')


def test_unfinished_cache_has_no_metadata(tmp_path):
  rng = np.random.default_rng(2)
  with pytest.raises(RuntimeError):
    with cache.CacheWriter(str(tmp_path), 3) as w:
      w.write(*random_record(rng))
      raise RuntimeError('crash')
  with pytest.raises(FileNotFoundError, match='encode_text'):
    cache.CacheReader(str(tmp_path))


@pytest.fixture(scope='module')
def tiny_t5(tmp_path_factory):
  """A converted tiny T5 with a SentencePiece model trained here."""
  root = tmp_path_factory.mktemp('t5')
  vocab = train_sentencepiece(CAPTIONS * 3, str(root / 'sp.model'), vocab_size=96)
  config = T5Config.from_name('tiny', vocab_size=96)
  params = init_params(config, 7)
  checkpoints.save_t5(str(root / 'tiny'), config, params, vocab=vocab)
  return str(root / 'tiny'), config, params


def test_text_encoder_matches_the_model(tiny_t5):
  path, config, params = tiny_t5
  enc = TextEncoder.load(path, max_length=24)
  emb, mask = enc(CAPTIONS[:3])
  assert emb.shape == (3, 24, config.d_model) and emb.dtype == ml_dtypes.bfloat16
  ids = enc.tokenizer(CAPTIONS[:3], 24).ids
  want = np.asarray(jax.jit(T5Encoder(config).apply)({'params': params}, ids, mask))
  want = np.where(mask[..., None], want, 0).astype(ml_dtypes.bfloat16).astype(np.float32)
  np.testing.assert_allclose(emb.astype(np.float32), want, atol=0.05, rtol=0.05)
  assert not emb[~mask].astype(np.float32).any()


def test_read_captions(tmp_path):
  p = tmp_path / 'c.txt'
  p.write_text('a red 3\n\n  \nün ✓\r\n', encoding='utf-8')
  assert read_captions(str(p)) == ['a red 3', 'ün ✓']
  p.write_bytes(b'\xff\xfe\x00a')
  with pytest.raises(ValueError, match='UTF-8'):
    read_captions(str(p))


def test_encode_text_cli_end_to_end(tiny_t5, tmp_path):
  path, config, params = tiny_t5
  captions = tmp_path / 'captions.txt'
  captions.write_text('\n'.join(CAPTIONS) + '\n', encoding='utf-8')
  out, npy = tmp_path / 'cache', tmp_path / 'first.npy'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=2')
  cmd = [
    sys.executable,
    '-m',
    'imagen_video_jax.encode_text',
    f'--t5={path}',
    f'--captions={captions}',
    f'--output={out}',
    '--batch_size=3',
    '--max_length=16',
    '--shard_size=4',
    f'--print_npy={npy}',
    '--print_count=2',
    '--compute_dtype=float32',
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr
  assert f'Encoded {len(CAPTIONS)} captions on 2 device(s)' in proc.stdout
  assert 'truncated' in proc.stderr and 'caption' in proc.stderr  # warning + tqdm
  reader = cache.CacheReader(str(out))
  assert len(reader) == len(CAPTIONS) and len(cache.cache_files(str(out))) == 3
  assert reader.metadata['t5'] == config.to_dict() and reader.metadata['dtype'] == 'bfloat16'
  tok = Tokenizer(checkpoints.vocab_path(path))
  t = tok(CAPTIONS, 16, warn=False)
  want = np.asarray(jax.jit(T5Encoder(config).apply)({'params': params}, t.ids, t.mask))
  for i, rec in enumerate(reader):
    assert rec['caption'] == CAPTIONS[i]
    np.testing.assert_array_equal(rec['ids'], t.ids[i])
    np.testing.assert_array_equal(rec['mask'], t.mask[i])
    np.testing.assert_allclose(
      rec['emb'].astype(np.float32)[t.mask[i]], want[i][t.mask[i]], atol=0.03, rtol=0.02
    )
  first = np.load(npy)
  assert first.shape == (2, 16, config.d_model) and first.dtype == np.float32
  np.testing.assert_array_equal(first[1], reader[1]['emb'].astype(np.float32))
  # Bad input: a clear message, no traceback.
  bad = subprocess.run(
    cmd[:4] + [f'--captions={tmp_path}/missing.txt', f'--output={tmp_path}/o2'],
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
  assert bad.returncode != 0 and 'missing.txt' in bad.stderr
  assert 'Traceback' not in bad.stderr
