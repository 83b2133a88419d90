"""Frame conditioning by masking: the U-Net's given-frame channels, the training patterns,
a run that learns to use the given frames, and sampling with them.

A `frame_cond` U-Net reads which frames are given and their pixels; fresh (or warm-started
from a U-Net without it) it computes exactly that U-Net; a pixel of a frame that is not
given is never read; training draws the configured patterns on video rows only.
"""

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from imagen_video_jax import params_io, sampling
from imagen_video_jax import stage as stage_lib
from imagen_video_jax.diffusion import frame_cond, objectives
from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.models.unet import LevelConfig, UNetConfig
from imagen_video_jax.training import loop as loop_lib, warm_start

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import digits as digits_config  # noqa: E402

T, H, W, L = 6, 8, 8, 5


def _cfg(**kw):
  return UNetConfig(
    levels=(
      LevelConfig(8, 1, temporal='conv', cross_attention=True),
      LevelConfig(16, 1, temporal='attention', cross_attention=True),
    ),
    text_dim=8,
    emb_dim=16,
    head_dim=8,
    temporal_buckets=8,
    temporal_max_distance=8,
    **kw,
  )


def _init(cfg, key=0):
  p = unet_lib.init_params(cfg, jax.random.key(key), frames=T, height=H, width=W, text_len=L)
  return jax.device_get(nn.unbox(p))


def _inputs(key, b=2):
  ks = jax.random.split(jax.random.key(key), 4)
  x = jax.random.normal(ks[0], (b, T, H, W, 3))
  text = jax.random.normal(ks[1], (b, L, 8))
  mask = jnp.ones((b, L), bool)
  frames = jax.random.uniform(ks[2], (b, T, H, W, 3), minval=-1, maxval=1)
  return x, jnp.full((b,), 1.5), text, mask, frames


def _perturbed(params, key, scale=0.2):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(key), len(leaves))
  return jax.tree.unflatten(
    treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  )


def test_a_fresh_frame_cond_unet_is_the_unet_without_it_whatever_is_given():
  plain_cfg, cond_cfg = _cfg(), _cfg(frame_cond=True)
  plain = _perturbed(_init(plain_cfg), 1)  # trained-looking weights, nothing zero
  fresh = _init(cond_cfg)
  names = set(params_io.flatten_params(fresh)) - set(params_io.flatten_params(plain))
  assert names and all(n.startswith(unet_lib.FRAME_CONDITIONING + '/') for n in names)
  # The plain weights warm-started into the frame-conditioned U-Net (what `init_from`
  # does): only the frame-conditioning kernel is fresh, and it is zero.
  loaded = warm_start.fit_params(plain, False, fresh, cond_cfg, 'plain')
  assert warm_start.fresh_names(loaded, fresh) == sorted(names)
  both = params_io.flatten_params(fresh)
  both.update(params_io.flatten_params(loaded))
  both = params_io.unflatten_params(both)
  x, logsnr, text, mask, frames = _inputs(0)
  want = jax.jit(unet_lib.VideoUNet(plain_cfg).apply)({'params': plain}, x, logsnr, text, mask)
  model = unet_lib.VideoUNet(cond_cfg)
  known = jnp.array([[True, False, True, False, False, True], [False] * T])
  run = jax.jit(
    lambda p, k, f: model.apply({'params': p}, x, logsnr, text, mask, known=k, known_frames=f)
  )
  got = np.asarray(run(both, known, frames))
  # Whatever is given: the same output, bit for bit (the fresh kernel is zero) ...
  np.testing.assert_array_equal(np.asarray(run(both, jnp.zeros_like(known), frames * 0)), got)
  # ... and the plain U-Net's, to float32 rounding (two programs, fused differently).
  np.testing.assert_allclose(got, np.asarray(want), rtol=0, atol=1e-5)
  # Without frame_cond, the source's own config refuses given frames by name.
  with pytest.raises(ValueError, match='no frame_cond'):
    unet_lib.VideoUNet(plain_cfg).apply(
      {'params': plain}, x, logsnr, text, mask, known=known, known_frames=frames
    )


def test_only_the_given_frames_pixels_are_read():
  cfg = _cfg(frame_cond=True)
  params = _perturbed(_init(cfg), 2)  # the frame-conditioning kernel is no longer zero
  model = unet_lib.VideoUNet(cfg)
  x, logsnr, text, mask, frames = _inputs(3)
  known = jnp.array([[True, False, False, False, False, True], [False, True] * 3])
  run = jax.jit(
    lambda f, k: model.apply({'params': params}, x, logsnr, text, mask, known=k, known_frames=f)
  )
  base = np.asarray(run(frames, known))
  # Other pixels in the frames that are not given: the same output, bit for bit.
  noise = jax.random.normal(jax.random.key(9), frames.shape)
  other = jnp.where(known[:, :, None, None, None], frames, noise)
  np.testing.assert_array_equal(np.asarray(run(other, known)), base)
  # Another pixel in a given frame, or another mask: a different output.
  changed = frames.at[0, 5].add(0.5)
  assert np.abs(np.asarray(run(changed, known)) - base).max() > 1e-3
  assert np.abs(np.asarray(run(frames, known.at[0, 2].set(True))) - base).max() > 1e-3
  # Nothing given is all-zero channels, as `known` None (another program: to rounding).
  none = np.asarray(run(frames, jnp.zeros_like(known)))
  np.testing.assert_allclose(
    np.asarray(jax.jit(lambda: model.apply({'params': params}, x, logsnr, text, mask))()),
    none,
    rtol=0,
    atol=1e-5,
  )
  with pytest.raises(ValueError, match='known_frames must be'):
    model.apply({'params': params}, x, logsnr, text, mask, known=known, known_frames=frames[:, :2])
  with pytest.raises(ValueError, match='known must be'):
    model.apply({'params': params}, x, logsnr, text, mask, known=known[:1], known_frames=frames)


def test_pattern_masks_and_the_positions_a_user_s_frames_take():
  m = lambda *a: list(np.flatnonzero(frame_cond.pattern_mask(*a)))
  assert m('first', 8) == [0]
  assert m('first_k', 8, 3) == [0, 1, 2]
  assert m('every_other', 8) == [0, 2, 4, 6]
  assert m('every_other', 7) == [0, 2, 4, 6]
  assert m('ends', 8) == [0, 7]
  pos = frame_cond.given_positions
  assert list(pos('animate', 1, 8)) == [0]
  assert list(pos('extend', 3, 8)) == [0, 1, 2]
  assert list(pos('interpolate', 4, 8)) == [0, 2, 4, 6]
  assert list(pos('interpolate', 2, 8)) == [0, 7]
  for args, msg in (
    (('animate', 2, 8), 'one image'),
    (('extend', 8, 8), '1 to 7 frames'),
    (('extend', 0, 8), '1 to 7 frames'),
    (('interpolate', 3, 8), 'takes 2 frames .* or 4'),
    (('loop', 1, 8), 'mode must be one of'),
  ):
    with pytest.raises(ValueError, match=msg):
      pos(*args)
  known, placed = frame_cond.place(np.ones((2, 2, 4, 4, 3)), [0, 7], 8)
  assert known.shape == (2, 8) and list(np.flatnonzero(known[0])) == [0, 7]
  assert float(placed[:, 1:7].sum()) == 0 and float(placed[:, [0, 7]].min()) == 1


def test_training_draws_the_configured_patterns_on_video_rows_only():
  b, t = 4000, 8
  video = jnp.zeros((b, t), jnp.int32)
  cfg = frame_cond.FrameCondConfig(p=0.5, max_known=3)
  known = np.asarray(frame_cond.draw_known(jax.random.key(0), video, cfg))
  used = known.any(1)
  assert abs(used.mean() - 0.5) < 0.03  # p
  tables = {
    'first': [frame_cond.pattern_mask('first', t)],
    'first_k': [frame_cond.pattern_mask('first_k', t, k) for k in (1, 2, 3)],
    'every_other': [frame_cond.pattern_mask('every_other', t)],
    'ends': [frame_cond.pattern_mask('ends', t)],
  }
  counts = {name: 0 for name in tables}
  for row in known[used]:
    # 'first' and 'first_k' with k=1 are the same mask: counted as 'first_k' below.
    hits = [n for n, masks in tables.items() if any((row == m).all() for m in masks)]
    assert hits, row  # every row is one of the patterns
    counts['first_k' if 'first_k' in hits else hits[0]] += 1
  n = used.sum()
  # Uniform over patterns: each 1/4; 'first' is drawn as itself or as first_k, k=1.
  assert abs(counts['every_other'] / n - 0.25) < 0.04
  assert abs(counts['ends'] / n - 0.25) < 0.04
  assert abs(counts['first_k'] / n - 0.5) < 0.04
  # Packed image rows (a clip per frame) and padded rows get none; p=0 none at all.
  images = jnp.tile(jnp.arange(t), (b, 1))
  assert not np.asarray(frame_cond.draw_known(jax.random.key(1), images, cfg)).any()
  padded = video.at[:, -1].set(-1)
  assert not np.asarray(frame_cond.draw_known(jax.random.key(1), padded, cfg)).any()
  none = frame_cond.FrameCondConfig(p=0.0)
  assert not np.asarray(frame_cond.draw_known(jax.random.key(2), video, none)).any()
  only = frame_cond.FrameCondConfig(p=1.0, patterns='ends')
  got = np.asarray(frame_cond.draw_known(jax.random.key(3), video[:50], only))
  assert (got == frame_cond.pattern_mask('ends', t)).all()
  for bad, msg in (
    (dict(p=1.5), r'p must be in \[0, 1\]'),
    (dict(patterns='first,loop'), "unknown \\['loop'\\]"),
    (dict(patterns=''), 'is empty'),
    (dict(max_known=-1), 'max_known'),
  ):
    with pytest.raises(ValueError, match=msg):
      frame_cond.FrameCondConfig(**bad)


def test_a_model_trained_with_given_frames_reproduces_them_and_not_the_others():
  """Frames of pure noise: no frame says anything about another, so at the noisiest
  level a frame that is not given can only be predicted as its mean (error ~ its
  variance, 1/3), while a given one can be copied. After training with random
  patterns, the model's x-prediction error on given frames is a small fraction of that
  on the others."""
  cfg = UNetConfig(
    levels=(LevelConfig(16, 1, temporal='conv'), LevelConfig(16, 1, temporal='conv')),
    emb_dim=16,
    frame_cond=True,
  )
  model = unet_lib.VideoUNet(cfg)
  params = unet_lib.init_params(cfg, jax.random.key(0), frames=T, height=H, width=W)
  tx = optax.adam(1e-2)
  opt = tx.init(params)
  dcfg = objectives.DiffusionConfig()
  fc = frame_cond.FrameCondConfig(p=1.0)
  fids = jnp.zeros((8, T), jnp.int32)

  def loss_fn(p, key):
    k_x, k_known, k_loss = jax.random.split(key, 3)
    x = jax.random.uniform(k_x, (8, T, H, W, 3), minval=-1, maxval=1)
    known = frame_cond.draw_known(k_known, fids, fc)
    given = dict(known=known, known_frames=jnp.where(known[..., None, None, None], x, 0.0))
    apply = lambda z, l: model.apply({'params': p}, z, l, **given)
    return objectives.diffusion_loss(apply, x, k_loss, config=dcfg)[0]

  @jax.jit
  def step(p, o, key):
    loss, g = jax.value_and_grad(loss_fn)(p, key)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  for i in range(300):
    params, opt, _ = step(params, opt, jax.random.key(100 + i))

  x = jax.random.uniform(jax.random.key(7), (8, T, H, W, 3), minval=-1, maxval=1)
  known = jnp.asarray(np.tile(frame_cond.pattern_mask('every_other', T), (8, 1)))
  logsnr = jnp.full((8,), dcfg.schedule.logsnr(jnp.float32(0.98)))
  z = objectives.noisy(x, jax.random.normal(jax.random.key(8), x.shape), logsnr)
  out = model.apply(
    {'params': params},
    z,
    logsnr,
    known=known,
    known_frames=jnp.where(known[..., None, None, None], x, 0.0),
  )
  x_hat, _ = objectives.to_x_eps(out, z, logsnr, 'v')
  err = np.asarray(jnp.mean(jnp.square(x_hat - x), axis=(0, 2, 3, 4)))  # per frame
  given_err, other_err = err[0::2].mean(), err[1::2].mean()
  assert other_err > 0.25, err  # the others: about their variance, 1/3
  assert given_err < 0.2 * other_err, err


def test_sampling_reads_the_given_frames_and_refuses_them_without_frame_cond():
  spec = stage_lib.StageSpec(kind='base', frames=T, height=H, width=W)
  cfg = _cfg(frame_cond=True)
  params = _perturbed(_init(cfg), 4)
  stage = stage_lib.Stage(
    name='base',
    spec=spec,
    unet=cfg,
    diffusion=objectives.DiffusionConfig(),
    sampler=sampling.SamplerConfig(steps=3, guidance=3.0),
    params=params,
    fps=8.0,
  )
  _, _, text, mask, frames = _inputs(5)
  known = jnp.array([[True] + [False] * (T - 1)] * 2)

  def run(st, **given):
    return np.asarray(
      sampling.sample_stage(
        st, st.params, jax.random.key(0), 2, text_emb=text, text_mask=mask, **given
      )
    )

  with_frames = run(stage, known=known, known_frames=frames)
  without = run(stage)
  assert np.isfinite(with_frames).all() and np.abs(with_frames - without).max() > 1e-3
  # Guided: both halves see the given frames (a distilled student's one forward too).
  plain = dataclasses.replace(stage, unet=_cfg(), params=_perturbed(_init(_cfg()), 4))
  with pytest.raises(ValueError, match='takes no given frames'):
    run(plain, known=known, known_frames=frames)


def test_the_train_config_checks_the_frame_cond_section():
  c = digits_config.get_config('stage=base,tiny=True')
  c.model.frame_cond = True
  c.frame_cond.patterns = 'first,sideways'
  with pytest.raises(loop_lib.ConfigError, match='sideways'):
    loop_lib.validate(c)
  c.frame_cond.patterns = 'first,ends'
  loop_lib.validate(c)


def _frame_cond_pipeline(reads=('base', 'tsr', 'ssr')):
  from test_cascade import _fake_text_encoder, _stage

  from imagen_video_jax import cascade
  from imagen_video_jax.stage import StageSpec

  specs = [
    ('base', StageSpec(frames=4, height=8, width=8), False, 4),
    ('tsr', StageSpec(frames=8, height=8, width=8, kind='tsr', factor=2), True, 8),
    ('ssr', StageSpec(frames=8, height=16, width=16, kind='ssr', factor=2), True, 8),
  ]
  stages = [
    _stage(name, spec, sr, i, fps, frame_cond=name in reads)
    for i, (name, spec, sr, fps) in enumerate(specs)
  ]
  return cascade.CascadePipeline(stages, _fake_text_encoder)


def test_the_cascade_gives_each_frame_conditioned_stage_the_frames_at_its_size():
  pipe = _frame_cond_pipeline()
  rng = np.random.default_rng(0)
  clip = rng.integers(0, 256, (2, 12, 12, 3), np.uint8)  # any size: resized per stage
  given = pipe.given_frames(clip, 'interpolate', 3)
  # Both ends of the base's 4 frames; in the TSR stage (factor 2) base frame i is frame 2i.
  want = {0: [0, 3], 1: [0, 6], 2: [0, 6]}
  for i, positions in want.items():
    known, frames = given[i]
    spec = pipe.stages[i].spec
    assert known.shape == (3, spec.frames) and frames.shape == (
      3,
      spec.frames,
      spec.height,
      spec.width,
      3,
    )
    assert [list(np.flatnonzero(k)) for k in np.asarray(known)] == [positions] * 3
    resized = jax.image.resize(
      jnp.asarray(clip, jnp.float32) / 127.5 - 1,
      (2, spec.height, spec.width, 3),
      'bilinear',
      antialias=True,
    )
    np.testing.assert_allclose(np.asarray(frames[1])[positions], np.asarray(resized), atol=1e-6)
  # Only the stages that read given frames get them.
  assert set(_frame_cond_pipeline(reads=('base',)).given_frames(clip[:1], None, 1)) == {0}

  out = pipe('a red 3', seed=0, given=clip[0], progress=False, return_intermediates=True)
  again = pipe('a red 3', seed=0, given=clip[0], progress=False)
  np.testing.assert_array_equal(out.videos, again.videos)
  plain = pipe('a red 3', seed=0, progress=False)
  other = pipe('a red 3', seed=0, given=255 - clip[0], progress=False)
  assert np.abs(out.videos.astype(int) - plain.videos).max() > 0
  assert np.abs(out.videos.astype(int) - other.videos).max() > 0

  # One set per prompt: the same sets as one shared set, the same videos; another set
  # for the second prompt changes only its videos.
  prompts = ['a red 3', 'a blue 7']
  shared = pipe(prompts, seed=1, num_samples=2, given=clip[0], progress=False).videos
  per = pipe(prompts, seed=1, num_samples=2, given=clip[:1, None].repeat(2, 0), progress=False)
  np.testing.assert_array_equal(per.videos, shared)
  sets = np.stack([clip[:1], 255 - clip[:1]])
  mixed = pipe(prompts, seed=1, num_samples=2, given=sets, progress=False).videos
  np.testing.assert_array_equal(mixed[:2], shared[:2])
  assert np.abs(mixed[2:].astype(int) - shared[2:]).max() > 0

  for kwargs, msg in (
    (dict(given=sets[:1].repeat(3, 0)), '3 sets of given frames for 1 prompts'),
    (dict(given=clip), 'say where they go'),
    (dict(given=clip[:1], mode='interpolate'), 'interpolate takes 2 frames'),
    (dict(given=clip[..., :2]), 'must be RGB'),
    (dict(given=clip.astype(np.float32)), r'in \[-1, 1\]'),
    (dict(mode='animate'), 'without given frames'),
  ):
    with pytest.raises(ValueError, match=msg):
      pipe('a red 3', progress=False, **kwargs)
  with pytest.raises(ValueError, match='no stage of this cascade reads given frames'):
    _frame_cond_pipeline(reads=()).given_frames(clip[:1], None, 1)


def test_a_run_with_given_frames_and_frame_rates_warm_starts_from_a_plain_one_and_samples(
  tmp_path,
):
  import subprocess

  from PIL import Image

  from imagen_video_jax import export, io, training
  from imagen_video_jax.diffusion.extend import ExtendConfig

  def config(**fields):
    c = digits_config.get_config('stage=base,tiny=True')
    c.num_steps, c.log_every, c.checkpoint_every_steps, c.sample_every = 2, 1, 2, 0
    c.data.dir = str(tmp_path / 'data')
    for k, v in fields.items():
      setattr(c, k, v)
    return c

  plain = str(tmp_path / 'plain')
  training.train_and_evaluate(config(), plain)
  c = config(num_steps=4, init_from=plain)
  c.model.frame_cond = True
  c.frame_cond.p = 1.0  # every video row given frames
  c.model.fps_embed = True  # and its frame rate (fps conditioning): strides 1 and 2
  c.data.frame_strides = '1,2'
  c.data.image_fraction = 0.0
  c.optim.ema_decay = 0.0  # the export's EMA weights are the trained ones: 4 steps show
  run = str(tmp_path / 'given')
  result = training.train_and_evaluate(c, run)
  assert all(np.isfinite(h['loss']) for h in result.history)
  params = params_io.flatten_params(jax.device_get(result.state.params))
  kernel = params[f'{unet_lib.FRAME_CONDITIONING}/kernel']
  assert np.abs(kernel).max() > 0  # it learnt from the given frames (it starts at zero)
  _, plain_ema, _ = export.read_training_run(plain)
  new = set(params) - set(params_io.flatten_params(plain_ema))
  assert {n.split('/')[0] for n in new} == {unet_lib.FRAME_CONDITIONING, unet_lib.FPS_EMBEDDING}
  emb = [v for k, v in params.items() if k.startswith(unet_lib.FPS_EMBEDDING + '/fc2')]
  assert max(np.abs(v).max() for v in emb) > 0  # the rate embedding learnt too

  path, plain_path = str(tmp_path / 'cascade'), str(tmp_path / 'plain_cascade')
  export.export_training_runs([run], path)
  export.export_training_runs([plain], plain_path)
  assert export.load_cascade(path).stages[0].unet.frame_cond

  # The sample command animates an image exactly as the library does.
  image = np.random.default_rng(1).integers(0, 256, (20, 20, 3), np.uint8)
  Image.fromarray(image).save(tmp_path / 'start.png')
  out = tmp_path / 'out' / 'v.mp4'

  def sample(cascade_dir, *flags, out=out):
    cmd = [
      sys.executable,
      '-m',
      'imagen_video_jax.sample',
      f'--checkpoints={cascade_dir}',
      '--prompt=a red 3 moving left',
      '--seed=2',
      f'--output={out}',
      '--scale=1',
      '--noprogress',
      *flags,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)

  res = sample(path, f'--init_image={tmp_path / "start.png"}', '--fps=8')
  assert res.returncode == 0, res.stderr[-3000:]
  pipe = export.load_cascade(path)
  want = pipe('a red 3 moving left', seed=2, given=image, fps=8.0, progress=False)
  assert io.read_mp4(str(out))[1] == pytest.approx(8.0)  # the file plays at --fps
  sheet = np.asarray(Image.open(tmp_path / 'out' / 'v.png').convert('RGB'))
  np.testing.assert_array_equal(sheet, io.contact_sheet(want.videos[0]))
  plain_video = pipe('a red 3 moving left', seed=2, fps=8.0, progress=False).videos[0]
  assert np.abs(plain_video.astype(int) - want.videos[0]).max() > 0  # the image was read

  # The evaluation from real clips' first frames (what `evaluate --given=animate` runs).
  from imagen_video_jax.evaluation import judge as judge_lib, metrics

  report = metrics.evaluate_cascade(
    pipe, judge_lib.load_judge(), num_samples=2, given='animate', batch_size=4, progress=False
  )
  assert report['train_combinations']['num'] == report['held_out_combinations']['num'] == 2
  assert report['given']['clip_frames'] == [0] and report['given']['num_given'] == 1
  assert set(report['given']['mean_abs_error_by_stage']) == {'base'}

  # A long video (any cascade): twice its 8 frames, windows sharing 4, as the library.
  res = sample(path, '--length=16', '--extend=replacement', '--fps=8')
  assert res.returncode == 0, res.stderr[-3000:]
  ext = ExtendConfig('replacement', overlap=4)
  want = pipe('a red 3 moving left', seed=2, length=16, extend=ext, fps=8.0, progress=False)
  sheet = np.asarray(Image.open(tmp_path / 'out' / 'v.png').convert('RGB'))
  assert want.videos.shape[1] == 16
  np.testing.assert_array_equal(sheet, io.contact_sheet(want.videos[0]))

  (tmp_path / 'notes.txt').write_text('x')
  refused = tmp_path / 'refused' / 'v.mp4'
  for flags, msg in (
    ([f'--init_video={tmp_path / "start.png"}'], 'needs --mode=extend or --mode=interpolate'),
    (['--mode=extend'], 'needs --init_image or --init_video'),
    ([f'--init_image={tmp_path / "notes.txt"}'], "unknown file type '.txt'"),
    (
      [f'--init_video={tmp_path / "start.png"}', '--mode=interpolate'],
      'interpolate takes 2 frames',
    ),
    (['--length=16', f'--init_image={tmp_path / "start.png"}'], 'cannot be combined yet'),
  ):
    res = sample(path, *flags, out=refused)
    assert res.returncode == 1 and msg in res.stderr and 'Traceback' not in res.stderr, (
      flags,
      res.stderr[-2000:],
    )
  res = sample(plain_path, f'--init_image={tmp_path / "start.png"}', out=refused)
  assert res.returncode == 1 and 'no stage of this cascade reads given frames' in res.stderr
  res = sample(plain_path, '--fps=8', out=refused)
  assert res.returncode == 1 and 'no stage of this cascade reads a frame rate' in res.stderr
  assert not refused.parent.exists()  # nothing written


def test_given_frame_errors_measure_what_each_stage_hands_back():
  from types import SimpleNamespace

  from imagen_video_jax.evaluation import metrics
  from imagen_video_jax.stage import StageSpec

  stages = [
    SimpleNamespace(name='base', spec=StageSpec(frames=4, height=8, width=8)),
    SimpleNamespace(name='tsr', spec=StageSpec(frames=8, height=8, width=8, kind='tsr', factor=2)),
    SimpleNamespace(
      name='ssr', spec=StageSpec(frames=8, height=16, width=16, kind='ssr', factor=2)
    ),
  ]
  pipe = SimpleNamespace(stages=stages)
  stages[0].fps = 4.0
  # Clips at 8 fps against a base at 4: two clip frames per base frame; 6 fps: none whole.
  assert metrics.clip_step(pipe, 8.0) == 2 and metrics.clip_step(pipe, 4.0) == 1
  with pytest.raises(ValueError, match='whole number'):
    metrics.clip_step(pipe, 6.0)
  rng = np.random.default_rng(0)
  clips = rng.integers(0, 256, (3, 8, 16, 16, 3)).astype(np.uint8)
  frames, at = metrics.given_clip_frames(pipe, clips, 'interpolate', 2, 2)
  assert list(at) == [0, 6] and (frames == clips[:, [0, 6]]).all()  # base frame 3 = clip frame 6
  small = lambda v: np.asarray(
    jax.image.resize(v.astype(np.float32), v.shape[:2] + (8, 8, 3), 'bilinear', antialias=True)
  )
  # Videos that are the clips themselves (at each stage's size, base frames every other).
  videos = {'base': small(clips[:, ::2]), 'tsr': small(clips), 'ssr': clips.astype(np.float32)}
  errors = metrics.given_frame_errors(pipe, videos, clips, 'interpolate', 2, 2)
  assert max(errors['mean_abs_error_by_stage'].values()) < 1e-3
  # Black videos: the error is the given frames' mean value.
  black = {k: np.zeros_like(v) for k, v in videos.items()}
  errors = metrics.given_frame_errors(pipe, black, clips, 'interpolate', 2, 2)
  assert errors['mean_abs_error_by_stage']['ssr'] == pytest.approx(
    clips[:, [0, 6]].mean(), rel=1e-5
  )
  seq = clips[:, ::2].astype(float)
  assert errors['successive_base_frames'] == pytest.approx(np.abs(seq[:, 1:] - seq[:, :-1]).mean())
  with pytest.raises(ValueError, match='too short'):
    metrics.given_clip_frames(pipe, clips[:, :5], 'interpolate', 2, 2)
