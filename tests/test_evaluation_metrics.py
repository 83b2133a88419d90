"""Fréchet distance against closed forms; adherence reports count what they should."""

import numpy as np
import pytest

from imagen_video_jax.data import digits
from imagen_video_jax.evaluation import metrics


def test_frechet_distance_matches_closed_form():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(4000, 4))
  b = rng.normal(size=(4000, 4)) * 2.0 + np.array([1.0, 0, 0, 2.0])
  # N(0, I) vs N(m, 4I): |m|^2 + tr(I + 4I - 2 * 2I) = 5 + 4 * 1 = 9.
  assert metrics.frechet_distance(a, b) == pytest.approx(9.0, rel=0.08)
  assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
  assert metrics.frechet_distance(a, b) == pytest.approx(metrics.frechet_distance(b, a), rel=1e-6)
  stats = metrics.gaussian_stats(a)
  assert metrics.frechet_distance(stats, b) == pytest.approx(metrics.frechet_distance(a, b))


def test_frechet_distance_survives_fewer_samples_than_features():
  x = np.random.default_rng(1).normal(size=(8, 50))
  assert metrics.frechet_distance(x, x) < 1e-3
  assert metrics.frechet_distance(x, x + 1.0) == pytest.approx(50.0, rel=1e-3)


def test_adherence_report_separates_held_out_and_counts_attributes():
  held = digits.DEFAULT_HELD_OUT
  prompts = [
    'a red 3 moving left',
    'a blue 4 moving up',
    'a red 0 moving left',
    'a green 3 moving up',
  ]
  predicted = [(3, 'red', 'left'), (4, 'blue', 'down'), (0, 'red', 'left'), (8, 'green', 'up')]
  report = metrics.adherence_report(prompts, predicted, held)
  train, held_out = report['train_combinations'], report['held_out_combinations']
  assert train['num'] == 2 and held_out['num'] == 2
  assert train['digit'] == 1.0 and train['direction'] == 0.5 and train['all'] == 0.5
  assert held_out['digit'] == 0.5 and held_out['colour'] == 1.0 and held_out['all'] == 0.5
  assert held_out['per_combination']['a green 3 moving up'] == {'right': 0, 'num': 1}
  table = metrics.format_table(report)
  assert 'held_out' in table and '50.0%' in table


def test_adherence_report_tells_opposite_from_perpendicular_direction_errors():
  prompts = [
    'a red 3 moving left',
    'a red 3 moving left',
    'a blue 4 moving up',
    'a blue 4 moving down',
    'a white 1 moving right',
  ]
  predicted = [
    (3, 'red', 'right'),
    (3, 'red', 'up'),
    (4, 'blue', 'down'),
    (4, 'blue', 'down'),
    (1, 'white', 'left'),
  ]
  report = metrics.adherence_report(prompts, predicted, held_out=())
  assert report['train_combinations']['direction_errors'] == {'opposite': 3, 'perpendicular': 1}
  assert report['held_out_combinations']['direction_errors'] == {'opposite': 0, 'perpendicular': 0}
  assert '3 opposite, 1 perpendicular' in metrics.format_table(report)


def test_adherence_report_rejects_image_prompts_and_length_mismatch():
  with pytest.raises(ValueError, match='names no direction'):
    metrics.adherence_report(['a red 3'], [(3, 'red', 'left')])
  with pytest.raises(ValueError, match='2 prompts but 1'):
    metrics.adherence_report(['a red 3 moving up'] * 2, [(3, 'red', 'up')])


def test_sample_prompts_draw_from_their_group_deterministically():
  world = digits.DigitsConfig()
  held = metrics.sample_prompts(50, 0, True, world)
  assert {digits.parse_caption(p) for p in held} <= set(world.held_out)
  train = metrics.sample_prompts(50, 0, False, world)
  assert not {digits.parse_caption(p) for p in train} & set(world.held_out)
  assert train == metrics.sample_prompts(50, 0, False, world)


@pytest.mark.parametrize('right,num', [(81, 100), (0, 10), (200, 200), (1, 3), (173, 200)])
def test_wilson_interval_matches_scipy(right, num):
  from scipy.stats import binomtest

  want = binomtest(right, num).proportion_ci(confidence_level=0.95, method='wilson')
  lo, hi = metrics.wilson_interval(right, num)
  np.testing.assert_allclose([lo, hi], [want.low, want.high], atol=1e-7)
  assert lo <= right / num <= hi
  with pytest.raises(ValueError):
    metrics.wilson_interval(num + 1, num)


def test_every_adherence_figure_has_its_interval_in_the_report_and_table():
  prompts = ['a red 3 moving left'] * 90 + ['a red 0 moving left'] * 10
  pred = [(3, 'red', 'left')] * 81 + [(3, 'red', 'right')] * 9 + [(0, 'red', 'left')] * 10
  report = metrics.adherence_report(prompts, pred)
  train = report['train_combinations']
  np.testing.assert_allclose(train['ci95']['direction'], metrics.wilson_interval(81, 90))
  assert train['ci95']['digit'] == list(metrics.wilson_interval(90, 90))
  assert set(train['ci95']) == {'digit', 'colour', 'direction', 'all'}
  lo, hi = metrics.wilson_interval(81, 90)
  assert f'{100 * lo:.0f}-{100 * hi:.0f}%' in metrics.format_table(report)
