"""Training jobs: exact resume, preemption by SIGTERM, non-finite steps, config checks,
warm start from trained weights (`config.init_from`).

All runs use the tiny base stage of configs/digits.py and one shared Moving Digits
data directory; compiled steps are shared by the in-process runs (training.loop caches
them), and the subprocesses share a persistent compilation cache.
"""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import linen as nn

from imagen_video_jax import export, params_io, training
from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.models.unet import LevelConfig, UNetConfig
from imagen_video_jax.training import checkpointing, state as state_lib, warm_start
from imagen_video_jax.training import loop as loop_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import digits as digits_config  # noqa: E402

import distributed_util  # noqa: E402
from cli_util import job_env, preempt  # noqa: E402

STEPS = 20
# The run's persistent XLA cache (conftest.py): a subprocess here loads the executables
# the in-process runs compiled (identical programs).
XLA_CACHE = os.environ['JAX_COMPILATION_CACHE_DIR']


def tiny_config(data_dir, **overrides):
  c = digits_config.get_config('stage=base,tiny=True')
  c.num_steps = STEPS
  c.log_every = 1
  c.checkpoint_every_steps = 10
  c.data.dir = data_dir
  return distributed_util.override(c, overrides)


def leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def assert_states_equal(a, b):
  assert int(a.step) == int(b.step)
  assert leaves_equal(a.params, b.params), 'params differ'
  assert leaves_equal(a.ema_params, b.ema_params), 'EMA params differ'
  assert leaves_equal(a.opt_state, b.opt_state), 'optimizer state differs'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('train') / 'digits_data')


@pytest.fixture(scope='module')
def straight(data_dir, tmp_path_factory):
  """20 steps in one go (the reference of the resume and preemption tests)."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  return workdir, training.train_and_evaluate(tiny_config(data_dir), workdir)


def test_resume_is_exact_and_runs_are_deterministic(straight, data_dir, tmp_path):
  _, ref = straight
  assert ref.step == STEPS and not ref.preempted
  first = training.train_and_evaluate(tiny_config(data_dir, num_steps=10), str(tmp_path))
  assert first.step == 10
  resumed = training.train_and_evaluate(tiny_config(data_dir), str(tmp_path))
  assert_states_equal(resumed.state, ref.state)
  assert resumed.data_state == ref.data_state  # data order included
  # Same seed, same losses, step for step (including across the restart).
  losses = [h['loss'] for h in first.history + resumed.history]
  assert losses == [h['loss'] for h in ref.history]
  assert len(losses) == STEPS and all(np.isfinite(losses))
  assert sorted(checkpointing.Checkpointer(str(tmp_path)).all_steps()) == [10, 20]


def test_config_mismatch_is_refused_naming_fields(straight, data_dir):
  workdir, _ = straight
  bad = tiny_config(data_dir, **{'model.emb_dim': 48, 'optim.lr': 0.5, 'num_steps': 40})
  with pytest.raises(training.ConfigMismatchError) as e:
    training.train_and_evaluate(bad, workdir)
  msg = str(e.value)
  assert 'model.emb_dim: checkpoint 32, now 48' in msg and 'optim.lr' in msg
  assert 'num_steps' not in msg  # may change on resume


def test_nonfinite_steps_are_skipped_counted_and_stop_the_job(data_dir, tmp_path):
  workdir = str(tmp_path)
  # (also: time-based checkpoints, here every step, and keep_checkpoints)
  run = training.train_and_evaluate(
    tiny_config(
      data_dir, num_steps=5, debug_nan_steps=(3,), checkpoint_every_secs=1e-6, keep_checkpoints=4
    ),
    workdir,
  )
  assert checkpointing.Checkpointer(workdir).all_steps() == [2, 3, 4, 5]
  by_step = {h['step']: h for h in run.history}
  assert np.isnan(by_step[3]['loss']) and by_step[3]['nonfinite'] == 1
  assert by_step[5]['nonfinite_total'] == 1 and by_step[5]['nonfinite_in_a_row'] == 0
  assert np.isfinite(by_step[4]['loss'])
  assert checkpointing._all_finite(run.state)

  cfg = tiny_config(
    data_dir,
    num_steps=20,
    debug_nan_steps=(7, 8, 9, 10),
    max_nonfinite_in_a_row=3,
    checkpoint_every_steps=2,
  )
  with pytest.raises(training.NonFiniteError, match='3 steps in a row.*steps 7-9') as e:
    training.train_and_evaluate(cfg, workdir)
  assert 'last checkpoint (step 8) is finite' in str(e.value)
  ckpt = checkpointing.Checkpointer(workdir)
  assert ckpt.latest_step() == 8
  # Restore without a template: every saved array must be finite.
  restored = ckpt.manager.restore(
    8, args=checkpointing.ocp.args.Composite(state=checkpointing.ocp.args.StandardRestore())
  )['state']
  assert all(
    np.all(np.isfinite(np.asarray(x)))
    for x in jax.tree.leaves(restored)
    if np.issubdtype(np.asarray(x).dtype, np.floating)
  )
  assert int(restored['nonfinite_total']) == 3  # step 3, then 7 and 8
  ckpt.close()


def _cmd(workdir, data_dir, *extra):
  return [
    sys.executable,
    '-m',
    'imagen_video_jax.train',
    '--config=configs/digits.py:stage=base,tiny=True',
    f'--workdir={workdir}',
    f'--config.num_steps={STEPS}',
    '--config.log_every=1',
    '--config.checkpoint_every_steps=10',
    f'--config.data.dir={data_dir}',
    *extra,
  ]


def _env(cache_dir):
  return job_env(cache_dir, ROOT)


def test_sigterm_saves_exits_zero_and_resumes_exactly(straight, data_dir, tmp_path):
  _, ref = straight
  workdir, env = str(tmp_path / 'run'), _env(XLA_CACHE)
  code, out = preempt(
    _cmd(workdir, data_dir, '--config.debug_sleep_secs=0.3'), 'step 3/', cwd=ROOT, env=env
  )
  assert code == 0, out
  saved = [l for l in out.splitlines() if l.startswith('Preempted: saved step')]
  assert saved, out
  k = int(saved[0].split()[3].rstrip(';'))
  assert 3 <= k < STEPS
  assert checkpointing.Checkpointer(workdir).latest_step() == k

  done = subprocess.run(
    _cmd(workdir, data_dir), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stdout + done.stderr
  assert 'Resumed from' in done.stdout and f'at step {k}.' in done.stdout
  assert f'step {k + 1}/{STEPS}' in done.stdout

  ckpt = checkpointing.Checkpointer(workdir)
  assert ckpt.latest_step() == STEPS
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), ref.state
  )
  assert_states_equal(ckpt.restore(STEPS, abstract), ref.state)
  ckpt.close()

  # A user error (a different config in this workdir): one line, exit 1, no traceback.
  bad = subprocess.run(
    _cmd(workdir, data_dir, '--config.optim.lr=0.5'),
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode == 1
  assert 'Traceback' not in bad.stderr and 'optim.lr: checkpoint 0.001, now 0.5' in bad.stderr


def test_time_budget_saves_stops_and_resumes_exactly(straight, data_dir, tmp_path):
  _, ref = straight
  cut = training.train_and_evaluate(
    tiny_config(data_dir, stop_after_secs=1.0, debug_sleep_secs=0.25), str(tmp_path)
  )
  assert cut.preempted and 1 <= cut.step < STEPS  # 0.25 s a step: about 4 steps fit
  assert checkpointing.Checkpointer(str(tmp_path)).latest_step() == cut.step
  rest = training.train_and_evaluate(tiny_config(data_dir), str(tmp_path))
  assert not rest.preempted
  assert_states_equal(rest.state, ref.state)


def test_fields_added_since_a_run_was_saved_resume_at_their_defaults():
  from imagen_video_jax.training.checkpointing import config_differences

  saved = {'model': {'emb_dim': 32}, 'optim': {'lr': 1e-3}}  # a run from before remat existed
  now = {'model': {'emb_dim': 32, 'remat': 'none', 'scan_blocks': False}, 'optim': {'lr': 1e-3}}
  assert config_differences(saved, now) == []
  now['model']['scan_blocks'] = True  # not what the old run had: its params' layout differs
  assert config_differences(saved, now) == ['model.scan_blocks: checkpoint "<absent>", now true']
  now['model'].update(scan_blocks=False, remat='full')  # remat may change on resume
  assert config_differences(saved, now) == []


# ------------------------------------------------------------------------ warm start
# The warm-started runs take one step, whose learning rate is 0 (linear warm-up from 0),
# so their params equal the source's EMA exactly if and only if the weights were loaded.


def _flat(tree):
  return params_io.flatten_params(jax.device_get(tree))


def _assert_trees_equal(a, b):
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


@pytest.mark.parametrize('source', ['workdir', 'cascade'])
def test_a_new_run_starts_from_the_trained_ema(straight, data_dir, tmp_path, source):
  src_dir, ref = straight
  if source == 'cascade':  # what a user fine-tunes from: an exported cascade directory
    src_dir = export.export_training_runs([src_dir], str(tmp_path / 'cascade'))
  run = training.train_and_evaluate(
    tiny_config(data_dir, num_steps=1, init_from=src_dir), str(tmp_path / 'run')
  )
  assert run.step == 1
  _assert_trees_equal(run.state.params, ref.state.ema_params)
  for a, b in zip(jax.tree.leaves(run.state.ema_params), jax.tree.leaves(ref.state.ema_params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  # The optimizer is new: Adam's step count restarted (one update, not 21).
  counts = [int(x) for x in jax.tree.leaves(run.state.opt_state) if np.ndim(x) == 0]
  assert counts and max(counts) == 1


def test_a_warm_start_keeps_its_ema_at_the_configured_decay(straight, data_dir, tmp_path):
  """The EMA of a warm start begins as trained weights: the first update moves it by
  (1 - ema_decay) toward the new params, not by the warm-up's 90% (which would throw the
  shipped EMA away at step 1 and keep a window of ~n/9 steps for thousands of steps)."""
  src_dir, ref = straight
  # A run from random weights with the same config first: its compiled step (EMA with
  # warm-up) must not be reused by the warm start, whose config differs only in init_from.
  training.train_and_evaluate(
    tiny_config(data_dir, num_steps=1, **{'optim.warmup_steps': 0}), str(tmp_path / 'random')
  )
  run = training.train_and_evaluate(
    tiny_config(data_dir, num_steps=1, init_from=src_dir, **{'optim.warmup_steps': 0}),
    str(tmp_path / 'run'),
  )
  src, p1, ema = _flat(ref.state.ema_params), _flat(run.state.params), _flat(run.state.ema_params)
  assert any(not np.array_equal(p1[k], src[k]) for k in p1)  # the step did move the params
  d = float(tiny_config(data_dir).optim.ema_decay)
  for k in ema:
    np.testing.assert_allclose(
      ema[k], d * src[k] + (1 - d) * p1[k], rtol=1e-5, atol=1e-7, err_msg=k
    )


def test_a_warm_start_resumed_without_init_from_keeps_its_ema_decay(
  straight, data_dir, tmp_path, monkeypatch
):
  """init_from may go once a run has begun; the run stays a warm start (no EMA warm-up)."""
  src_dir, _ = straight
  cfg = lambda n, **kw: tiny_config(data_dir, num_steps=n, **{'optim.warmup_steps': 0}, **kw)
  ref = training.train_and_evaluate(cfg(2, init_from=src_dir), str(tmp_path / 'ref'))
  training.train_and_evaluate(cfg(1, init_from=src_dir), str(tmp_path / 'run'))
  monkeypatch.setattr(loop_lib, '_CACHE', {})  # as a new process would: compile afresh
  resumed = training.train_and_evaluate(cfg(2), str(tmp_path / 'run'))
  assert_states_equal(resumed.state, ref.state)
  # ... and its checkpoints still say where it started.
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'run'))
  assert ckpt.saved_config(2)['init_from'] == src_dir
  ckpt.close()


def test_ema_warm_up_only_for_runs_from_random_weights():
  ema, params = {'w': jnp.zeros(3)}, {'w': jnp.ones(3)}
  n = jnp.asarray(0)
  # From a random init the first update is dominated by the params: decay 1/10 at n=0 ...
  np.testing.assert_allclose(state_lib.ema_update(ema, params, 0.999, n)['w'], 0.9)
  np.testing.assert_allclose(
    state_lib.ema_update(ema, params, 0.999, jnp.asarray(90))['w'], 1 - 91 / 100, rtol=1e-5
  )
  # ... and the configured decay once (1 + n) / (10 + n) exceeds it, or with warmup off.
  np.testing.assert_allclose(state_lib.ema_update(ema, params, 0.5, jnp.asarray(90))['w'], 0.5)
  np.testing.assert_allclose(
    state_lib.ema_update(ema, params, 0.999, n, warmup=False)['w'], 1e-3, rtol=1e-4
  )


def test_without_init_from_the_weights_are_random(straight, data_dir, tmp_path):
  _, ref = straight
  run = training.train_and_evaluate(tiny_config(data_dir, num_steps=1), str(tmp_path))
  a, b = _flat(run.state.params), _flat(ref.state.ema_params)
  assert any(not np.array_equal(a[k], b[k]) for k in a)


def test_a_run_that_has_begun_resumes_from_its_own_checkpoint(
  straight, data_dir, tmp_path, monkeypatch
):
  """init_from is read at step 0 only: a begun run resumes exactly as if it were absent."""
  src_dir, _ = straight
  ref = training.train_and_evaluate(tiny_config(data_dir, num_steps=3), str(tmp_path / 'ref'))
  training.train_and_evaluate(tiny_config(data_dir, num_steps=2), str(tmp_path / 'run'))
  monkeypatch.setattr(loop_lib, '_CACHE', {})  # as a new process would: compile afresh
  again = training.train_and_evaluate(
    tiny_config(data_dir, num_steps=3, init_from=src_dir), str(tmp_path / 'run')
  )
  assert again.step == 3
  # Neither the weights (params, EMA) nor the EMA's warm-up came from init_from.
  assert_states_equal(again.state, ref.state)


def test_weights_of_another_model_are_refused_naming_the_misfit(straight, data_dir, tmp_path):
  src_dir, _ = straight
  with pytest.raises(training.ConfigError) as e:
    training.train_and_evaluate(
      tiny_config(data_dir, num_steps=1, init_from=src_dir, **{'model.emb_dim': 48}),
      str(tmp_path / 'run'),
    )
  msg = str(e.value)
  assert 'does not fit' in msg and 'has shape' in msg and 'emb' in msg
  assert not os.path.isdir(tmp_path / 'run' / 'checkpoints' / '1')  # nothing was trained
  with pytest.raises(training.ConfigError, match='neither an exported cascade'):
    training.train_and_evaluate(
      tiny_config(data_dir, num_steps=1, init_from=str(tmp_path)), str(tmp_path / 'run2')
    )


def test_a_scanned_run_starts_from_unscanned_weights():
  cfg = UNetConfig(
    levels=(LevelConfig(8, 3, temporal='conv'), LevelConfig(16, 2, temporal='attention')),
    emb_dim=16,
    head_dim=8,
  )
  init = jax.jit(lambda k: nn.unbox(unet_lib.init_params(cfg, k, frames=2, height=8, width=8)))
  params = jax.device_get(init(jax.random.key(0)))  # jitted: eager init compiles op by op
  scanned_cfg = dataclasses.replace(cfg, scan_blocks=True)
  abstract = nn.unbox(
    jax.eval_shape(
      lambda k: unet_lib.init_params(scanned_cfg, k, frames=2, height=8, width=8), jax.random.key(0)
    )
  )
  fitted = warm_start.fit_params(params, False, abstract, scanned_cfg, 'test')
  _assert_trees_equal(fitted, unet_lib.scan_params(params, scanned_cfg))
  assert 'down0_blocks' in fitted and 'down0_block0' not in fitted
  # ... and back: an unscanned run from scanned weights.
  back = warm_start.fit_params(fitted, True, jax.eval_shape(lambda: params), cfg, 'test')
  _assert_trees_equal(back, params)


_PREPARE = r"""
import sys
sys.path.insert(0, sys.argv[1])
from configs import digits
from imagen_video_jax.data import prepare
c = digits.get_config('stage=base,tiny=True')
c.data.dir = sys.argv[2]
print(prepare.prepare_digits(c, sys.argv[3]))
"""


def test_stages_that_start_together_share_one_world(tmp_path):
  """The three stages of a cascade (launch/digits_cascade.sh) may make the world at once."""
  data = tmp_path / 'data'
  procs = [
    subprocess.Popen(
      [sys.executable, '-c', _PREPARE, ROOT, str(data), str(tmp_path / w)],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for w in ('base', 'tsr')
  ]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    assert out.strip().endswith(str(data))
  assert sorted(os.listdir(tmp_path)) == ['data']  # no half-made world left behind
  assert os.path.isfile(data / 'dataset_info.json') and os.path.isfile(data / 'spiece.model')


def test_sample_videos_come_from_the_cascade_sampler_at_the_stage_fps(
  data_dir, tmp_path, monkeypatch
):
  """Training's sample videos are `sampling.sample_stage` (what CascadePipeline runs) on
  the EMA weights, written at the stage's frame rate: `config.fps` when the config sets
  one (the paper configs), not the digits world's 8 fps / frame_stride."""
  from imagen_video_jax import sampling
  from imagen_video_jax.training import metrics as metrics_lib

  sampled, written = [], {}
  real_sample, real_video = sampling.sample_stage, metrics_lib.MetricWriter.video

  def spy_sample(stage, *args, **kwargs):
    sampled.append(stage)
    return real_sample(stage, *args, **kwargs)

  def spy_video(self, step, tag, videos, fps=8.0, below=None):
    written[step] = (np.asarray(videos), fps)
    return real_video(self, step, tag, videos, fps=fps, below=below)

  monkeypatch.setattr(sampling, 'sample_stage', spy_sample)
  monkeypatch.setattr(metrics_lib.MetricWriter, 'video', spy_video)
  c = tiny_config(data_dir, num_steps=2, sample_every=2, **{'sample.num': 1, 'sample.steps': 2})
  c.fps = 6.0
  training.train_and_evaluate(c, str(tmp_path))
  assert [s.name for s in sampled] == ['base'] and sampled[0].fps == 6.0
  videos, fps = written[2]
  assert fps == 6.0 and videos.shape == (1, 8, 16, 16, 3)
  assert np.isfinite(videos).all() and np.abs(videos).max() <= 1.0 and videos.std() > 0
