"""Training run -> exported cascade -> samples: the path that ships checkpoints/digits."""

import os
import sys

import jax
import numpy as np
import pytest
from cli_util import run_module

from imagen_video_jax import export, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import digits as digits_config  # noqa: E402


@pytest.fixture(scope='module')
def trained_base(tmp_path_factory):
  root = tmp_path_factory.mktemp('run')
  c = digits_config.get_config('stage=base,tiny=True')
  c.num_steps, c.log_every, c.checkpoint_every_steps, c.sample_every = 3, 1, 3, 0
  c.data.dir = str(root / 'data')
  workdir = str(root / 'base')
  result = training.train_and_evaluate(c, workdir)
  return workdir, result, c.data.dir


def test_export_training_run_and_sample(trained_base, tmp_path):
  workdir, result, data_dir = trained_base
  out = tmp_path / 'cascade'
  res = run_module('export_cascade', f'--run={workdir}', f'--output={out}')
  assert res.returncode == 0, res.stderr[-3000:]
  assert 'Exported base 8x16x16@4fps' in res.stdout
  pipe = export.load_cascade(str(out))
  (stage,) = pipe.stages
  # The exported weights are the run's EMA weights, bit for bit.
  _, ema, step = export.read_training_run(workdir)
  assert step == 3
  jax.tree.map(np.testing.assert_array_equal, stage.params, ema)
  assert not all(
    np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(result.state.params))
  )
  # The exported text encoder is the run's frozen T5: same prompt, same embedding. The
  # reference is what the train step computes: the job's own tokenizer and T5 (make_text).
  prompts = ['a red 3 moving left', 'a white 9', 'a cyan 0 moving up']
  config = digits_config.get_config('stage=base,tiny=True')
  config.data.dir = data_dir
  mesh, _, _ = training.loop.make_mesh(config.mesh)
  tokenize, _, t5_model, t5_params = training.loop.make_text(config, data_dir, mesh)
  tok = tokenize(prompts)
  want = t5_model.apply({'params': t5_params}, tok.ids, tok.mask)
  want = np.where(tok.mask[..., None], np.asarray(want), 0.0)
  emb, mask = pipe.text_encoder(prompts)
  np.testing.assert_array_equal(mask, tok.mask)
  assert mask.sum(1).min() >= 3  # real tokens, not a null caption
  np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-5)
  assert np.abs(emb[0] - emb[1]).max() > 1e-2  # prompts are told apart
  video = pipe(
    'a red 3 moving left',
    progress=False,
    samplers_by_stage={'base': stage.sampler.__class__(steps=2)},
  ).videos
  assert video.shape == (1, 8, 16, 16, 3)
  # The export records the world the run trained on (the default: Moving Digits v2).
  assert pipe.world == {'name': 'digits', 'version': 2}
  # --weights=trained: the optimiser's own weights instead of the EMA.
  raw = tmp_path / 'trained'
  res = run_module('export_cascade', f'--run={workdir}', f'--output={raw}', '--weights=trained')
  assert res.returncode == 0, res.stderr[-3000:]
  jax.tree.map(
    np.testing.assert_array_equal,
    export.load_cascade(str(raw)).stages[0].params,
    jax.device_get(result.state.params),
  )
  # Refusals: the output exists already; a directory that is no run.
  res = run_module('export_cascade', f'--run={workdir}', f'--output={out}')
  assert res.returncode != 0 and 'already holds a cascade' in res.stderr
  with pytest.raises(export.ExportError, match='not a training workdir'):
    export.read_training_run(str(tmp_path))
