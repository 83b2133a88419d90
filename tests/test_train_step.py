"""The train step's random draws, as the network receives them.

`training.step.make_train_step` draws classifier-free guidance dropout and the diffusion
time once per clip (a video row: one draw; a row packed with images: one per image), and
for SR stages a noise-augmentation level per row. A spy stands in for the U-Net and
records what the real step hands it, so these tests read the step's own masks and
log-SNRs rather than a helper's.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax import stage as stage_lib
from imagen_video_jax.training import state as state_lib
from imagen_video_jax.training import step as step_lib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import digits as digits_config  # noqa: E402

T, L, D = 8, 4, 32  # frames, text length, text width (the tiny config's text.d_model)
# One row of each kind: a video; 8 packed images; two clips of 4 frames; a 5-frame video
# padded with 3 empty frames.
FRAME_IDS = np.array([[0] * 8, list(range(8)), [0] * 4 + [1] * 4, [0] * 5 + [-1] * 3], np.int32)
CLIPS = [[range(8)], [[i] for i in range(8)], [range(4), range(4, 8)], [range(5)]]


class Spy:
  """Stands in for VideoUNet: records its inputs, outputs a function of its one param."""

  def __init__(self):
    self.calls = []

  def apply(
    self, variables, z, logsnr, text_emb, text_mask, frame_ids, cond, cond_logsnr, train, rngs
  ):
    del frame_ids, train, rngs
    self.calls.append(
      {
        k: None if v is None else np.asarray(v)
        for k, v in dict(
          logsnr=logsnr, text_emb=text_emb, text_mask=text_mask, cond=cond, cond_logsnr=cond_logsnr
        ).items()
      }
    )
    return z * variables['params']['w']


def _run(stage, steps, **diffusion):
  config = digits_config.get_config(f'stage={stage},tiny=True')
  config.diffusion.update(diffusion)
  spy = Spy()
  tx, schedule = state_lib.make_optimizer(config.optim)
  step = step_lib.make_train_step(config, spy, None, tx, schedule, jax.random.key(7))
  state = state_lib.TrainState.create({'w': jnp.ones(())}, tx)
  rng = np.random.default_rng(0)
  b = len(FRAME_IDS)
  text_mask = np.arange(L)[None, None] < rng.integers(1, L + 1, (b, T, 1))
  batch = {
    'video': rng.uniform(-1, 1, (b, T, 8, 8, 3)).astype(np.float32),
    'frame_ids': FRAME_IDS,
    'text_emb': rng.normal(size=(b, T, L, D)).astype(np.float32) + 3.0,  # never 0
    'text_mask': text_mask,
  }
  if stage != 'base':
    batch['cond'] = rng.uniform(-1, 1, (b, T, 8, 8, 3)).astype(np.float32)
  for _ in range(steps):
    state, _ = step(state, batch, None)  # not jitted: the spy sees concrete arrays
  assert len(spy.calls) == steps
  return config, batch, spy.calls


@pytest.fixture(scope='module')
def base_calls():
  return _run('base', 150)


def test_guidance_dropout_is_drawn_once_per_clip(base_calls):
  config, batch, calls = base_calls
  p = float(config.diffusion.p_uncond)
  kept_draws = []
  packed_split = False  # some step keeps one packed image's caption and drops another's
  for call in calls:
    mask, emb = call['text_mask'], call['text_emb']
    kept = mask.any(-1)  # [B, T]: a dropped caption is the null text, all False
    # Kept captions are untouched; dropped ones are zeros (the sampler's null text).
    np.testing.assert_array_equal(mask[kept], batch['text_mask'][kept])
    np.testing.assert_array_equal(
      emb[kept], np.where(batch['text_mask'][..., None], batch['text_emb'], 0)[kept]
    )
    assert not emb[~kept].any()
    for row, clips in enumerate(CLIPS):
      for clip in clips:
        frames = kept[row, list(clip)]
        assert frames.all() or not frames.any(), (row, list(clip), frames)  # one draw a clip
        kept_draws.append(bool(frames[0]))
    packed_split |= 0 < kept[1].sum() < T
  assert packed_split, 'packed images never got different draws'
  dropped = 1 - np.mean(kept_draws)  # 150 steps x 12 clips: sd ~0.007 around p
  assert abs(dropped - p) < 0.035, (dropped, p)


def test_noise_levels_are_per_clip_and_uniform_in_time(base_calls):
  config, _, calls = base_calls
  schedule = stage_lib.diffusion_from_config(config.diffusion).schedule
  firsts = []
  for call in calls:
    logsnr = call['logsnr']
    assert logsnr.shape == FRAME_IDS.shape  # per_frame_time: one level per frame
    for row, clips in enumerate(CLIPS):
      levels = [logsnr[row, clip[0]] for clip in clips]
      for clip in clips:
        np.testing.assert_array_equal(logsnr[row, list(clip)], logsnr[row, clip[0]])
      if len(clips) > 1:
        assert len(set(levels)) == len(levels), (row, levels)  # clips draw independently
      firsts.extend(levels)
  # t ~ U(0, 1) through the schedule: the deciles of t hold a tenth of the draws each.
  edges = np.asarray(schedule.logsnr(jnp.linspace(0.0, 1.0, 11)))
  counts = np.histogram(-np.asarray(firsts), bins=-edges)[0]
  expected = len(firsts) / 10
  assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected)), counts


def test_without_per_frame_time_a_row_shares_one_level():
  _, _, calls = _run('base', 3, per_frame_time=False)
  for call in calls:
    assert call['logsnr'].shape == (len(FRAME_IDS),)


def test_sr_conditioning_is_noised_at_a_per_row_level():
  config, batch, calls = _run('tsr', 40)
  schedule = stage_lib.diffusion_from_config(config.diffusion).schedule
  max_t = float(config.diffusion.cond_augment_max_t)
  lo, hi = float(schedule.logsnr(max_t)), float(schedule.logsnr(0.0))
  residuals = []
  for call in calls:
    cl = call['cond_logsnr']
    assert cl.shape == (len(FRAME_IDS),) and np.all((cl >= lo) & (cl <= hi)), cl
    alpha, sigma = (np.sqrt(1 / (1 + np.exp(s * cl)))[:, None, None, None, None] for s in (-1, 1))
    # cond = alpha * clean + sigma * eps with eps ~ N(0, 1): recover eps.
    residuals.append((call['cond'] - alpha * batch['cond']) / sigma)
  eps = np.concatenate(residuals)
  assert abs(eps.mean()) < 0.02 and abs(eps.std() - 1) < 0.02, (eps.mean(), eps.std())
