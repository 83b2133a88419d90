"""Long videos: conditioning a window on known frames (replacement and VDM's reconstruction
guidance) and the cascade's window-by-window sampling with blended SR windows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax import cascade
from imagen_video_jax.diffusion import extend, samplers
from imagen_video_jax.diffusion.schedules import alpha_sigma

RHO = 0.95
COV = jnp.array([[1.0, RHO], [RHO, 1.0]])


def _gaussian_denoiser(z, logsnr, w):
  """The exact v-prediction for data x ~ N(0, COV) over two one-pixel frames."""
  del w
  a, s = alpha_sigma(logsnr)

  def one(zv, a, s):
    x = a * COV @ jnp.linalg.solve(a * a * COV + s * s * jnp.eye(2), zv)
    return a * (zv - a * x) / s - s * x

  return jax.vmap(one)(z.reshape(len(z), 2), a, s).reshape(z.shape)


def _conditional_samples(method, weight, n=4000, x_a=1.5):
  shape = (n, 2, 1, 1, 1)
  x_known = jnp.zeros(shape).at[:, 0].set(x_a)
  known = jnp.zeros((n, 2), bool).at[:, 0].set(True)
  cfg = extend.ExtendConfig(method=method, weight=weight, overlap=1)
  denoise = extend.conditioned_denoiser(
    _gaussian_denoiser, x_known, known, jax.random.normal(jax.random.key(5), shape), config=cfg
  )
  sampler = samplers.SamplerConfig(sampler='ancestral', steps=100, clip='none')
  return np.asarray(samplers.sample(denoise, shape, jax.random.key(0), config=sampler))[
    :, :, 0, 0, 0
  ]


def test_reconstruction_guidance_samples_the_conditional_that_replacement_misses():
  """Given frame a of a correlated Gaussian pair, frame b should follow N(rho x_a,
  1 - rho^2). Replacement (the model sees x_a only through the noisy input) falls well
  short of that mean, as VDM found; reconstruction guidance with w_r = 2 lands close."""
  want_mean, want_std = RHO * 1.5, np.sqrt(1 - RHO**2)
  repl = _conditional_samples('replacement', 0.0)
  recon = _conditional_samples('reconstruction', 2.0)
  for x in (repl, recon):
    np.testing.assert_allclose(x[:, 0], 1.5, atol=1e-5)  # the known frame is held
  assert abs(repl[:, 1].mean() - want_mean) > 0.25, repl[:, 1].mean()
  assert abs(recon[:, 1].mean() - want_mean) < 0.1, recon[:, 1].mean()
  assert abs(recon[:, 1].std() - want_std) < 0.25 * want_std, recon[:, 1].std()
  # w_r = 0 is replacement.
  np.testing.assert_allclose(_conditional_samples('reconstruction', 0.0), repl, atol=1e-5)


def test_with_nothing_known_the_denoiser_is_unchanged():
  z = jax.random.normal(jax.random.key(1), (3, 2, 1, 1, 1))
  logsnr = jnp.array([-2.0, 0.0, 3.0])
  none = jnp.zeros((3, 2), bool)
  for method in extend.METHODS:
    d = extend.conditioned_denoiser(
      _gaussian_denoiser,
      jnp.ones_like(z),
      none,
      jnp.zeros_like(z),
      config=extend.ExtendConfig(method=method),
    )
    np.testing.assert_allclose(d(z, logsnr, 1.0), _gaussian_denoiser(z, logsnr, 1.0), atol=1e-5)
  with pytest.raises(ValueError, match='method must be one of'):
    extend.ExtendConfig(method='paste')
  with pytest.raises(ValueError, match='overlap must be >= 1'):
    extend.ExtendConfig(overlap=0)


def test_windows_and_the_cross_fade():
  from types import SimpleNamespace

  from imagen_video_jax.stage import StageSpec

  # Only the base stage's frame count matters: 4.
  pipe = SimpleNamespace(stages=[SimpleNamespace(spec=StageSpec(frames=4, height=8, width=8))])
  pipe.windows = lambda *a: cascade.CascadePipeline.windows(pipe, *a)
  assert pipe.windows(4, 2) == [0]
  assert pipe.windows(8, 2) == [0, 2, 4]  # 4 + 2 + 2 frames
  assert pipe.windows(7, 1) == [0, 3]  # 4 + 3
  for length, overlap, msg in ((3, 2, 'length must be 4 to 64'), (8, 4, 'overlap must be 1 to 3')):
    with pytest.raises(ValueError, match=msg):
      pipe.windows(length, overlap)
  ramp = cascade._blend_ramp(8, 4)
  np.testing.assert_allclose(ramp[4:] + ramp[:4], 1.0)  # two windows 4 frames apart sum to 1


def test_a_long_video_begins_as_the_short_one_and_is_sampled_window_by_window():
  from test_cascade import _pipeline

  pipe = _pipeline.__wrapped__()  # base 4x8x8 -> TSR 8x8x8 -> SSR 8x16x16
  short = pipe('a red 3', seed=0, progress=False, return_intermediates=True)
  for method in extend.METHODS:
    ext = extend.ExtendConfig(method=method, overlap=2)
    long = pipe('a red 3', seed=0, length=8, extend=ext, progress=False, return_intermediates=True)
    base, tsr, ssr = (long.intermediates[n] for n in ('base', 'tsr', 'ssr'))
    assert base.shape[1] == 8 and tsr.shape[1] == 16 and ssr.shape == (1, 16, 16, 16, 3)
    # The base's first window is the short video's; so is the TSR stage's first window
    # (the same input), whose frames before the first overlap (base frames 0..1: 4 TSR
    # frames) come from it alone. (The SSR stage's first window reads TSR frames that the
    # blend has already changed, so it is not the short video's.)
    np.testing.assert_array_equal(base[:, :4], short.intermediates['base'])
    np.testing.assert_array_equal(tsr[:, :4], short.intermediates['tsr'][:, :4])
    assert np.abs(tsr[:, 4:8].astype(int) - short.intermediates['tsr'][:, 4:]).max() > 0
    assert np.abs(base[:, 4:].astype(int) - base[:, :4]).max() > 0  # new frames
  with pytest.raises(ValueError, match='length must be'):
    pipe('a red 3', length=2, progress=False)


class _LongOracle:
  """Stands in for a cascade: `length=` videos whose every piece is the world's clip of the
  prompt, but for the second piece of every other video, drawn in another colour, and
  every later piece of every fourth video (one of those) held still at its first frame."""

  def __init__(self):
    from types import SimpleNamespace

    from imagen_video_jax.stage import StageSpec

    self.world = None
    self.stages = [
      SimpleNamespace(name='base', fps=8.0, spec=StageSpec(frames=16, height=32, width=32))
    ]

  def __call__(self, prompts, *, seed, length, extend, samplers_by_stage, progress):
    from types import SimpleNamespace

    from imagen_video_jax.data import digits

    world, out = digits.DigitsConfig(), []
    for i, p in enumerate(prompts):
      d, c, m = digits.parse_caption(p)
      clip = lambda colour: digits._render_video(
        np.random.default_rng([seed, i]), world, d, colour, m
      )[0]
      other = 'white' if c != 'white' else 'red'
      pieces = [clip(c) if k == 0 or (seed + i) % 2 else clip(other) for k in range(length // 16)]
      if (seed + i) % 4 == 0:  # (a wrong colour already) its first frame held still
        pieces[1:] = [np.repeat(p[:1], 16, axis=0) for p in pieces[1:]]
      out.append(np.concatenate(pieces))
    return SimpleNamespace(videos=np.stack(out))


def test_long_video_evaluation_reads_every_piece():
  from imagen_video_jax.evaluation import judge as judge_lib, metrics

  report = metrics.evaluate_long_videos(
    _LongOracle(),
    judge_lib.load_judge(),
    length_factor=2,
    num_samples=20,
    batch_size=4,
    progress=False,
  )
  assert report['num'] == 20 and len(report['pieces']) == 2
  assert report['pieces'][0]['all'] >= 0.95  # the first pieces are the prompts' clips
  assert report['pieces'][1]['colour'] <= 0.6  # half the second pieces are another colour
  assert 0.4 <= report['all_pieces_right'] <= 0.6 and report['consistent'] <= 0.6
  by = report['consistent_by_attribute']  # only the colour changes between pieces
  assert by['colour'] <= 0.6 and by['digit'] >= 0.95
  assert report['moving'] == 0.75  # every fourth video's second piece is held still
  assert report['direction_kept_when_moving'] >= 0.9
  assert report['extend']['method'] == 'reconstruction'
