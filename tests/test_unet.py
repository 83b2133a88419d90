"""VideoUNet: frame independence, identity inflation, config validation, axis names."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.models.unet import LevelConfig, UNetConfig, VideoUNet

T, H, W = 4, 8, 8


def _config(temporal, *, sr=False):
  return UNetConfig(
      levels=(LevelConfig(16, 1, spatial_attention=True, temporal=temporal, cross_attention=True),
              LevelConfig(32, 1, spatial_attention=True, temporal=temporal, cross_attention=True)),
      text_dim=12, emb_dim=32, head_dim=8, cond_channels=3 if sr else 0, cond_augment=sr)


@functools.lru_cache(maxsize=None)
def _init(cfg):
  return nn.unbox(unet_lib.init_params(cfg, jax.random.key(0), frames=T, height=H, width=W))


def _randomised_params(cfg, seed):
  """Initialised params with every leaf perturbed, so zero-initialised layers are live."""
  return _perturb(_init(cfg), seed)


def _perturb(params, seed, skip_temporal=False):
  """Adds N(0, 0.2^2) to every leaf. numpy, not jax.random: no per-shape compiles."""
  rng = np.random.default_rng(seed)
  def f(path, p):
    if skip_temporal and any('temporal' in str(getattr(k, 'key', '')) for k in path):
      return p
    return p + 0.2 * rng.standard_normal(p.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(f, params)


def _inputs(key, b=1, t=T):
  k = jax.random.split(key, 4)
  x = jax.random.normal(k[0], (b, t, H, W, 3))
  logsnr = jax.random.normal(k[1], (b,))
  text = jax.random.normal(k[2], (b, 5, 12))
  mask = jnp.array([[True, True, True, False, False]] * b)
  return x, logsnr, text, mask


@pytest.mark.parametrize('temporal', ['attention', 'conv'])
def test_packed_images_are_independent_but_video_frames_are_not(temporal):
  cfg = _config(temporal)
  params = _randomised_params(cfg, 1)
  x, logsnr, text, mask = _inputs(jax.random.key(2))
  model = VideoUNet(cfg)

  @jax.jit
  def jac_blocks(frame_ids):
    """[T, T]: max |d out_i| for a random tangent on input frame j only (one jvp per j)."""
    f = lambda xx: model.apply({'params': params}, xx, logsnr, text, mask, frame_ids)
    tangents = jax.random.normal(jax.random.key(3), (T,) + x.shape)
    tangents = tangents * jnp.eye(T)[:, None, :, None, None, None]
    out_t = jax.vmap(lambda v: jax.jvp(f, (x,), (v,))[1])(tangents)  # [j, B, i, H, W, C]
    return jnp.max(jnp.abs(out_t[:, 0]), axis=(2, 3, 4)).T  # [i, j]

  packed = jac_blocks(jnp.arange(T, dtype=jnp.int32)[None])
  off_diag = packed * (1 - jnp.eye(T))
  assert float(jnp.max(off_diag)) == 0.0, f'packed images leak across frames:\n{packed}'
  assert float(jnp.min(jnp.diag(packed))) > 0.0
  video = jac_blocks(jnp.zeros((1, T), jnp.int32))
  assert float(jnp.min(video)) > 1e-6, f'video frames must all interact:\n{video}'
  # Two clips of two frames each: connected within a clip, never across.
  two = jac_blocks(jnp.array([[0, 0, 1, 1]], jnp.int32))
  assert float(two[0, 1]) > 1e-6 and float(two[3, 2]) > 1e-6
  assert float(two[0, 2]) == float(two[1, 3]) == float(two[2, 1]) == 0.0


@pytest.mark.parametrize('temporal', ['attention', 'conv'])
def test_fresh_temporal_layers_equal_the_per_frame_image_model(temporal):
  cfg = _config(temporal, sr=True)
  params = _init(cfg)
  # Randomise everything except the temporal layers, which stay as initialised.
  params = _perturb(params, 3, skip_temporal=True)
  x, logsnr, text, mask = _inputs(jax.random.key(4), b=2)
  cond = jax.random.normal(jax.random.key(5), x.shape)
  cond_logsnr = jnp.array([1.0, -2.0])
  apply = jax.jit(VideoUNet(cfg).apply)
  video = apply({'params': params}, x, logsnr, text, mask, None, cond, cond_logsnr)
  frames = [apply({'params': params}, x[:, i:i + 1], logsnr, text, mask, None,
                  cond[:, i:i + 1], cond_logsnr) for i in range(T)]
  np.testing.assert_allclose(video, jnp.concatenate(frames, axis=1), atol=1e-5, rtol=1e-5)
  assert float(jnp.std(video)) > 1e-2  # the comparison is not between zeros


def test_temporal_layers_are_zero_initialised_not_the_rest():
  cfg = _config('attention')
  params = _init(cfg)
  attn_out = params['down0_block0']['temporal_attn']['attn']['out']['kernel']
  assert float(jnp.max(jnp.abs(attn_out))) == 0.0
  assert float(jnp.max(jnp.abs(params['down0_block0']['res']['conv1']['kernel']))) > 0.0
  conv = _init(_config('conv'))
  assert float(jnp.max(jnp.abs(conv['up1_block0']['temporal_conv']['conv']['kernel']))) == 0.0


def test_padding_frames_do_not_affect_real_frames():
  cfg = _config('attention')
  params = _randomised_params(cfg, 6)
  x, logsnr, text, mask = _inputs(jax.random.key(7))
  ids = jnp.array([[0, 0, 0, -1]], jnp.int32)
  apply = jax.jit(VideoUNet(cfg).apply)
  out1 = apply({'params': params}, x, logsnr, text, mask, ids)
  out2 = apply({'params': params}, x.at[:, 3].set(100.0), logsnr, text, mask, ids)
  np.testing.assert_allclose(out1[:, :3], out2[:, :3], atol=1e-6)
  out3 = apply({'params': params}, x[:, :3], logsnr, text, mask, ids[:, :3])
  np.testing.assert_allclose(out1[:, :3], out3, atol=1e-5)


def test_per_frame_text_matches_per_row_text_when_repeated():
  cfg = _config('conv')
  params = _randomised_params(cfg, 8)
  x, logsnr, text, mask = _inputs(jax.random.key(9), b=2)
  model = VideoUNet(cfg)
  model.apply = jax.jit(model.apply)
  row = model.apply({'params': params}, x, logsnr, text, mask)
  per_frame = model.apply({'params': params}, x, jnp.repeat(logsnr[:, None], T, 1),
                          jnp.repeat(text[:, None], T, 1), jnp.repeat(mask[:, None], T, 1))
  np.testing.assert_allclose(row, per_frame, atol=1e-5, rtol=1e-5)
  # ... and a different caption on one frame changes only that frame of a packed row.
  ids = jnp.arange(T, dtype=jnp.int32)[None].repeat(2, 0)
  text2 = jnp.repeat(text[:, None], T, 1).at[:, 2].multiply(-1.0)
  a = model.apply({'params': params}, x, logsnr, jnp.repeat(text[:, None], T, 1),
                  jnp.repeat(mask[:, None], T, 1), ids)
  b = model.apply({'params': params}, x, logsnr, text2, jnp.repeat(mask[:, None], T, 1), ids)
  diff = jnp.max(jnp.abs(a - b), axis=(0, 2, 3, 4))
  assert float(diff[2]) > 1e-4 and float(jnp.max(diff.at[2].set(0))) == 0.0


def test_null_text_is_finite():
  cfg = _config('attention')
  params = _randomised_params(cfg, 10)
  x, logsnr, text, _ = _inputs(jax.random.key(11))
  out = VideoUNet(cfg).apply({'params': params}, x, logsnr, text, jnp.zeros((1, 5), bool))
  assert bool(jnp.all(jnp.isfinite(out)))


def test_every_param_has_logical_axis_names():
  cfg = _config('attention', sr=True)
  boxed = unet_lib.init_params(cfg, jax.random.key(0), frames=T, height=H, width=W)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
    assert len(leaf.names) == leaf.value.ndim, (leaf.names, leaf.value.shape)
    # the big axes are named so they can be sharded
    if leaf.value.ndim >= 2 and leaf.value.size > 256:
      assert any(n is not None for n in leaf.names), leaf.names


def test_config_validation_errors_are_clear():
  with pytest.raises(ValueError, match="temporal is 'lstm'"):
    UNetConfig(levels=(LevelConfig(8, temporal='lstm'),))
  with pytest.raises(ValueError, match='text_dim is None'):
    UNetConfig(levels=(LevelConfig(8, cross_attention=True),))
  with pytest.raises(ValueError, match='levels is empty'):
    UNetConfig(levels=())
  cfg = UNetConfig(levels=(LevelConfig(8), LevelConfig(8), LevelConfig(8)))
  with pytest.raises(ValueError, match='divisible by 4'):
    cfg.check_inputs((1, 4, 12, 10, 3))
  with pytest.raises(ValueError, match='divisible by 4'):  # raised before anything compiles
    VideoUNet(cfg).init(jax.random.key(0), jnp.zeros((1, 4, 12, 10, 3)), jnp.zeros(1))
  sr = UNetConfig(levels=(LevelConfig(8),), cond_channels=3)
  with pytest.raises(ValueError, match='super-resolution'):
    sr.check_inputs((1, 4, 8, 8, 3))


def test_config_round_trips_through_a_dict():
  cfg = _config('attention', sr=True)
  assert UNetConfig.from_dict(cfg.to_dict()) == cfg


def test_count_params_matches_initialised_params():
  cfg = _config('conv')
  params = _init(cfg)
  assert unet_lib.count_params(cfg) == sum(p.size for p in jax.tree.leaves(params))


def test_bfloat16_compute_tracks_float32():
  import dataclasses
  cfg = _config('attention')
  params = _randomised_params(cfg, 12)
  x, logsnr, text, mask = _inputs(jax.random.key(13))
  f32 = jax.jit(VideoUNet(cfg).apply)({'params': params}, x, logsnr, text, mask)
  bf16_model = VideoUNet(dataclasses.replace(cfg, dtype='bfloat16'))
  bf16 = jax.jit(bf16_model.apply)({'params': params}, x, logsnr, text, mask)
  assert bf16.dtype == jnp.float32  # outputs stay float32 whatever the compute dtype
  rel = float(jnp.linalg.norm(bf16 - f32) / jnp.linalg.norm(f32))
  assert rel < 0.05, rel


@pytest.mark.parametrize('kernel,strides', [((1, 3, 3), (1, 1)), ((1, 3, 3), (2, 2)),
                                            ((1, 1, 1), (1, 1))])
def test_frame_conv_equals_the_flax_3d_conv_it_replaces(kernel, strides):
  # FrameConv runs as a 2-D conv over B*T frames (faster on CPU) but must hold the same
  # parameters and compute the same function as nn.Conv(kernel) on [B, T, H, W, C]:
  # checkpoints made before the change load and sample unchanged.
  from imagen_video_jax.models import layers
  x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 5))
  ours = layers.FrameConv(7, kernel, strides=strides)
  ref = nn.Conv(7, kernel, strides=(1, *strides), padding='SAME')
  p = jax.jit(ours.init)(jax.random.key(1), x)
  p_ref = jax.jit(ref.init)(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, nn.unbox(p)) == jax.tree.map(jnp.shape, p_ref)
  p = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape),
                   nn.unbox(p))  # a nonzero bias too
  np.testing.assert_allclose(ours.apply(p, x), ref.apply(p, x), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='temporal size of 1'):
    layers.FrameConv(7, (3, 1, 1)).init(jax.random.key(1), x)
