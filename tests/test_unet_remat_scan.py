"""UNetConfig.remat and .scan_blocks change memory and compile time, never the numbers."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from imagen_video_jax import parallel
from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.models.unet import LevelConfig, UNetConfig, VideoUNet

T, H, W = 4, 8, 8

# LLVM at -O0: 1.5-2x faster compiles of these programs on CPU (their run time is
# negligible). The HLO passes (fusion, scheduling, buffer assignment) are XLA's usual ones,
# so the memory analysis is that of a default compile (checked: identical temp bytes).
_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})

# Level 0 has three blocks: the encoder scans 3, the decoder runs block0 and a scan of 2.
# Level 1 has one block each way (nothing to scan): the two kinds mix.
BASE = UNetConfig(
  levels=(
    LevelConfig(16, 3, spatial_attention=True, temporal='attention', cross_attention=True),
    LevelConfig(24, 1, temporal='conv', cross_attention=True),
  ),
  text_dim=12,
  emb_dim=32,
  head_dim=8,
  dropout=0.1,
)


def _abstract(cfg):
  """Boxed param shapes and logical names (jax.eval_shape: traced, never compiled)."""
  return jax.eval_shape(unet_lib.init_fn(cfg, frames=T, height=H, width=W), jax.random.key(0))


@functools.lru_cache(maxsize=None)
def _params(cfg):
  """Random params of `cfg`'s shapes: every leaf live, none zero (unlike a fresh init).

  Drawn from the abstract shapes with numpy, not by init_params: these tests compare two
  computations on the same params, whatever their values, and compiling the U-Net's
  initialiser would cost more than the gradients compared. Norm scales 1 + N(0, 0.1^2),
  the rest N(0, s^2) with s = 0.1 + fan_in^-1/2: an initialiser's scale plus the 0.1 of
  noise this test used to add to one, so activations stay O(1).
  """
  rng = np.random.default_rng(0)

  def leaf(path, s):
    noise = rng.standard_normal(s.shape).astype(np.float32)
    if str(getattr(path[-1], 'key', '')) == 'scale':
      return 1.0 + 0.1 * noise
    fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) >= 2 else 100
    return (0.1 + fan_in**-0.5) * noise

  return jax.tree_util.tree_map_with_path(leaf, nn.unbox(_abstract(cfg)))


def _inputs():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, T, H, W, 3)).astype(np.float32)
  logsnr = np.array([-1.0, 2.0], np.float32)
  text = rng.standard_normal((2, 5, 12)).astype(np.float32)
  mask = np.arange(5)[None] < np.array([[3], [5]])
  fid = np.array([[0, 0, 0, 0], [0, 1, 2, 3]], np.int32)  # a video row and packed images
  return x, logsnr, text, mask, fid


def _loss_and_grads(cfg, params, train=False):
  model = VideoUNet(cfg)
  x, logsnr, text, mask, fid = _inputs()

  def loss(p):
    out = model.apply(
      {'params': p},
      x,
      logsnr,
      text,
      mask,
      fid,
      train=train,
      rngs={'dropout': jax.random.key(3)} if train else None,
    )
    return jnp.mean(jnp.square(out - 0.5 * x))

  return _jit(jax.value_and_grad(loss))(params)


def test_scanned_layout_and_round_trip():
  scanned_cfg = dataclasses.replace(BASE, scan_blocks=True)
  boxed = _abstract(scanned_cfg)
  assert 'down0_blocks' in boxed and 'down0_block0' not in boxed
  assert 'up0_block0' in boxed and 'up0_blocks' in boxed and 'up0_block1' not in boxed
  assert 'down1_block0' in boxed and 'up1_block0' in boxed  # one block: not scanned
  conv = boxed['down0_blocks']['res']['conv1']['kernel']
  assert conv.value.shape == (3, 1, 3, 3, 16, 16)  # stacked on a leading axis ...
  assert conv.names == ('layers', None, None, None, 'conv_in', 'conv_out')  # ... named
  assert {n for n, _ in parallel.DEFAULT_RULES} >= {'layers'}
  # scan_params gives the scanned model's own layout, leaf for leaf; scan_params and
  # unscan_params are inverse bijections. Every leaf holds distinct random values, so a
  # swapped, dropped or duplicated block cannot go unnoticed.
  params = _params(BASE)
  scanned = unet_lib.scan_params(params, BASE)
  assert jax.tree.structure(scanned) == jax.tree.structure(nn.unbox(boxed))
  assert jax.tree.map(jnp.shape, scanned) == jax.tree.map(jnp.shape, nn.unbox(boxed))
  assert sum(p.size for p in jax.tree.leaves(scanned)) == sum(
    p.size for p in jax.tree.leaves(params)
  )
  np.testing.assert_array_equal(
    scanned['up0_blocks']['res']['conv1']['kernel'][1],
    params['up0_block2']['res']['conv1']['kernel'],
  )
  back = unet_lib.unscan_params(scanned, BASE)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, back, params)


@functools.lru_cache(maxsize=None)
def _reference():
  params = _params(BASE)
  return params, _loss_and_grads(BASE, params)


@pytest.mark.parametrize(
  'remat,scan',
  [('full', False), ('dots', True), pytest.param('none', True, marks=pytest.mark.slow)],
)
def test_remat_and_scan_give_the_same_loss_and_gradients(remat, scan):
  params, (ref_loss, ref_grads) = _reference()
  cfg = dataclasses.replace(BASE, remat=remat, scan_blocks=scan)
  p = unet_lib.scan_params(params, BASE) if scan else params
  loss, grads = _loss_and_grads(cfg, p)
  if scan:
    grads = unet_lib.unscan_params(grads, BASE)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  assert float(jnp.abs(ref_grads['up0_block2']['res']['conv1']['kernel']).max()) > 1e-4
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), grads, ref_grads
  )


def test_remat_recomputes_instead_of_storing():
  """The compiled backward pass keeps fewer bytes of activations with remat.

  Measured with scanned blocks: XLA's CPU scheduler may run an unrolled block's
  recomputation early, right after the forward pass, which undoes the saving in its
  memory analysis (measured: identical temp bytes); a scan's loop cannot.
  """
  x_big = (4, 8, 16, 16, 3)
  # One level of eight scanned blocks: without remat the stored activations grow with the
  # depth, with full remat only the blocks' inputs do (measured: 0.19x the temp bytes here,
  # 0.54x with the two blocks a level this test had before), so the check below keeps a
  # wide margin against XLA's allocation heuristics. A scan compiles its body once: the
  # depth costs no compile time.
  cfg = UNetConfig(
    levels=(LevelConfig(32, 8, spatial_attention=True),), emb_dim=32, head_dim=16, scan_blocks=True
  )

  def temp_bytes(c):
    model = VideoUNet(c)
    params = nn.unbox(
      jax.eval_shape(unet_lib.init_fn(c, frames=8, height=16, width=16), jax.random.key(0))
    )
    x = jax.ShapeDtypeStruct(x_big, jnp.float32)
    f = _jit(jax.grad(lambda p, x: jnp.sum(model.apply({'params': p}, x, jnp.zeros(4)))))
    return f.lower(params, x).compile().memory_analysis().temp_size_in_bytes

  # A ratio of two programs compiled in the same run by the same XLA, differing only in
  # remat: no absolute byte count, which moves with XLA's version and heuristics.
  none, full = temp_bytes(cfg), temp_bytes(dataclasses.replace(cfg, remat='full'))
  assert full < 0.5 * none, (full, none)  # measured 0.19


def test_dropout_is_live_in_scanned_blocks():
  """Scanned blocks apply dropout when training (split_rngs) and equal unscanned in eval."""
  cfg = dataclasses.replace(BASE, scan_blocks=True, levels=BASE.levels[:1])
  plain = dataclasses.replace(cfg, scan_blocks=False)
  params = _params(plain)
  x, logsnr, text, mask, fid = _inputs()

  def fwd(c, p, train):
    return _jit(
      lambda p: VideoUNet(c).apply(
        {'params': p}, x, logsnr, text, mask, fid, train=train, rngs={'dropout': jax.random.key(3)}
      )
    )(p)

  scanned = unet_lib.scan_params(params, plain)
  eval_out = fwd(cfg, scanned, False)
  np.testing.assert_allclose(eval_out, fwd(plain, params, False), rtol=1e-5, atol=1e-5)
  a, b = fwd(cfg, scanned, True), fwd(dataclasses.replace(cfg, dropout=0.0), scanned, True)
  assert float(jnp.abs(a - eval_out).max()) > 1e-3  # dropout is live when training
  np.testing.assert_allclose(b, eval_out, rtol=1e-5, atol=1e-5)


def test_bad_remat_is_named():
  with pytest.raises(ValueError, match="remat 'some'"):
    dataclasses.replace(BASE, remat='some')
