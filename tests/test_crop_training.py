"""Training on random crops (`config.data.crop`), sampling at full size.

The pipeline cuts one window from the video, its full-size SR conditioning, its frame
ids and its captions; a network local in the cropped axes then computes on the crop
what it computes on the full clip, away from the window's edges by its receptive field.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from cli_util import run_module
from flax import linen as nn

from imagen_video_jax import planning
from imagen_video_jax import stage as stage_lib
from imagen_video_jax.configs import digits as digits_config
from imagen_video_jax.data import pipeline as P
from imagen_video_jax.data import records
from imagen_video_jax.diffusion import objectives
from imagen_video_jax.models import layers
from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.training import loop

STAGES = P.DIGITS_STAGES


# ------------------------------------------------------------------------------- data
@pytest.fixture(scope='module')
def noise_shards(tmp_path_factory):
  """Clips and stills of uniform noise: every window of every frame is unique, so a
  cropped row can be located in its full-size row without ambiguity."""
  out = tmp_path_factory.mktemp('noise')
  rng = np.random.default_rng(0)
  with records.ShardedWriter(str(out), records.VIDEO_PREFIX, 8) as w:
    for i in range(8):  # some clips shorter than a stage: padding frames (id -1)
      n = 12 if i % 4 == 3 else 20
      video = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
      w.write(records.Example(video=video, caption=f'clip {i}', fps=8))
  with records.ShardedWriter(str(out), records.IMAGE_PREFIX, 16) as w:
    for i in range(40):
      image = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
      w.write(records.Example(video=image, caption=f'image {i}'))
  return str(out)


def _tokenize(captions):
  """A stand-in tokenizer: one id per caption (a hash of it)."""
  ids = np.array([[1 + sum(map(ord, c)) % 997] for c in captions], np.int32)
  return ids, np.ones(ids.shape, bool)


def _batches(shards, stage, n, crop=P.Crop(), seed=0):
  cfg = P.PipelineConfig(
    batch_size=4,
    image_fraction=0.5,
    seed=seed,
    keep_captions=True,
    shard_index=0,
    shard_count=1,
    crop=crop,
  )
  it = iter(P.make_pipeline(STAGES[stage], cfg, shards, shards, tokenizer=_tokenize))
  return [next(it) for _ in range(n)]


def _locate(full_video, crop_video):
  """Every (t0, y0, x0) where crop_video is the window of full_video."""
  (t, h, w), (ct, ch, cw) = full_video.shape[:3], crop_video.shape[:3]
  return [
    (t0, y0, x0)
    for t0 in range(t - ct + 1)
    for y0 in range(h - ch + 1)
    for x0 in range(w - cw + 1)
    if np.array_equal(full_video[t0 : t0 + ct, y0 : y0 + ch, x0 : x0 + cw], crop_video)
  ]


def _check_rows(full, cropped, size, spec):
  """Each cropped row is one window of its full-size row: video, cond, ids, captions.

  Returns the windows' offsets."""
  offsets = []
  for b in range(len(full['video'])):
    fv, cv = full['video'][b], cropped['video'][b]
    assert cv.shape == (*size, 3)
    found = _locate(fv, cv)
    assert len(found) == 1, found
    t0, y0, x0 = off = found[0]
    offsets.append(off)
    win = np.s_[t0 : t0 + size[0], y0 : y0 + size[1], x0 : x0 + size[2]]
    # The conditioning is the full-size conditioning's window, not the crop's own.
    # (The window's conditioning comes from the source through composed resize weights:
    # the full-size path's values up to float32 rounding.)
    np.testing.assert_allclose(cropped['cond'][b], full['cond'][b][win], atol=1e-5)
    ids = full['frame_ids'][b][t0 : t0 + size[0]]
    np.testing.assert_array_equal(cropped['frame_ids'][b], P.renumber_frame_ids(ids))
    assert list(cropped['captions'][b]) == list(full['captions'][b][t0 : t0 + size[0]])
    # Per-frame text follows the cropped frames (padding frames have none).
    real = cropped['frame_ids'][b] >= 0
    want, _ = _tokenize(list(cropped['captions'][b]))
    np.testing.assert_array_equal(cropped['text_mask'][b][:, 0], real)
    np.testing.assert_array_equal(cropped['tokens'][b][real], want[real])
    np.testing.assert_array_equal(cropped['tokens'][b], full['tokens'][b][t0 : t0 + size[0]])
    assert spec.temporal_factor == 1 or t0 % spec.factor == 0
    assert spec.spatial_factor == 1 or (y0 % spec.factor == 0 and x0 % spec.factor == 0)
  return offsets


def test_ssr_crop_is_the_full_size_rows_window_random_and_seeded(noise_shards):
  spec = STAGES['ssr']
  crop = P.Crop(frames=8, height=16, width=16)
  full = _batches(noise_shards, 'ssr', 3)
  cropped = _batches(noise_shards, 'ssr', 3, crop)
  offsets = []
  for f, c in zip(full, cropped):
    offsets += _check_rows(f, c, crop.size(spec), spec)
  # Random: the rows' windows differ (12 rows; offsets take 9 x 9 x 9 values) ...
  assert len(set(offsets)) > 6
  assert any(y % 4 == 2 for _, y, _ in offsets)  # ... not only multiples of 4
  # ... and deterministic given the seed; another seed crops (and draws) otherwise.
  again = _batches(noise_shards, 'ssr', 3, crop)
  for a, b in zip(cropped, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  other = _batches(noise_shards, 'ssr', 1, crop, seed=1)[0]
  assert not np.array_equal(other['video'], cropped[0]['video'])
  # Packed image rows keep ids 0..k-1 and their own captions; video rows stay all 0.
  for c in cropped:
    for ids, caps in zip(c['frame_ids'], c['captions']):
      real = ids[ids >= 0]
      if caps[0].startswith('image'):
        # (captions need not differ: an image can recur where the images' epochs meet)
        assert real.tolist() == list(range(len(real)))
      else:
        assert set(real.tolist()) == {0}


def test_tsr_crop_keeps_the_conditioning_phase(noise_shards):
  spec = STAGES['tsr']
  crop = P.Crop(frames=6)
  size = crop.size(spec)
  assert size == (6, 16, 16)
  full = _batches(noise_shards, 'tsr', 3)
  cropped = _batches(noise_shards, 'tsr', 3, crop)
  offsets, padded = [], 0
  for f, c in zip(full, cropped):
    offsets += _check_rows(f, c, size, spec)
    for b, (t0, _, _) in enumerate(offsets[-len(c['video']) :]):
      # The conditioning is sr_condition's output on the full row, windowed.
      want = P.sr_condition(f['video'][b], f['frame_ids'][b], spec)[t0 : t0 + 6]
      np.testing.assert_array_equal(c['cond'][b], want)
      padded += int((c['frame_ids'][b] < 0).sum())
  assert all(t0 % 2 == 0 for t0, _, _ in offsets)
  assert len({t0 for t0, _, _ in offsets}) > 2  # random temporal offsets
  assert padded > 0  # short clips' padding frames were cropped too, and stay -1


def test_frame_ids_are_renumbered_in_order_of_first_appearance():
  row = {
    'video': np.arange(10, dtype=np.float32)[:, None, None, None] * np.ones((10, 4, 4, 3)),
    'frame_ids': np.array([0, 1, 2, 3, 4, 5, 6, 7, -1, -1], np.int32),
    'captions': [f'c{i}' for i in range(8)] + ['', ''],
  }
  out = P.crop_row(row, (3, 1, 0), (6, 2, 4))
  assert out['frame_ids'].tolist() == [0, 1, 2, 3, 4, -1]
  assert out['captions'] == ['c3', 'c4', 'c5', 'c6', 'c7', '']
  assert out['video'].shape == (6, 2, 4, 3) and out['video'][:, 0, 0, 0].tolist() == [
    3,
    4,
    5,
    6,
    7,
    8,
  ]
  video_row = dict(row, frame_ids=np.array([0] * 7 + [-1] * 3, np.int32))
  assert P.crop_row(video_row, (4, 0, 0), (5, 4, 4))['frame_ids'].tolist() == [0, 0, 0, -1, -1]
  assert P.renumber_frame_ids(np.array([5, 5, 2, -1, 2, 9])).tolist() == [0, 0, 1, -1, 1, 2]


# ------------------------------------------------------------------- the same function
def _tiny_sr_unet():
  """SSR-shaped, no attention anywhere: temporal mixing is TemporalConv only."""
  return unet_lib.UNetConfig(
    levels=(
      unet_lib.LevelConfig(8, 1, temporal='conv'),
      unet_lib.LevelConfig(16, 1, temporal='conv'),
    ),
    cond_channels=3,
    cond_augment=True,
    emb_dim=16,
    head_dim=8,
  )


def temporal_radius(cfg: unet_lib.UNetConfig) -> int:
  """Frames each side one output frame reads: every TemporalConv block on the U-Net's
  path (num_res_blocks on the way down and again on the way up, per level) adds
  kernel_size // 2."""
  blocks = sum(2 * lv.num_res_blocks for lv in cfg.levels if lv.temporal == 'conv')
  return blocks * (layers.TemporalConv.kernel_size // 2)


def _random_params(params, key, scale=0.3, temporal_scale=1.0):
  """Init params plus noise: the zero-initialised TemporalConv and conv_out kernels
  become non-zero (the temporal ones large), so frames really do mix."""
  leaves, tree = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(key, len(leaves))
  noisy = [
    p
    + (temporal_scale if 'temporal_conv' in jax.tree_util.keystr(path) else scale)
    * jax.random.normal(k, p.shape, p.dtype)
    for (path, p), k in zip(leaves, keys)
  ]
  return jax.tree.unflatten(tree, noisy)


def test_temporal_crop_loss_equals_full_clip_loss_away_from_the_edges():
  cfg = _tiny_sr_unet()
  r = temporal_radius(cfg)
  assert r == 4
  b, t, h, w = 2, 16, 16, 16
  s, ct = 2, 3 * r  # crop frames [s, s + ct): an interior [r, ct - r) of r frames
  model = unet_lib.VideoUNet(cfg)
  params = nn.unbox(unet_lib.init_params(cfg, jax.random.key(0), frames=t, height=h, width=w))
  params = _random_params(params, jax.random.key(1))
  kx, kc, ke = jax.random.split(jax.random.key(2), 3)
  x = jax.random.uniform(kx, (b, t, h, w, 3), minval=-1, maxval=1)
  cond = jax.random.uniform(kc, (b, t, h, w, 3), minval=-1, maxval=1)
  eps = jax.random.normal(ke, x.shape)
  tt = jnp.array([0.3, 0.7])  # one time per row
  cond_logsnr = jnp.full((b,), -1.0)
  config = objectives.DiffusionConfig()  # v-prediction, uniform weights

  def error_map(x, cond, eps):
    logsnr = config.schedule.logsnr(tt)
    z = objectives.noisy(x, eps, logsnr)
    out = model.apply({'params': params}, z, logsnr, None, None, None, cond, cond_logsnr)
    return jnp.square(out - objectives.target(x, eps, logsnr, 'v'))

  crop = np.s_[:, s : s + ct]
  full_err = np.asarray(error_map(x, cond, eps))[crop]
  crop_err = np.asarray(error_map(x[crop], cond[crop], eps[crop]))
  # The same function farther than r frames from the window's edges ...
  inner = np.abs(crop_err[:, r : ct - r] - full_err[:, r : ct - r]).max()
  np.testing.assert_allclose(crop_err[:, r : ct - r], full_err[:, r : ct - r], atol=1e-5)
  # ... but not within r: the window's edge is a clip edge to the network.
  for f in (r - 1, ct - r):
    edge = np.abs(crop_err[:, f] - full_err[:, f]).max()
    assert edge > 1e-4 and edge > 100 * inner, (f, edge, inner)

  # The crop's training loss is the mean of its error map (the region it covers).
  apply = lambda z, logsnr: model.apply(
    {'params': params}, z, logsnr, None, None, None, cond[crop], cond_logsnr
  )
  loss, _ = objectives.diffusion_loss(apply, x[crop], None, config=config, t=tt, eps=eps[crop])
  np.testing.assert_allclose(float(loss), crop_err.mean(), rtol=1e-5)


def test_spatial_crop_windows_of_target_noise_and_cond_are_aligned(noise_shards):
  """A spatial crop is the same function only for a network local in space: checked
  with a stack of per-frame convolutions (the U-Net's own layer) on a pipeline-made SSR
  row and the pipeline's crop. The U-Net itself is not: FrameGroupNorm's statistics
  are per whole frame (and spatial self-attention, where a level has it, sees the
  whole frame), which the last assertion shows."""
  spec = STAGES['ssr']
  row = P.stage_example(P._source(noise_shards, records.VIDEO_PREFIX)[0], spec)
  size = (spec.frames, 16, 16)
  off = P.crop_window(spec, size, np.random.default_rng(3))
  assert off[1] % 2 == 0 and off[2] % 2 == 0 and off[1:] != (0, 0)
  y0, x0 = off[1:]
  cropped = P.crop_row(row, off, size)
  x_c, cond_c = cropped['video'], cropped['cond']
  eps = np.random.default_rng(4).normal(size=row['video'].shape).astype(np.float32)
  eps_c = eps[:, y0 : y0 + 16, x0 : x0 + 16]  # the noise of the same window

  class Local(nn.Module):
    @nn.compact
    def __call__(self, z, cond):
      h = jnp.concatenate([z, cond], -1)
      h = nn.silu(layers.conv(8, (1, 3, 3), dtype=jnp.float32, name='conv_in')(h))
      return layers.conv(3, (1, 3, 3), dtype=jnp.float32, name='conv_out')(h)

  radius = 2  # two 3x3 convolutions
  logsnr = jnp.array([0.5])

  def error_map(fn, x, cond, eps):
    z = objectives.noisy(x[None], eps[None], logsnr)
    out = fn(z, cond[None], logsnr)
    return np.asarray(jnp.square(out - objectives.target(x[None], eps[None], logsnr, 'v')))[0]

  local = Local()
  lp = local.init(jax.random.key(0), row['video'][None], row['cond'][None])
  apply_local = lambda z, c, _: local.apply(lp, z, c)
  full = error_map(apply_local, row['video'], row['cond'], eps)[:, y0 : y0 + 16, x0 : x0 + 16]
  part = error_map(apply_local, x_c, cond_c, eps_c)
  inner = np.s_[:, radius:-radius, radius:-radius]
  np.testing.assert_allclose(part[inner], full[inner], atol=1e-6)
  assert np.abs(part[:, 0] - full[:, 0]).max() > 1e-4  # the window's border is padding
  # A misaligned conditioning window (off by one pixel) would not be the same function.
  shifted = row['cond'][:, y0 + 1 : y0 + 17, x0 : x0 + 16]
  assert np.abs(error_map(apply_local, x_c, shifted, eps_c)[inner] - full[inner]).max() > 1e-4

  # The U-Net (per-frame GroupNorm over the whole frame): not the same in the interior.
  cfg = _tiny_sr_unet()
  model = unet_lib.VideoUNet(cfg)
  params = nn.unbox(unet_lib.init_params(cfg, jax.random.key(0), frames=2, height=32, width=32))
  params = _random_params(params, jax.random.key(1))
  apply_unet = lambda z, c, ls: model.apply(
    {'params': params}, z, ls, None, None, None, c, jnp.zeros((1,))
  )
  two = np.s_[:2]
  full_u = error_map(apply_unet, row['video'][two], row['cond'][two], eps[two])
  part_u = error_map(apply_unet, x_c[two], cond_c[two], eps_c[two])
  full_u = full_u[:, y0 : y0 + 16, x0 : x0 + 16]
  assert np.abs(part_u[:, 6:10, 6:10] - full_u[:, 6:10, 6:10]).max() > 1e-3


# ------------------------------------------------------------------------ config errors
def _config(stage='ssr', **crop):
  c = digits_config.get_config(f'stage={stage},tiny=True')
  c.data.crop.update(crop)
  return c


def test_crop_config_errors_name_the_field_the_limit_and_the_fix():
  with pytest.raises(loop.ConfigError, match=r'data\.crop\.height=40 is outside \[1, 32\]'):
    loop.validate(_config(height=40))
  with pytest.raises(loop.ConfigError, match=r'data\.crop\.width=15 is not a multiple of the ssr'):
    loop.validate(_config(width=15))
  with pytest.raises(loop.ConfigError, match=r'data\.crop\.frames=5 is not a multiple of the tsr'):
    loop.validate(_config('tsr', frames=5))
  with pytest.raises(loop.ConfigError, match='outside'):
    loop.validate(_config('base', frames=9))  # the base stage has 8 frames
  with pytest.raises(loop.ConfigError, match=r'not divisible by 2, the U-Net.s downsample'):
    loop.validate(_config('base', height=15))  # any size on a base stage, but the U-Net
  full = digits_config.get_config('stage=ssr')  # 4 levels: sizes must be multiples of 8
  full.data.crop.height = 20
  with pytest.raises(loop.ConfigError, match='multiples of 8'):
    loop.validate(full)
  with pytest.raises(ValueError, match=r'data\.crop\.height must be an integer'):
    P.Crop(height=16.5)
  # What fits: a spatial crop on SSR, a temporal one on TSR, any on base; and no crop.
  for stage, crop in (('ssr', dict(height=16, width=16)), ('tsr', dict(frames=8))):
    loop.validate(_config(stage, **crop))
  loop.validate(_config('base', frames=5, height=8))
  c = _config()
  del c.data['crop']
  loop.validate(c)
  assert loop.train_clip_size(c, STAGES['ssr']) == (16, 32, 32)


def test_training_clip_size_reaches_the_memory_planner():
  c = _config(frames=8, height=16)
  spec, model_cfg = STAGES['ssr'], unet_lib.UNetConfig.from_dict(dict(c.model))
  assert loop.train_clip_size(c, spec) == (8, 16, 32)
  batch = planning.abstract_batch(c, model_cfg, spec, None)
  assert batch['video'].shape == (2, 8, 16, 32, 3) and batch['cond'].shape == (2, 8, 16, 32, 3)
  assert batch['frame_ids'].shape == (2, 8) and batch['tokens'].shape[:2] == (2, 8)


# ----------------------------------------------------------------------- end to end
@pytest.mark.slow  # a longer end-to-end run: make test-all
def test_crop_trained_ssr_stage_exports_and_samples_at_full_size(tmp_path):
  from PIL import Image

  from imagen_video_jax import export, sampling
  from imagen_video_jax.diffusion.samplers import SamplerConfig

  workdir, out = tmp_path / 'ssr', tmp_path / 'exported'
  res = run_module(
    'train',
    '--config=configs/digits.py:stage=ssr,tiny=True',
    f'--workdir={workdir}',
    f'--config.data.dir={tmp_path / "data"}',
    '--config.data.crop.frames=8',
    '--config.data.crop.height=16',
    '--config.data.crop.width=16',
    '--config.num_steps=2',
    '--config.log_every=1',
    '--config.checkpoint_every_steps=2',
    '--config.sample_every=2',
    '--config.sample.num=1',
    '--config.sample.steps=2',
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert res.returncode == 0, res.stderr[-3000:]
  # The train step saw 8x16x16 clips: its sample video (made at the batch's size, with
  # the conditioning under it) has 8 frames of (16 + 1 + 16) x 16 pixels, 4x upscaled.
  gif = Image.open(workdir / 'samples' / 'step_00000002.gif')
  assert gif.n_frames == 8 and gif.size == (16 * 4, 33 * 4)
  saved, ema, step = export.read_training_run(str(workdir))
  assert step == 2 and saved['data']['crop'] == {'frames': 8, 'height': 16, 'width': 16}

  # Exported as export_cascade exports each run (a cascade must start at a base stage):
  # the stage the saved config describes, with the run's EMA weights.
  export.save_stage(str(out), stage_lib.from_config(saved, ema))
  with open(out / 'stage.json') as f:
    assert json.load(f)['spec'] == {
      'frames': 16,
      'height': 32,
      'width': 32,
      'frame_stride': 1,
      'kind': 'ssr',
      'factor': 2,
    }
  stage = export.load_stage(str(out))
  assert (stage.spec.frames, stage.spec.height, stage.spec.width) == (16, 32, 32)
  config = digits_config.get_config('stage=ssr,tiny=True')
  config.data.dir = str(tmp_path / 'data')
  mesh, _, _ = loop.make_mesh(config.mesh)
  tokenize, _, t5_model, t5_params = loop.make_text(config, config.data.dir, mesh)
  tok = tokenize(['a red 3 moving left'])
  emb, mask = t5_model.apply({'params': t5_params}, tok.ids, tok.mask), tok.mask
  low = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 16, 3)), jnp.float32)
  video = jax.jit(
    lambda p, k: sampling.sample_stage(
      stage,
      p,
      k,
      1,
      text_emb=jnp.asarray(emb),
      text_mask=jnp.asarray(mask),
      low=low,
      sampler=SamplerConfig(steps=2),
    )
  )(stage.params, jax.random.key(0))
  video = np.asarray(video)
  assert video.shape == (1, 16, 32, 32, 3)
  assert np.isfinite(video).all() and video.std() > 1e-3


def test_runs_saved_before_crops_existed_resume_without_one():
  from imagen_video_jax.training.checkpointing import config_differences

  saved = {'data': {'batch_size': 2}}
  now = {'data': {'batch_size': 2, 'crop': {'frames': 0, 'height': 0, 'width': 0}}}
  assert config_differences(saved, now) == []
  now['data']['crop']['height'] = 16  # a crop changes what the run learns
  assert config_differences(saved, now) == ['data.crop.height: checkpoint "<absent>", now 16']


def test_shipped_configs_crop_only_the_fully_convolutional_paper_stage():
  from imagen_video_jax.configs import imagen_video
  from imagen_video_jax.training import loop

  for module, stages in (
    (digits_config, digits_config.STAGES),
    (imagen_video, imagen_video.STAGES),
  ):
    for s in stages:
      config = module.get_config(f'stage={s}')
      crop = config.data.crop
      assert isinstance(crop, ml_collections.ConfigDict)
      if (module, s) == (imagen_video, 'ssr3'):
        # spatial crops only: the stage has no attention, so no layer but GroupNorm sees
        # beyond a pixel's neighbourhood
        assert dict(crop) == {'frames': 128, 'height': 192, 'width': 320}
        stage = loop.validate(config)  # a valid crop (factor, downsampling)
        assert not any(l.spatial_attention or l.cross_attention for l in stage.unet.levels)
        assert (stage.spec.height, stage.spec.width) == (768, 1280)  # samples at full size
      else:
        assert dict(crop) == {'frames': 0, 'height': 0, 'width': 0}, (module.__name__, s)


@pytest.mark.parametrize('stage', ['ssr', 'tsr', 'base'])
def test_a_windowed_row_is_the_full_rows_window(noise_shards, stage):
  """The pipeline makes cropped rows without the full-size row: the same video bit for
  bit, the conditioning up to float32 rounding, the same ids and captions."""
  spec = STAGES[stage]
  size = {'ssr': (8, 16, 16), 'tsr': (8, 16, 16), 'base': (4, 8, 8)}[stage]
  clips = P._source(noise_shards, records.VIDEO_PREFIX)
  images = P._source(noise_shards, records.IMAGE_PREFIX)
  rng = np.random.default_rng(5)
  for i in range(4):
    off = P.crop_window(spec, size, rng)
    for full, part in (
      (P.stage_example(clips[i], spec), P.stage_example(clips[i], spec, 0, (off, size))),
      (
        P.pack_images([images[j] for j in range(i, i + 5)], spec),  # 5 images, then padding
        P.pack_images([images[j] for j in range(i, i + 5)], spec, (off, size)),
      ),
    ):
      want = P.crop_row(full, off, size)
      np.testing.assert_array_equal(part['video'], want['video'])
      np.testing.assert_array_equal(part['frame_ids'], want['frame_ids'])
      assert list(part['captions']) == list(want['captions'])
      assert ('cond' in part) == ('cond' in want) == spec.is_sr
      if spec.is_sr:
        np.testing.assert_allclose(part['cond'], want['cond'], atol=1e-5)
