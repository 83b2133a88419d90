"""Samplers against the exact denoiser of Gaussian data; guidance; thresholding."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.diffusion import objectives, samplers
from imagen_video_jax.diffusion.samplers import SamplerConfig
from imagen_video_jax.diffusion.schedules import alpha_sigma

MU, S = 0.4, 0.3


def gaussian_denoiser(mu, s, prediction='v'):
  """The exact E[x | z] for x ~ N(mu, s^2), returned in `prediction` form."""

  def fn(z, logsnr, w):
    del w
    a, sig = (objectives._bcast(v, z.ndim) for v in alpha_sigma(logsnr))
    x = mu + a * s**2 / (a**2 * s**2 + sig**2) * (z - a * mu)
    return objectives.convert(x, z, logsnr, 'x', prediction)

  return fn


@pytest.mark.parametrize(
  'sampler,gamma', [('ddim', 0.0), ('ancestral', 0.0), ('ancestral', 0.3), ('stepback', 0.0)]
)
@pytest.mark.parametrize('prediction', ['v', 'eps'])
def test_sampler_reproduces_gaussian_data(sampler, gamma, prediction):
  # Both are first-order: the std error shrinks as 1/steps (measured 4% low at 128
  # ancestral steps, 0.8% at 512), so 512 steps test the update rules to 2%.
  cfg = SamplerConfig(sampler=sampler, steps=512, clip='none', gamma=gamma)
  run = jax.jit(
    functools.partial(
      samplers.sample,
      gaussian_denoiser(MU, S, prediction),
      (20000, 1, 2, 2, 1),
      config=cfg,
      prediction=prediction,
    )
  )
  x = run(jax.random.key(0))
  assert abs(float(jnp.mean(x)) - MU) < 0.02 * MU
  assert abs(float(jnp.std(x)) - S) < 0.02 * S


def test_ddim_is_deterministic_given_the_noise_and_ancestral_is_not():
  den = gaussian_denoiser(MU, S)
  z = jax.random.normal(jax.random.key(1), (8, 2, 2, 2, 1))
  # One compiled sampler per config (the key is an argument), not one eager loop per call.
  run = lambda cfg: jax.jit(lambda key: samplers.sample(den, z.shape, key, config=cfg, z_init=z))
  ddim = run(SamplerConfig(sampler='ddim', steps=16, clip='none'))
  np.testing.assert_array_equal(ddim(jax.random.key(2)), ddim(jax.random.key(3)))
  anc = run(SamplerConfig(sampler='ancestral', steps=16, clip='none'))
  c, d = anc(jax.random.key(2)), anc(jax.random.key(3))
  assert float(jnp.max(jnp.abs(c - d))) > 1e-3
  np.testing.assert_array_equal(c, anc(jax.random.key(2)))


def test_the_whole_loop_is_one_traced_program():
  calls = []

  def den(z, logsnr, w):
    calls.append(z.shape)
    return jnp.zeros_like(z)

  jaxpr = jax.make_jaxpr(
    lambda k: samplers.sample(den, (2, 1, 2, 2, 1), k, config=SamplerConfig(steps=50))
  )(jax.random.key(0))
  assert len(calls) == 1  # traced once, not unrolled 50 times
  assert 'while' in str(jaxpr) or 'scan' in str(jaxpr)  # fori_loop lowers to either


def test_guidance_is_one_batched_forward_and_mixes_cond_and_uncond():
  shapes = []
  b, l, d = 3, 4, 5
  text = jax.random.normal(jax.random.key(4), (b, l, d))
  mask = jnp.ones((b, l), bool)
  w_text = jax.random.normal(jax.random.key(5), (d,))

  def apply_fn(z, logsnr, emb, m):
    shapes.append(z.shape)
    pooled = jnp.sum(emb @ w_text * m, axis=1)  # null text -> 0
    return z * 0.5 + pooled[:, None, None, None, None] + logsnr[:, None, None, None, None]

  den = samplers.guided_denoiser(apply_fn, text, mask)
  z = jax.random.normal(jax.random.key(6), (b, 2, 2, 2, 1))
  logsnr = jnp.full((b,), 0.3)
  out = den(z, logsnr, 7.5)
  assert shapes == [(2 * b, 2, 2, 2, 1)]
  cond = apply_fn(z, logsnr, text, mask)
  uncond = apply_fn(z, logsnr, jnp.zeros_like(text), jnp.zeros_like(mask))
  np.testing.assert_allclose(out, 7.5 * cond + (1 - 7.5) * uncond, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(den(z, logsnr, 1.0), cond, rtol=1e-6, atol=1e-6)
  # A negative prompt replaces the null text in the unconditional half.
  neg = -text
  den_neg = samplers.guided_denoiser(apply_fn, text, mask, neg, mask)
  np.testing.assert_allclose(
    den_neg(z, logsnr, 3.0), 3.0 * cond - 2.0 * apply_fn(z, logsnr, neg, mask), rtol=1e-5, atol=1e-5
  )


def test_oscillating_guidance_weights_follow_the_paper():
  # Imagen Video (section 2.5): a constant high weight for the first steps, then
  # alternating between the high and the low weight.
  w = SamplerConfig(steps=6, guidance=15.0, guidance_low=1.0).guidance_weights()
  np.testing.assert_array_equal(w, [15, 1, 15, 1, 15, 1])
  w = SamplerConfig(steps=6, guidance=15.0, guidance_low=1.0, oscillate_from=0.5)
  np.testing.assert_array_equal(w.guidance_weights(), [15, 15, 15, 1, 15, 1])
  w = SamplerConfig(steps=7, guidance=15.0, guidance_low=1.0, oscillate_from=0.3)
  np.testing.assert_array_equal(w.guidance_weights(), [15, 15, 15, 1, 15, 1, 15])
  w = SamplerConfig(steps=4, guidance=15.0, guidance_low=1.0, oscillate_from=1.0)
  np.testing.assert_array_equal(w.guidance_weights(), [15] * 4)
  np.testing.assert_array_equal(SamplerConfig(steps=3, guidance=4.0).guidance_weights(), [4, 4, 4])


def test_static_and_dynamic_thresholding():
  x = jnp.concatenate([jnp.linspace(-3.0, 3.0, 1000)[None], jnp.linspace(-0.5, 0.5, 1000)[None]])
  np.testing.assert_allclose(samplers.threshold(x, 'static'), jnp.clip(x, -1, 1))
  dyn = samplers.threshold(x, 'dynamic', 90.0)
  s = float(jnp.percentile(jnp.abs(x[0]), 90.0))  # ~2.7
  np.testing.assert_allclose(dyn[0], jnp.clip(x[0], -s, s) / s, rtol=1e-6)
  assert float(jnp.max(jnp.abs(dyn[0]))) == pytest.approx(1.0)
  np.testing.assert_array_equal(dyn[1], x[1])  # within [-1, 1]: s = 1, untouched


def test_clipping_keeps_samples_in_range():
  den = gaussian_denoiser(0.9, 0.5)  # much of the mass is above 1
  x = samplers.sample(
    den, (500, 1, 2, 2, 1), jax.random.key(7), config=SamplerConfig(steps=16, clip='static')
  )
  assert float(jnp.max(x)) <= 1.0 and float(jnp.min(x)) >= -1.0


def test_bad_sampler_config_is_refused():
  with pytest.raises(ValueError, match="sampler must be one of.*'stepback'"):
    SamplerConfig(sampler='euler')
  with pytest.raises(ValueError, match='steps'):
    SamplerConfig(steps=0)


def _guided_gaussian_denoiser(traces):
  """cond = N(MU, S^2), uncond = N(-MU, S^2), mixed by w; counts its traces."""
  cond, uncond = gaussian_denoiser(MU, S), gaussian_denoiser(-MU, S)

  def fn(z, logsnr, w):
    traces.append(z.shape)
    return uncond(z, logsnr, w) + w * (cond(z, logsnr, w) - uncond(z, logsnr, w))

  return fn


@pytest.mark.parametrize('sampler', ['ddim', 'ancestral'])
def test_steps_guidance_and_seed_are_values_one_compiled_sampler_serves(sampler):
  """Changing steps, guidance, oscillation or seed runs the same compiled loop, and it
  samples what a loop compiled for the config's constants samples (up to float rounding:
  XLA folds a constant time grid when compiling)."""
  traces = []
  den = _guided_gaussian_denoiser(traces)
  shape = (4, 1, 3, 3, 1)
  static = SamplerConfig(sampler=sampler, clip='dynamic', dynamic_percentile=90.0)
  run = jax.jit(lambda key, t: samplers.sample(den, shape, key, config=static, traced=t))
  configs = [
    dataclasses.replace(static, steps=8, guidance=1.0),
    dataclasses.replace(static, steps=13, guidance=3.0),
    dataclasses.replace(static, steps=13, guidance=4.0, guidance_low=1.0, oscillate_from=0.3),
    dataclasses.replace(static, steps=100, guidance=2.5, guidance_low=0.5),
  ]
  outs = []
  for seed, cfg in enumerate(configs):
    x = run(jax.random.key(seed), cfg.traced())
    outs.append(x)
    # The config's own constants, compiled for it alone.
    want = jax.jit(lambda key, cfg=cfg: samplers.sample(den, shape, key, config=cfg))(
      jax.random.key(seed)
    )
    np.testing.assert_allclose(x, want, rtol=0, atol=1e-5, err_msg=str(cfg))
  assert run._cache_size() == 1
  assert len(traces) == 1 + len(configs)  # the traced run once, each constant config once
  for a, b in zip(outs, outs[1:]):
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3  # the values did change the samples


def test_traced_oscillating_guidance_reaches_every_step():
  seen = []

  def den(z, logsnr, w):
    jax.debug.callback(lambda w: seen.append(float(w)), w, ordered=True)
    return jnp.zeros_like(z)

  cfg = SamplerConfig(steps=7, guidance=9.0, guidance_low=2.0, oscillate_from=0.5)
  run = jax.jit(
    lambda t: samplers.sample(
      den, (1, 1, 1, 1, 1), jax.random.key(0), config=cfg.static(), traced=t
    )
  )
  run(cfg.traced()).block_until_ready()
  assert seen == [9, 9, 9, 9, 9, 2, 9] == cfg.guidance_weights().tolist()
  seen.clear()
  other = SamplerConfig(steps=5, guidance=6.0)
  run(other.traced()).block_until_ready()
  assert seen == [6] * 5
  assert run._cache_size() == 1


def test_static_config_keys_the_compiled_program():
  a = SamplerConfig(steps=7, guidance=9.0, guidance_low=2.0, oscillate_from=0.5)
  b = SamplerConfig(steps=64, guidance=1.0)
  assert a.static() == b.static() and hash(a.static()) == hash(b.static())
  for program in ({'sampler': 'ancestral'}, {'clip': 'none'}, {'gamma': 0.5}):
    assert dataclasses.replace(a, **program).static() != b.static()


def test_stage_json_written_before_the_paper_schedule_loads_or_is_refused():
  from imagen_video_jax.stage import sampler_from_json

  old = dataclasses.asdict(SamplerConfig(steps=8, guidance=3.0))
  del old['oscillate_from']
  # Its default (alternate throughout, or constant guidance) means the same today.
  assert sampler_from_json({**old, 'oscillate_until': 1.0}) == SamplerConfig(steps=8, guidance=3.0)
  assert sampler_from_json({**old, 'oscillate_until': 0.5}).guidance_weights().tolist() == [3] * 8
  with pytest.raises(ValueError, match='oscillate_until=0.5.*oscillate_from'):
    sampler_from_json({**old, 'guidance_low': 1.0, 'oscillate_until': 0.5})


def test_stepback_lands_on_a_point_mass_whatever_its_noise():
  """With a denoiser that always predicts x0, every step-back sample ends at x0 exactly
  (the last step is DDIM's), though the steps between add noise."""
  x0 = jax.random.normal(jax.random.key(0), (4, 1, 2, 2, 1))

  def den(z, logsnr, w):
    return objectives.convert(jnp.broadcast_to(x0, z.shape), z, logsnr, 'x', 'v')

  cfg = SamplerConfig(sampler='stepback', steps=4, clip='none')
  run = jax.jit(lambda key: samplers.sample(den, x0.shape, key, config=cfg, return_z=True))
  a, b = run(jax.random.key(1)), run(jax.random.key(2))
  # z at t = 0 is x0 up to sigma(logsnr_max) ~ 5e-5 of noise.
  np.testing.assert_allclose(a, x0, atol=3e-4)
  np.testing.assert_allclose(b, x0, atol=3e-4)
  # ... and between, each step's noise is its own: two seeds part after the first step.
  two = SamplerConfig(sampler='stepback', steps=4, clip='none')
  mid = jax.jit(
    lambda key: samplers.sample(
      gaussian_denoiser(MU, S), x0.shape, key, config=dataclasses.replace(two, steps=2)
    )
  )
  assert float(jnp.abs(mid(jax.random.key(1)) - mid(jax.random.key(2))).max()) > 1e-3
