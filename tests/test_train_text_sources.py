"""Training from the paper configs' text sources, then export and sampling.

`text.source='cache'` (every paper config's default) trains on embeddings that
`encode_text` wrote; `text.source='t5'` runs a converted T5 inside the train step. Both
are run here on the tiny digits base stage with a tiny converted T5 of their own (not the
world's built-in random one), exported and sampled.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_util import run_module
from flax import linen as nn

from imagen_video_jax import export, training
from imagen_video_jax.data import prepare
from imagen_video_jax.models import t5 as t5_lib
from imagen_video_jax.text import checkpoints as t5_checkpoints
from imagen_video_jax.text.encoder import TextEncoder
from imagen_video_jax.training import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import digits as digits_config  # noqa: E402

STEPS = 3
LENGTH = 10  # the digits configs' text.max_length
PROMPTS = ['a red 3 moving left', 'a white 9', 'a cyan 0 moving up']


def _t5(seed):
  """A tiny T5 v1.1 of the tiny configs' width (text.d_model 32)."""
  cfg = t5_lib.T5Config(vocab_size=128, d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64)
  return cfg, nn.unbox(t5_lib.init_params(cfg, seed))


def _config(root, source, **text):
  c = digits_config.get_config('stage=base,tiny=True')
  c.num_steps, c.log_every, c.checkpoint_every_steps = STEPS, 1, STEPS
  c.data.dir = str(root / 'data')
  c.text.source = source
  c.text.update(text)
  return c


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
  """The world's data, a converted T5 (seed 5) and a cache of every caption it encoded."""
  root = tmp_path_factory.mktemp('text_sources')
  data_dir = prepare.prepare_digits(_config(root, 't5_random'), str(root / 'unused'))
  vocab = os.path.join(data_dir, t5_checkpoints.VOCAB_FILE)
  for name, seed in (('t5', 5), ('other_t5', 6)):  # what `convert_t5` writes
    t5_checkpoints.save_t5(str(root / name), *_t5(seed), vocab=vocab)
  captions = root / 'captions.txt'
  captions.write_text('\n'.join(prepare.digits_captions()) + '\n')
  res = run_module(
    'encode_text',
    f'--t5={root / "t5"}',
    f'--captions={captions}',
    f'--output={root / "cache"}',
    f'--max_length={LENGTH}',
    '--noprogress',
  )
  assert res.returncode == 0, res.stderr[-3000:]
  return root


@pytest.fixture(scope='module')
def runs(sources):
  root = sources
  t5 = _config(root, 't5', t5_dir=str(root / 't5'))
  cache = _config(root, 'cache', cache_dir=str(root / 'cache'))
  return {
    name: (c, str(root / name / 'run'), training.train_and_evaluate(c, str(root / name / 'run')))
    for name, c in (('t5', t5), ('cache', cache))
  }


def _first_batch_text(config, root):
  """The text the train step sees for the first batch: step.encode_text on the job's data."""
  mesh, _, _ = training.loop.make_mesh(config.mesh)
  data_dir = str(root / 'data')
  tokenizer, embedder, model, params = training.loop.make_text(config, data_dir, mesh)
  spec = training.loop.validate(config).spec
  batch = next(iter(training.loop.make_data(config, spec, data_dir, tokenizer, embedder)))
  batch = {k: jnp.asarray(v) for k, v in batch.items() if k != 'captions'}
  return step_lib.encode_text(batch, model, params)


def test_the_cache_and_the_t5_it_came_from_train_alike(runs, sources):
  (c_t5, _, t5), (c_cache, _, cache) = runs['t5'], runs['cache']
  assert t5.step == cache.step == STEPS
  # Batch for batch, the step reads the same text from the cache as from the T5 itself,
  # up to the cache's bfloat16 rounding ...
  emb_t5, mask_t5 = _first_batch_text(c_t5, sources)
  emb_cache, mask_cache = _first_batch_text(c_cache, sources)
  np.testing.assert_array_equal(mask_cache, mask_t5)
  assert int(mask_t5.sum()) > 0
  scale = float(jnp.abs(emb_t5).max())
  np.testing.assert_allclose(emb_cache, emb_t5, rtol=0, atol=scale * 2.0**-7)
  # ... and the two runs' losses agree as closely.
  a, b = (np.array([h['loss'] for h in r.history]) for r in (t5, cache))
  assert np.all(np.isfinite(a)) and len(a) == STEPS
  np.testing.assert_allclose(b, a, rtol=1e-2)


def test_a_t5_run_exports_its_t5_and_samples(runs, sources, tmp_path):
  config, workdir, _ = runs['t5']
  out = tmp_path / 'cascade'
  res = run_module('export_cascade', f'--run={workdir}', f'--output={out}')
  assert res.returncode == 0, res.stderr[-3000:]
  pipe = export.load_cascade(str(out))
  # The cascade's encoder is the run's T5 and vocabulary: same prompt, same embedding.
  want, want_mask = TextEncoder.load(config.text.t5_dir, max_length=LENGTH, out_dtype=jnp.float32)(
    PROMPTS
  )
  emb, mask = pipe.text_encoder(PROMPTS)
  np.testing.assert_array_equal(mask, want_mask)
  np.testing.assert_array_equal(emb, want)
  _, want_params = _t5(5)
  _, got_params = t5_checkpoints.load_t5(str(out / 'text'))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(got_params), want_params)
  _sample(pipe)


def test_a_cache_run_exports_the_t5_that_made_the_cache(runs, sources, tmp_path):
  config, workdir, _ = runs['cache']
  root = sources
  with pytest.raises(export.ExportError, match='pass --t5=DIR'):
    export.export_training_runs([workdir], str(tmp_path / 'none'))
  with pytest.raises(export.ExportError, match='is not the T5 that made the cache'):
    export.export_training_runs([workdir], str(tmp_path / 'wrong'), t5_dir=str(root / 'other_t5'))
  out = tmp_path / 'cascade'
  res = run_module('export_cascade', f'--run={workdir}', f'--output={out}', f'--t5={root / "t5"}')
  assert res.returncode == 0, res.stderr[-3000:]
  pipe = export.load_cascade(str(out))
  # Sampling reads prompts as training read the cache: the cached embedding, unrounded.
  from imagen_video_jax.text.cache import CacheReader

  reader = CacheReader(config.text.cache_dir)
  emb, mask = pipe.text_encoder(PROMPTS)
  for i, prompt in enumerate(PROMPTS):
    rec = reader.lookup(prompt)
    np.testing.assert_array_equal(mask[i], rec['mask'])
    cached = rec['emb'].astype(np.float32)
    np.testing.assert_allclose(emb[i], cached, rtol=0, atol=np.abs(cached).max() * 2.0**-7)
  # The command-line refusal is one line.
  res = run_module('export_cascade', f'--run={workdir}', f'--output={tmp_path / "cli_none"}')
  assert res.returncode != 0 and 'pass --t5=DIR' in res.stderr
  assert 'Traceback' not in res.stderr
  _sample(pipe)


def _sample(pipe):
  (stage,) = pipe.stages
  fewer = {'base': stage.sampler.__class__(steps=2)}
  a = pipe(PROMPTS[:2], seed=1, progress=False, samplers_by_stage=fewer).videos
  assert a.shape == (2, 8, 16, 16, 3)
  b = pipe(PROMPTS[:2], seed=1, progress=False, samplers_by_stage=fewer).videos
  np.testing.assert_array_equal(a, b)
