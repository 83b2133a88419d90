"""Diffusion core: schedule, parameterisations, loss masking, guidance dropout, noise aug."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.diffusion import objectives
from imagen_video_jax.diffusion.objectives import DiffusionConfig
from imagen_video_jax.diffusion.schedules import CosineSchedule, alpha_sigma


def test_cosine_schedule_endpoints_monotone_and_inverse():
  s = CosineSchedule()
  t = jnp.linspace(0.0, 1.0, 101)
  l = s.logsnr(t)
  np.testing.assert_allclose([l[0], l[-1]], [20.0, -20.0], atol=1e-3)
  assert bool(jnp.all(jnp.diff(l) < 0))
  np.testing.assert_allclose(s.t_of_logsnr(l), t, atol=1e-5)
  # The unclipped cosine schedule: alpha^2 = cos^2(pi t / 2) away from the clip ends.
  a, sig = alpha_sigma(s.logsnr(jnp.array([0.25, 0.5, 0.75])))
  np.testing.assert_allclose(
    a**2, jnp.cos(jnp.pi * jnp.array([0.25, 0.5, 0.75]) / 2) ** 2, atol=1e-4
  )
  np.testing.assert_allclose(a**2 + sig**2, 1.0, atol=1e-6)
  shifted = CosineSchedule(shift=2 * np.log(32 / 64))
  np.testing.assert_allclose(shifted.logsnr(0.5), s.logsnr(0.5) + 2 * np.log(0.5), atol=1e-5)
  with pytest.raises(ValueError, match='logsnr_min'):
    CosineSchedule(logsnr_min=5.0, logsnr_max=-5.0)


@pytest.mark.parametrize('source', ['v', 'eps', 'x'])
@pytest.mark.parametrize('dest', ['v', 'eps', 'x'])
def test_parameterisations_round_trip(source, dest):
  k = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k[0], (4, 3, 5, 5, 3))
  eps = jax.random.normal(k[1], x.shape)
  logsnr = jnp.array([-6.0, -1.0, 2.0, 6.0])
  z = objectives.noisy(x, eps, logsnr)
  out = objectives.target(x, eps, logsnr, source)
  x_hat, eps_hat = objectives.to_x_eps(out, z, logsnr, source)
  np.testing.assert_allclose(x_hat, x, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(eps_hat, eps, atol=2e-5, rtol=1e-5)
  there = objectives.convert(out, z, logsnr, source, dest)
  np.testing.assert_allclose(there, objectives.target(x, eps, logsnr, dest), atol=2e-5, rtol=1e-5)
  back = objectives.convert(there, z, logsnr, dest, source)
  np.testing.assert_allclose(back, out, atol=2e-5, rtol=1e-5)


def test_v_is_the_rotation_of_x_and_eps():
  # v = alpha eps - sigma x, and (x, eps) -> (z, v) is orthogonal: norms are kept.
  x, eps = jnp.array([0.3]), jnp.array([-1.2])
  l = jnp.array([0.7])
  z, v = objectives.noisy(x, eps, l), objectives.target(x, eps, l, 'v')
  np.testing.assert_allclose(z**2 + v**2, x**2 + eps**2, rtol=1e-6)


def test_loss_ignores_padding_frames_and_weights_by_frame():
  x = jax.random.normal(jax.random.key(1), (2, 4, 4, 4, 3))
  ids = jnp.array([[0, 0, 0, -1], [0, 1, 2, 3]], jnp.int32)
  cfg = DiffusionConfig(prediction='eps')
  eps = jax.random.normal(jax.random.key(2), x.shape)
  t = jnp.array([0.3, 0.6])

  def model(garbage):
    # Perfect on real frames; `garbage` on the padding frame (row 0, frame 3).
    def fn(z, logsnr):
      return eps.at[0, 3].set(garbage)

    return fn

  loss_clean, _ = objectives.diffusion_loss(
    model(0.0), x, jax.random.key(3), config=cfg, frame_ids=ids, t=t, eps=eps
  )
  loss_bad, _ = objectives.diffusion_loss(
    model(1e3), x, jax.random.key(3), config=cfg, frame_ids=ids, t=t, eps=eps
  )
  assert float(loss_clean) == 0.0 and float(loss_bad) == 0.0
  # A unit error on one real frame of 7 real frames -> mean 1/7 (not 1/8).
  err = lambda z, l: eps.at[1, 2].add(1.0)
  loss, _ = objectives.diffusion_loss(
    err, x, jax.random.key(3), config=cfg, frame_ids=ids, t=t, eps=eps
  )
  np.testing.assert_allclose(loss, 1.0 / 7.0, rtol=1e-6)


def test_min_snr_weighting_equals_x_space_weight():
  k = jax.random.split(jax.random.key(4), 3)
  x = jax.random.normal(k[0], (3, 2, 4, 4, 3))
  eps = jax.random.normal(k[1], x.shape)
  noise = 0.1 * jax.random.normal(k[2], x.shape)
  t = jnp.array([0.1, 0.5, 0.9])
  cfg = DiffusionConfig()
  logsnr = cfg.schedule.logsnr(t)
  z = objectives.noisy(x, eps, logsnr)
  x_hat = x + noise  # the same x-space error expressed in every parameterisation
  eps_hat = (z - alpha_sigma(logsnr)[0][:, None, None, None, None] * x_hat) / alpha_sigma(logsnr)[
    1
  ][:, None, None, None, None]
  w_x = jnp.minimum(jnp.exp(logsnr), 5.0)
  expected = jnp.mean(w_x * jnp.mean(noise**2, axis=(1, 2, 3, 4)))
  for pred in ('x', 'eps', 'v'):
    out = objectives.target(x_hat, eps_hat, logsnr, pred)
    c = DiffusionConfig(prediction=pred, weighting='min_snr')
    loss, _ = objectives.diffusion_loss(lambda zz, ll: out, x, k[0], config=c, t=t, eps=eps)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_text_dropout_rate_and_null_text():
  emb = jnp.ones((4000, 6, 3))
  mask = jnp.ones((4000, 6), bool).at[:, 4:].set(False)
  d_emb, d_mask = objectives.drop_text(jax.random.key(5), emb, mask, p_uncond=0.1)
  dropped = ~jnp.any(d_mask, axis=-1)
  assert abs(float(jnp.mean(dropped)) - 0.1) < 0.015
  assert float(jnp.max(jnp.abs(d_emb[dropped]))) == 0.0
  np.testing.assert_array_equal(d_mask[~dropped], mask[~dropped])  # kept captions untouched
  # per-frame text is dropped a clip at a time: without frame_ids a row is one clip
  pf = objectives.drop_text(
    jax.random.key(6), jnp.ones((200, 4, 6, 3)), jnp.ones((200, 4, 6), bool), 0.5
  )[1]
  per_frame = jnp.any(pf, axis=-1)
  assert bool(jnp.all(jnp.all(per_frame, 1) | ~jnp.any(per_frame, 1)))  # no clip partly dropped
  assert 0.35 < float(jnp.mean(per_frame[:, 0])) < 0.65
  with pytest.raises(ValueError, match='p_uncond'):
    DiffusionConfig(p_uncond=1.5)


def test_text_dropout_is_per_clip_given_frame_ids():
  # row 0: one video clip (ids 0) then 2 padding frames; row 1: 4 packed images
  ids = jnp.array([[0, 0, 0, 0, -1, -1], [0, 1, 2, 3, -1, -1]], jnp.int32)
  ids = jnp.tile(ids, (300, 1))
  mask = jnp.ones(ids.shape + (5,), bool) & (ids >= 0)[..., None]
  emb, d_mask = objectives.drop_text(
    jax.random.key(7), jnp.ones(ids.shape + (5, 3)), mask, 0.5, frame_ids=ids
  )
  kept = jnp.any(d_mask, axis=-1)  # [B, T]
  video, images = kept[0::2, :4], kept[1::2, :4]
  assert bool(jnp.all(jnp.all(video, 1) | ~jnp.any(video, 1)))  # a video row: all or nothing
  # packed images are separate clips: some rows keep some images and drop others
  assert bool(jnp.any(jnp.any(images, 1) & ~jnp.all(images, 1)))
  assert 0.4 < float(jnp.mean(images)) < 0.6 and 0.4 < float(jnp.mean(video[:, 0])) < 0.6
  assert not bool(jnp.any(kept[:, 4:]))  # padding stays null
  assert float(jnp.max(jnp.abs(jnp.where(d_mask[..., None], 0.0, emb)))) == 0.0
  with pytest.raises(ValueError, match='frame_ids must be'):
    objectives.drop_text(jax.random.key(0), emb, mask, 0.5, frame_ids=ids[:, :3])
  with pytest.raises(ValueError, match='per-frame text'):
    objectives.drop_text(jax.random.key(0), emb[:, 0], mask[:, 0], 0.5, frame_ids=ids)


def test_noise_augmentation_has_the_right_statistics():
  cond = jnp.full((2, 2, 64, 64, 3), 0.5)
  l = jnp.array([0.0, 4.0])
  aug = objectives.noise_augment(jax.random.key(7), cond, l)
  a, s = alpha_sigma(l)
  np.testing.assert_allclose(jnp.mean(aug, axis=(1, 2, 3, 4)), 0.5 * a, atol=0.01)
  np.testing.assert_allclose(jnp.std(aug, axis=(1, 2, 3, 4)), s, rtol=0.02)
  ls = objectives.sample_augment_logsnr(jax.random.key(8), 1000, CosineSchedule(), max_t=0.5)
  assert float(jnp.min(ls)) >= float(CosineSchedule().logsnr(0.5)) - 1e-4
