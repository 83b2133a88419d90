"""The shipped Moving Digits judge reads fresh clips right; it reads direction as a person
does in world v2 (where the digit goes) and as the bouncing fit in world v1; its files
round-trip (old ones as v1 judges); the evaluate CLI trains a judge (refusing to replace
one unasked) and reports its accuracy."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from imagen_video_jax.evaluation import judge as J
from imagen_video_jax.evaluation import metrics


@pytest.fixture(scope='module')
def judge():
  return J.load_judge()


def test_shipped_judge_is_98_percent_right_on_fresh_clips(judge):
  # A seed no one trained or measured on; both groups, every attribute.
  acc = J.accuracy(judge, num=150, seed=2_468)
  for group in ('train_combinations', 'held_out_combinations'):
    for attr in ('digit', 'colour', 'direction'):
      assert acc[group][attr] >= 0.98, (group, attr, acc)


def test_judge_is_robust_to_degraded_and_resized_clips(judge):
  videos, truth = J.real_clips(judge.config, 100, 1_357, held_out=False, degrade=True)
  pred = judge.predict(videos).as_tuples()
  assert np.mean([p == t for p, t in zip(pred, truth)]) >= 0.95
  clean, truth = J.real_clips(judge.config, 60, 1_357, held_out=True)
  big = np.repeat(np.repeat(clean, 2, axis=2), 2, axis=3)  # 64x64: resized back inside
  pred = judge.predict(big).as_tuples()
  assert np.mean([p == t for p, t in zip(pred, truth)]) >= 0.95


def test_direction_follows_the_frame_rate(judge):
  # Every other frame of a 8 fps clip is a 4 fps clip: same motion, twice the step.
  videos, truth = J.real_clips(judge.config, 60, 97, held_out=False)
  pred = judge.predict(videos[:, ::2], fps=4.0)
  assert np.mean([p == t[2] for p, t in zip(pred.direction, truth)]) >= 0.95


def _base_view(videos):
  """uint8 clips [N, 16, 32, 32, 3] at 8 fps as the base stage sees them: every other frame
  (4 fps), resized (antialiased) to 16x16, as floats in [0, 1]."""
  from imagen_video_jax.data import pipeline

  return pipeline.resize_frames(videos[:, ::2].astype(np.float32) / 255.0, 16, 16)


@pytest.mark.parametrize('size', ['full', 'base'])
@pytest.mark.parametrize('degrade', [False, True], ids=['clean', 'degraded'])
def test_v2_judge_reads_world_v2_direction(judge, size, degrade):
  # The shipped judge judges world v2 (the default world): fresh clips of a seed no one
  # trained or measured on, at 16x32x32 (8 fps) and at the base stage's 8x16x16 (4 fps),
  # clean or degraded as a sample might be (at the size it is read at).
  assert judge.config.world_version == 2 and not judge.config.bounce
  videos, truth = J.real_clips(judge.config, 200, 8_642, held_out=False)
  assert judge.config.world.world_version == 2
  if size == 'full':
    clips, fps = videos.astype(np.float32) / 255.0, 8.0
  else:
    clips, fps = _base_view(videos), 4.0
  if degrade:
    n, t = clips.shape[:2]
    flat = J.augment(
      clips.reshape(n * t, *clips.shape[2:]), np.random.default_rng(3), judge.config, t
    )
    clips = flat.reshape(clips.shape)
  pred = judge.predict(clips, fps=fps).direction
  assert np.mean([p == t[2] for p, t in zip(pred, truth)]) >= 0.99


def test_speed_is_the_pixels_a_digit_moves_per_frame(judge):
  videos, _ = J.real_clips(judge.config, 50, 4_321, held_out=False)  # 16 frames, 32 px
  one, two = judge.speed(videos[:, :8]), judge.speed(videos[:, ::2])
  # World v2 moves at a constant speed: every other frame is twice the step, clip by clip.
  np.testing.assert_allclose(two, 2 * one, rtol=0.1)
  world = judge.config.world
  lo, hi = (t * world.size / (world.frames - 1) for t in world.travel)
  assert lo * 0.9 < one.min() and one.max() < hi * 1.1
  # At half the size (the base stage's frames), read at the judge's size: the same.
  small = _base_view(videos)  # every other frame, half size, float
  np.testing.assert_allclose(judge.speed(small), two, rtol=0.1, atol=0.1)


def _turning_clip():
  """A red 3 that moves left for 6 frames (against the left wall by the 6th), then turns
  and moves right for 10, ending right of where it began: world v1's "moving left" after a
  bounce, and what a person reads as moving right."""
  from imagen_video_jax.data import digits

  world = digits.DigitsConfig()
  sprite = digits._sprite(np.random.default_rng(0), world, 3, 'red')
  xs = [5.0 - t if t < 6 else t - 5.0 for t in range(world.frames)]  # 5, 4, .., 0, 1, .., 10
  canvas = np.zeros((world.frames, world.size, world.size, 3), np.float32)
  for t, x in enumerate(xs):
    digits._place(canvas[t], sprite, x, 8.0)
  assert xs[-1] > xs[0] and xs.index(0.0) == 5
  return digits._to_uint8(canvas)[None]


def test_v2_judge_reads_where_the_digit_goes_v1_judge_the_bounce(judge):
  clip = _turning_clip()
  v2 = J.Judge(dataclasses.replace(judge.config, bounce=False), judge.params)
  v1 = J.Judge(dataclasses.replace(judge.config, bounce=True), judge.params)
  assert v2.predict(clip, fps=8.0).direction == ['right']
  assert v1.predict(clip, fps=8.0).direction == ['left']
  # The velocity in the features follows the reading (pixels per frame, x then y).
  assert v2.features(clip)[0, -2] > 0 > v1.features(clip)[0, -2]


def test_judge_json_without_bounce_loads_as_a_v1_judge(judge, tmp_path):
  # judge.json files written before JudgeConfig.bounce existed judged the bouncing world.
  judge.save(str(tmp_path / 'old'))
  path = tmp_path / 'old' / J.CONFIG_FILE
  meta = json.loads(path.read_text())
  assert meta['config'].pop('bounce') is False
  path.write_text(json.dumps(meta))
  old = J.load_judge(str(tmp_path / 'old'))
  assert old.config == dataclasses.replace(judge.config, bounce=True)
  assert old.config.world_version == 1 and old.config.world.bounce
  # It measures itself on the bouncing world's clips and reads them as before.
  videos, truth = J.real_clips(old.config, 60, 4_321, held_out=False)
  pred = old.predict(videos).direction
  assert np.mean([p == t[2] for p, t in zip(pred, truth)]) >= 0.95


def test_judge_fd_is_small_between_real_sets_and_grows_with_noise(judge):
  a, _ = J.real_clips(judge.config, 200, 11, held_out=False)
  b, _ = J.real_clips(judge.config, 200, 12, held_out=False)
  fa = judge.features(a)
  assert fa.shape == (200, judge.config.embed + 2)
  rng = np.random.default_rng(0)
  fds = [
    metrics.frechet_distance(
      fa, judge.features(np.clip(b + rng.normal(0, s, b.shape), 0, 255).astype(np.uint8))
    )
    for s in (0, 40, 80)
  ]
  assert fds[0] < fds[1] < fds[2], fds


def test_save_load_round_trip(judge, tmp_path):
  judge.save(str(tmp_path / 'j'))
  again = J.load_judge(str(tmp_path / 'j'))
  assert again.config == judge.config
  videos, _ = J.real_clips(judge.config, 8, 5, held_out=True)
  np.testing.assert_allclose(again.features(videos), judge.features(videos), rtol=1e-5, atol=1e-5)
  with pytest.raises(FileNotFoundError, match='holds no judge'):
    J.load_judge(str(tmp_path / 'empty'))


class _OracleCascade:
  """Stands in for a CascadePipeline of two stages: 'base' renders the world's own clip for
  each prompt at half size and every other frame (4 fps); 'sr' the full clip at 8 fps,
  optionally always in the wrong colour (adherence lost in the last stage)."""

  def __init__(self, wrong_colour=False):
    from types import SimpleNamespace

    self.wrong_colour = wrong_colour
    from imagen_video_jax.diffusion.samplers import SamplerConfig

    self.stages = [
      SimpleNamespace(name='base', fps=4.0, sampler=SamplerConfig()),
      SimpleNamespace(name='sr', fps=8.0, sampler=SamplerConfig()),
    ]

  def stage_rates(self, fps):
    assert fps is None
    return [None, None]

  def __call__(
    self,
    prompts,
    *,
    num_samples=1,
    seed=0,
    samplers_by_stage=None,
    progress=True,
    return_intermediates=False,
    fps=None,
  ):
    from types import SimpleNamespace
    from imagen_video_jax.data import digits

    world, videos, base = digits.DigitsConfig(), [], []
    for i, p in enumerate(prompts):
      d, c, m = digits.parse_caption(p)
      render = lambda colour: digits._render_video(  # noqa: E731
        np.random.default_rng([seed, i]), world, d, colour, m
      )[0]
      right = render(c)
      base.append(right[::2, ::2, ::2])
      videos.append(render('white' if c != 'white' else 'red') if self.wrong_colour else right)
    videos = np.stack(videos)
    return SimpleNamespace(
      videos=videos,
      fps=8.0,
      prompts=list(prompts),
      intermediates={'base': np.stack(base), 'sr': videos} if return_intermediates else None,
    )


def test_evaluate_cascade_reports_adherence_per_group_and_stage(judge):
  report = metrics.evaluate_cascade(
    _OracleCascade(),
    judge,
    num_samples=40,
    seed=3,
    batch_size=16,
    progress=False,
    real_fd_clips=100,
  )
  assert report['stages'] == ['base', 'sr'] and report['fps'] == 8.0
  # Real clips' speed: the world's travel (a fraction of the 32 px frame) over 15 steps.
  world = judge.config.world
  slow, fast = (t * world.size / (world.frames - 1) for t in world.travel)
  lo, hi = report['speed']['ci95']
  assert slow < lo < report['speed']['mean'] < hi < fast
  for group in ('train_combinations', 'held_out_combinations'):
    assert report[group]['num'] == 40 and report[group]['all'] >= 0.95, report[group]
    assert report['by_stage']['sr'][group] == report[group]
    # The half-size, half-rate base output is judged too (resized to the judge's size).
    assert report['by_stage']['base'][group]['all'] >= 0.9, report['by_stage']['base'][group]
  bad = metrics.evaluate_cascade(
    _OracleCascade(wrong_colour=True),
    judge,
    num_samples=20,
    seed=3,
    progress=False,
    real_fd_clips=100,
  )
  assert bad['train_combinations']['colour'] <= 0.05 and bad['held_out_combinations']['all'] <= 0.05
  assert bad['train_combinations']['digit'] >= 0.95
  assert bad['by_stage']['base']['train_combinations']['colour'] >= 0.95  # lost after the base
  assert bad['fd_judge'] > report['fd_judge']


def _cli(*args):
  return subprocess.run(
    [sys.executable, '-m', 'imagen_video_jax.evaluate', '--noprogress', *args],
    capture_output=True,
    text=True,
    timeout=600,
  )


def _files(directory):
  return {p.name: p.read_bytes() for p in sorted(pathlib.Path(directory).iterdir())}


@pytest.fixture(scope='module')
def tiny_judge(tmp_path_factory):
  """A judge trained for 6 steps by the CLI: its directory (near chance on digit and colour,
  so its accuracy depends on which clips it is measured on)."""
  out = str(tmp_path_factory.mktemp('tiny') / 'judge')
  r = _cli(
    '--mode=train_judge', f'--judge={out}', '--judge_steps=6', '--judge_frames=256', '--num_clips=6'
  )
  assert r.returncode == 0, r.stderr[-3000:]
  return out


def test_train_judge_cli_writes_a_loadable_judge_and_refuses_to_replace_it(tiny_judge):
  import jax
  import jax.numpy as jnp

  trained = J.load_judge(tiny_judge)
  config = dataclasses.replace(J.JudgeConfig(), steps=6)
  assert trained.config == config
  init = J._net(config).init(
    jax.random.key(config.seed), jnp.zeros((1, config.crop, config.crop, 3))
  )['params']
  got, fresh = jax.tree_util.tree_leaves(trained.params), jax.tree_util.tree_leaves(init)
  assert len(got) == len(fresh) == 12  # 3 convs, 3 dense layers: kernel and bias each
  for g, f in zip(got, fresh):
    assert np.isfinite(g).all() and np.abs(np.asarray(g) - np.asarray(f)).max() > 1e-4
  # The report it saved is what the library measures on the judge as loaded.
  assert trained.report == {
    'clean': J.accuracy(trained, 6, 12_345),
    'clips_per_group': 6,
    'degraded': J.accuracy(trained, 6, 12_345, degrade=True),
    'clip_seed': 12_345,
  }
  # Training into the same place again is refused before any work, and nothing changes
  # (other settings: a run that went ahead would leave other files).
  before = _files(tiny_judge)
  r = _cli(
    '--mode=train_judge',
    f'--judge={tiny_judge}',
    '--judge_steps=3',
    '--judge_frames=64',
    '--num_clips=2',
  )
  assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
  assert f'{tiny_judge} already holds a judge' in r.stderr, r.stderr[-3000:]
  assert '--overwrite' in r.stderr
  assert _files(tiny_judge) == before


@pytest.mark.parametrize('which', ['shipped', 'tiny'])
def test_judge_accuracy_cli_reports_the_library_accuracy(which, judge, tiny_judge, tmp_path):
  # The shipped judge is near perfect whichever clips it reads; the tiny one is not, so its
  # report shows whether the CLI measured the clips (seed, count) it was asked to.
  out = tmp_path / 'accuracy.json'
  args = [f'--judge={tiny_judge}'] if which == 'tiny' else []
  r = _cli('--mode=judge_accuracy', '--num_clips=16', '--seed=7', f'--output={out}', *args)
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads(out.read_text())
  jd = J.load_judge(tiny_judge) if which == 'tiny' else judge
  assert report == {
    k: J.accuracy(jd, 16, 54_321 + 7, degrade=k == 'degraded') for k in ('clean', 'degraded')
  }
  if which == 'shipped':
    for group in ('train_combinations', 'held_out_combinations'):
      assert min(report['clean'][group]['digit'], report['clean'][group]['colour']) >= 0.95


def test_clip_seed_flag_chooses_the_clips_judge_accuracy_reads(tiny_judge, tmp_path):
  out = tmp_path / 'accuracy.json'
  r = _cli(
    '--mode=judge_accuracy',
    '--num_clips=16',
    '--clip_seed=99',
    f'--judge={tiny_judge}',
    f'--output={out}',
  )
  assert r.returncode == 0, r.stderr[-3000:]
  jd = J.load_judge(tiny_judge)
  assert json.loads(out.read_text()) == {
    k: J.accuracy(jd, 16, 99, degrade=k == 'degraded') for k in ('clean', 'degraded')
  }


def test_judge_bounce_flag_trains_a_v1_judge_measured_on_the_bouncing_world(tmp_path):
  out = str(tmp_path / 'v1')
  r = _cli(
    '--mode=train_judge',
    f'--judge={out}',
    '--judge_bounce',
    '--judge_steps=2',
    '--judge_frames=64',
    '--num_clips=4',
  )
  assert r.returncode == 0, r.stderr[-3000:]
  trained = J.load_judge(out)
  assert trained.config == dataclasses.replace(J.JudgeConfig(), steps=2, bounce=True)
  assert json.loads((tmp_path / 'v1' / J.CONFIG_FILE).read_text())['config']['bounce'] is True
  # Its report was measured on world v1 clips (the direction read by the bouncing fit).
  assert trained.report['clean'] == J.accuracy(trained, 4, 12_345)
