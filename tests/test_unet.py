"""VideoUNet: frame independence, identity inflation, config validation, axis names."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.models.unet import LevelConfig, UNetConfig, VideoUNet

T, H, W = 4, 8, 8
B, L = 2, 5

# These tests check what the compiled programs compute, not how fast they run: LLVM at -O0
# compiles the U-Net's initialiser 4-10x faster on CPU (its threefry code is most of a
# small model's compile time) and a forward 2-3x. The HLO and XLA's passes over it are the
# usual ones; only the machine code is less optimised.
_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _config(temporal):
  # Every test runs the super-resolution form: the same layers as the base model plus the
  # conditioning video and its noise level, so two configs (and two compiled initialisers
  # and forwards, shared by the tests below) cover every layer.
  return UNetConfig(
    levels=(
      LevelConfig(16, 1, spatial_attention=True, temporal=temporal, cross_attention=True),
      LevelConfig(32, 1, spatial_attention=True, temporal=temporal, cross_attention=True),
    ),
    text_dim=12,
    emb_dim=32,
    head_dim=8,
    cond_channels=3,
    cond_augment=True,
  )


@functools.lru_cache(maxsize=None)
def _init(cfg):
  params = _jit(unet_lib.init_fn(cfg, frames=T, height=H, width=W))(jax.random.key(0))
  return nn.unbox(params)


@functools.lru_cache(maxsize=None)
def _apply(cfg):
  """One jitted apply per config: calls with the same shapes reuse one compiled program."""
  return _jit(VideoUNet(cfg).apply)


def _run(cfg, params, x, logsnr, text, mask, ids, cond, cond_logsnr):
  return _apply(cfg)({'params': params}, x, logsnr, text, mask, ids, cond, cond_logsnr)


@functools.lru_cache(maxsize=None)
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


def _inputs(seed):
  """x, logsnr, text, mask, frame_ids (one video per row), cond, cond_logsnr; batch B."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((B, T, H, W, 3)).astype(np.float32)
  logsnr = rng.standard_normal(B).astype(np.float32)
  text = rng.standard_normal((B, L, 12)).astype(np.float32)
  mask = np.arange(L)[None] < np.array([[3], [L]])  # a padded caption and a full one
  ids = np.zeros((B, T), np.int32)
  cond = rng.standard_normal((B, T, H, W, 3)).astype(np.float32)
  return x, logsnr, text, mask, ids, cond, np.array([1.0, -2.0], np.float32)


def _per_frame(a):
  """A per-row array [B, ...] repeated as the same value for each frame: [B, T, ...]."""
  return np.repeat(np.asarray(a)[:, None], T, 1)


@functools.lru_cache(maxsize=None)
def _jac_blocks(cfg):
  """(params, inputs, frame_ids) -> [B, T, T]: max |d out_i| for a random tangent on frame j.

  One jvp per input frame j (of every row at once), in one program compiled per config.
  """
  model = VideoUNet(cfg)

  @_jit
  def jac(params, x, logsnr, text, mask, frame_ids, cond, cond_logsnr):
    f = lambda xx: model.apply(
      {'params': params}, xx, logsnr, text, mask, frame_ids, cond, cond_logsnr
    )
    tangents = jax.random.normal(jax.random.key(3), (T,) + x.shape)
    tangents = tangents * jnp.eye(T)[:, None, :, None, None, None]
    out_t = jax.vmap(lambda v: jax.jvp(f, (x,), (v,))[1])(tangents)  # [j, B, i, H, W, C]
    return jnp.transpose(jnp.max(jnp.abs(out_t), axis=(3, 4, 5)), (1, 2, 0))  # [B, i, j]

  return jac


@pytest.mark.parametrize('temporal', ['attention', 'conv'])
def test_packed_images_are_independent_but_video_frames_are_not(temporal):
  cfg = _config(temporal)
  params = _randomised_params(cfg, 1)
  x, logsnr, text, mask, _, cond, cond_logsnr = _inputs(2)
  jac = functools.partial(_jac_blocks(cfg), params, x, logsnr, text, mask)
  blocks = lambda ids: jac(np.repeat(np.array([ids], np.int32), B, 0), cond, cond_logsnr)

  # Both rows (a padded and a full caption) are checked, each frame pair of each.
  packed = blocks(list(range(T)))
  off_diag = packed * (1 - jnp.eye(T))
  assert float(jnp.max(off_diag)) == 0.0, f'packed images leak across frames:\n{packed}'
  assert float(jnp.min(jnp.diagonal(packed, axis1=1, axis2=2))) > 0.0
  video = blocks([0] * T)
  assert float(jnp.min(video)) > 1e-6, f'video frames must all interact:\n{video}'
  # Two clips of two frames each: connected within a clip, never across.
  two = blocks([0, 0, 1, 1])
  assert float(jnp.min(two[:, 0, 1])) > 1e-6 and float(jnp.min(two[:, 3, 2])) > 1e-6
  across = two[:, :2, 2:], two[:, 2:, :2]
  assert float(jnp.max(across[0])) == float(jnp.max(across[1])) == 0.0, two


@pytest.mark.parametrize('temporal', ['attention', 'conv'])
def test_fresh_temporal_layers_equal_the_per_frame_image_model(temporal):
  cfg = _config(temporal)
  # Randomise everything except the temporal layers, which stay as initialised.
  params = _perturb(_init(cfg), 3, skip_temporal=True)
  x, logsnr, text, mask, ids, cond, cond_logsnr = _inputs(4)
  video = _run(cfg, params, x, logsnr, text, mask, ids, cond, cond_logsnr)
  # The image model on each frame alone (T=1), the B*T frames as one batch of rows.
  rows = lambda a: np.repeat(a, T, 0)
  frames = _run(
    cfg,
    params,
    x.reshape(B * T, 1, H, W, 3),
    rows(logsnr),
    rows(text),
    rows(mask),
    np.zeros((B * T, 1), np.int32),
    cond.reshape(B * T, 1, H, W, 3),
    rows(cond_logsnr),
  )
  np.testing.assert_allclose(video, frames.reshape(video.shape), atol=1e-5, rtol=1e-5)
  assert float(jnp.std(video)) > 1e-2  # the comparison is not between zeros


def test_temporal_layers_are_zero_initialised_not_the_rest():
  params = _init(_config('attention'))
  attn_out = params['down0_block0']['temporal_attn']['attn']['out']['kernel']
  assert float(jnp.max(jnp.abs(attn_out))) == 0.0
  assert float(jnp.max(jnp.abs(params['down0_block0']['res']['conv1']['kernel']))) > 0.0
  conv = _init(_config('conv'))
  assert float(jnp.max(jnp.abs(conv['up1_block0']['temporal_conv']['conv']['kernel']))) == 0.0


def test_padding_frames_do_not_affect_real_frames():
  cfg = _config('attention')
  params = _randomised_params(cfg, 6)
  x, logsnr, text, mask, _, cond, cond_logsnr = _inputs(7)
  # Row 0: a 3-frame clip and a padding frame; row 1: two clips (1 + 2 frames) and padding.
  ids = np.array([[0, 0, 0, -1], [0, 1, 1, -1]], np.int32)
  out1 = _run(cfg, params, x, logsnr, text, mask, ids, cond, cond_logsnr)
  x2 = x.copy()
  x2[:, 3] = 100.0
  out2 = _run(cfg, params, x2, logsnr, text, mask, ids, cond, cond_logsnr)
  np.testing.assert_allclose(out1[:, :3], out2[:, :3], atol=1e-6)
  out3 = _run(cfg, params, x[:, :3], logsnr, text, mask, ids[:, :3], cond[:, :3], cond_logsnr)
  np.testing.assert_allclose(out1[:, :3], out3, atol=1e-5)


def test_per_frame_text_matches_per_row_text_when_repeated():
  cfg = _config('attention')
  params = _randomised_params(cfg, 8)
  x, logsnr, text, mask, ids, cond, cond_logsnr = _inputs(9)
  row = _run(cfg, params, x, logsnr, text, mask, ids, cond, cond_logsnr)
  per_frame = _run(
    cfg, params, x, _per_frame(logsnr), _per_frame(text), _per_frame(mask), ids, cond, cond_logsnr
  )
  np.testing.assert_allclose(row, per_frame, atol=1e-5, rtol=1e-5)
  # ... and a different caption on one frame changes only that frame of a packed row.
  packed = np.repeat(np.arange(T, dtype=np.int32)[None], B, 0)
  text2 = _per_frame(text)
  text2[:, 2] *= -1.0
  a = _run(
    cfg,
    params,
    x,
    _per_frame(logsnr),
    _per_frame(text),
    _per_frame(mask),
    packed,
    cond,
    cond_logsnr,
  )
  b = _run(cfg, params, x, _per_frame(logsnr), text2, _per_frame(mask), packed, cond, cond_logsnr)
  diff = jnp.max(jnp.abs(a - b), axis=(0, 2, 3, 4))
  assert float(diff[2]) > 1e-4 and float(jnp.max(diff.at[2].set(0))) == 0.0


@pytest.mark.parametrize('per_frame', [False, True], ids=['per_row', 'per_frame'])
def test_null_text_ignores_the_text_embedding(per_frame):
  """All-False text mask (guidance's unconditional half): the text values must not matter.

  Bit for bit: the masked keys get a zero softmax weight in text pooling and in every
  cross-attention, whatever their values, so random, zero and 1e3-scaled embeddings give
  the very same output. With the mask on, they must not (the comparison is not vacuous).
  """
  cfg = _config('attention')
  params = _randomised_params(cfg, 10)
  x, logsnr, text, mask, ids, cond, cond_logsnr = _inputs(11)
  if per_frame:
    logsnr, text, mask = _per_frame(logsnr), _per_frame(text), _per_frame(mask)
  null = np.zeros_like(mask)
  run = lambda emb, m: np.asarray(_run(cfg, params, x, logsnr, emb, m, ids, cond, cond_logsnr))
  out = run(text, null)
  assert np.all(np.isfinite(out))
  for other in (np.zeros_like(text), 1e3 * text, -text[::-1]):
    np.testing.assert_array_equal(run(other, null), out)
  on = run(text, mask)
  assert np.max(np.abs(run(-text[::-1], mask) - on)) > 1e-3  # text matters when unmasked ...
  assert np.max(np.abs(on - out)) > 1e-3  # ... and the mask does


def test_every_param_has_logical_axis_names():
  # Abstract init (jax.eval_shape): the names are attached when each param is created while
  # tracing the initialiser, so this sees exactly what init_params returns, uncompiled.
  cfg = _config('attention')
  boxed = jax.eval_shape(unet_lib.init_fn(cfg, frames=T, height=H, width=W), jax.random.key(0))
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
  cfg = _config('attention')
  assert UNetConfig.from_dict(cfg.to_dict()) == cfg


def test_count_params_matches_initialised_params():
  cfg = _config('conv')
  params = _init(cfg)
  assert unet_lib.count_params(cfg) == sum(p.size for p in jax.tree.leaves(params))


def test_bfloat16_compute_tracks_float32():
  cfg = _config('attention')
  params = _randomised_params(cfg, 12)
  inputs = _inputs(13)
  f32 = _run(cfg, params, *inputs)
  bf16 = _run(dataclasses.replace(cfg, dtype='bfloat16'), params, *inputs)
  assert bf16.dtype == jnp.float32  # outputs stay float32 whatever the compute dtype
  rel = float(jnp.linalg.norm(bf16 - f32) / jnp.linalg.norm(f32))
  assert rel < 0.05, rel


@pytest.mark.parametrize(
  'kernel,strides', [((1, 3, 3), (1, 1)), ((1, 3, 3), (2, 2)), ((1, 1, 1), (1, 1))]
)
def test_frame_conv_equals_the_flax_3d_conv_it_replaces(kernel, strides):
  # FrameConv runs as a 2-D conv over B*T frames (faster on CPU) but must hold the same
  # parameters and compute the same function as nn.Conv(kernel) on [B, T, H, W, C]:
  # checkpoints made before the change load and sample unchanged.
  from imagen_video_jax.models import layers

  x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 5))
  ours = layers.FrameConv(7, kernel, strides=strides)
  ref = nn.Conv(7, kernel, strides=(1, *strides), padding='SAME')
  p = _jit(ours.init)(jax.random.key(1), x)
  p_ref = _jit(ref.init)(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, nn.unbox(p)) == jax.tree.map(jnp.shape, p_ref)
  rng = np.random.default_rng(2)  # a nonzero bias too
  p = jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(np.float32), nn.unbox(p))
  np.testing.assert_allclose(_jit(ours.apply)(p, x), _jit(ref.apply)(p, x), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='temporal size of 1'):
    layers.FrameConv(7, (3, 1, 1)).init(jax.random.key(1), x)


def _group_norm_reference(x, scale, bias, groups):
  # GroupNorm as the textbook writes it, in float64 numpy: statistics per frame over
  # (H, W, the group's channels).
  b, t, h, w, c = x.shape
  xg = x.astype(np.float64).reshape(b, t, h, w, groups, c // groups)
  mean = xg.mean(axis=(2, 3, 5), keepdims=True)
  var = np.square(xg - mean).mean(axis=(2, 3, 5), keepdims=True)
  return ((xg - mean) / np.sqrt(var + 1e-6)).reshape(x.shape) * scale + bias


@pytest.mark.parametrize('shape', [(2, 3, 4, 4, 8), (1, 2, 2, 6, 96), (2, 1, 3, 5, 6)])
def test_frame_group_norm_equals_the_textbook_formula(shape):
  # FrameGroupNorm computes its statistics from per-channel sums (fast on CPU); it must
  # still be GroupNorm per frame, values and gradients, even where |mean| >> std.
  from imagen_video_jax.models import layers

  rng = np.random.default_rng(0)
  x = (rng.standard_normal(shape) * 0.5 + 20.0).astype(np.float32)
  c = shape[-1]
  groups = layers.num_groups_for(c)
  scale = rng.standard_normal(c).astype(np.float32)
  bias = rng.standard_normal(c).astype(np.float32)
  norm = layers.FrameGroupNorm()
  params = {'params': {'scale': scale, 'bias': bias}}
  got = _jit(norm.apply)(params, x)
  want = _group_norm_reference(x, scale, bias, groups)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
  # Gradients against finite differences of the float64 reference, along a random direction.
  dy = rng.standard_normal(shape)
  gx = _jit(jax.grad(lambda x: jnp.sum(norm.apply(params, x) * dy)))(x)
  v = rng.standard_normal(shape)
  eps = 1e-3
  fd = (
    np.sum(_group_norm_reference(x + eps * v, scale, bias, groups) * dy)
    - np.sum(_group_norm_reference(x - eps * v, scale, bias, groups) * dy)
  ) / (2 * eps)
  np.testing.assert_allclose(np.sum(np.asarray(gx, np.float64) * v), fd, rtol=1e-3, atol=1e-3)
