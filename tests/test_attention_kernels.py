"""The attention kernels: each equals the definition in values and gradients; the backend choice."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from imagen_video_jax.models import attention_kernels as ak
from imagen_video_jax.models import layers


def _numpy_attention(q, k, v, bias, mask):
  # The formula in float64 numpy: softmax(q k^T / sqrt(d) + bias, masked) v.
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  s = np.einsum('...qnk,...snk->...nqs', q, k) / np.sqrt(q.shape[-1])
  if bias is not None:
    s = s + np.asarray(bias, np.float64)
  if mask is not None:
    s = np.where(mask, s, ak.NEG_INF)
  p = np.exp(s - s.max(-1, keepdims=True))
  p = p / p.sum(-1, keepdims=True)
  return np.einsum('...nqs,...snk->...qnk', p, v)


def _case(name, rng):
  """q, k, v, bias, mask for the shapes the U-Net's layers use."""
  normal = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
  if name == 'spatial':  # [B, T, H*W, N, K], no bias or mask
    return normal(2, 3, 16, 2, 8), normal(2, 3, 16, 2, 8), normal(2, 3, 16, 2, 8), None, None
  if name == 'temporal':  # [B, H*W, T, N, K], a bias per head, a frame-id mask per row
    ids = jnp.asarray([[0, 0, 0, 1, 1, -1], [0, 1, 2, 3, 4, 5]])
    mask = layers.same_clip(ids)[:, None, None]
    q = normal(2, 5, 6, 2, 8)
    return q, normal(2, 5, 6, 2, 8), normal(2, 5, 6, 2, 8), normal(2, 6, 6), mask
  if name == 'cross':  # [B, 1, Q, N, K] over 7 text tokens, a key mask (one row all masked)
    mask = jnp.asarray(rng.random((2, 1, 1, 1, 7)) > 0.3).at[1].set(False)
    return normal(2, 1, 24, 2, 8), normal(2, 1, 7, 2, 8), normal(2, 1, 7, 2, 8), None, mask
  if name == 'row_bias':  # a bias that differs per batch row, keys longer than queries
    mask = jnp.asarray(rng.random((3, 1, 10, 12)) > 0.2)
    return normal(3, 10, 2, 8), normal(3, 12, 2, 8), normal(3, 12, 2, 8), normal(3, 2, 10, 12), mask
  raise ValueError(name)


CASES = ('spatial', 'temporal', 'cross', 'row_bias')


def _value_and_grads(impl, q, k, v, bias, mask, dy):
  def loss(q, k, v, bias):
    out = ak.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation=impl)
    return jnp.sum(out * dy), out

  argnums = (0, 1, 2, 3) if bias is not None else (0, 1, 2)
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=argnums, has_aux=True))(q, k, v, bias)
  return out, grads


@pytest.mark.parametrize('chunk_bytes', [ak.CHUNK_BYTES, 1024])  # one chunk; many chunks
@pytest.mark.parametrize('case', CASES)
def test_chunked_equals_the_reference_in_values_and_gradients(case, chunk_bytes, monkeypatch):
  monkeypatch.setattr(ak, 'CHUNK_BYTES', chunk_bytes)
  rng = np.random.default_rng(0)
  q, k, v, bias, mask = _case(case, rng)
  dy = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
  want, want_grads = _value_and_grads('reference', q, k, v, bias, mask, dy)
  got, got_grads = _value_and_grads('chunked', q, k, v, bias, mask, dy)
  np.testing.assert_allclose(want, _numpy_attention(q, k, v, bias, mask), atol=1e-5)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert len(got_grads) == len(want_grads)
  for g, w in zip(got_grads, want_grads):  # dq, dk, dv (and the bias's gradient)
    assert g.shape == w.shape
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_chunks_divide_the_rows_and_fit_the_budget(monkeypatch):
  monkeypatch.setattr(ak, 'CHUNK_BYTES', 1000)
  assert ak._chunk_rows(12, 100) == 6  # the largest divisor of 12 within 1000 // 100 rows
  assert ak._chunk_rows(7, 100) == 7  # a prime count that fits whole
  assert ak._chunk_rows(13, 100) == 1  # a prime count that does not: one row at a time
  assert ak._chunk_rows(5, 10_000) == 1  # a row over the budget still runs


@pytest.mark.parametrize('case', CASES)
def test_the_gpu_path_equals_the_reference(case):
  # jax.nn.dot_product_attention: cuDNN on a GPU in 16-bit; on this CPU in float32 it is
  # XLA's implementation, which checks our bias/mask layout conversion.
  rng = np.random.default_rng(1)
  q, k, v, bias, mask = _case(case, rng)
  want = ak.reference(q, k, v, bias=bias, mask=mask)
  got = jax.jit(lambda *a: ak._cudnn(*a, bias, mask))(q, k, v)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_tpu_splash_kernel_equals_the_reference_in_interpret_mode():
  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 128, 2, 64)), jnp.float32) for _ in range(3))
  assert ak._splash_fits(q, k)
  got = ak._splash(q, k, v, interpret=True)
  np.testing.assert_allclose(got, ak.reference(q, k, v), atol=1e-5)


def test_splash_is_used_only_where_it_applies(monkeypatch):
  # Biased, masked or short attention (temporal, text) goes to the reference on TPU.
  calls = []
  monkeypatch.setattr(ak, '_splash', lambda q, k, v: calls.append(q.shape) or ak.reference(q, k, v))
  rng = np.random.default_rng(3)
  long_q = jnp.asarray(rng.standard_normal((1, 128, 1, 64)), jnp.float32)
  ak.dot_product_attention(long_q, long_q, long_q, implementation='splash')
  assert calls == [long_q.shape]
  for case in CASES:
    q, k, v, bias, mask = _case(case, rng)
    got = ak.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation='splash')
    np.testing.assert_allclose(got, ak.reference(q, k, v, bias=bias, mask=mask), atol=1e-6)
  assert len(calls) == 1


@pytest.mark.parametrize(
  'backend,devices,score_bytes,want',
  [
    ('cpu', 1, 1 << 30, 'chunked'),
    ('cpu', 1, 1 << 20, 'reference'),  # small attention: the reference is as fast
    ('cpu', 8, 1 << 30, 'reference'),  # a fake-device mesh: the partitioner's plain ops
    ('gpu', 1, 1 << 20, 'cudnn'),
    ('tpu', 4, 1 << 20, 'splash'),
  ],
)
def test_auto_picks_the_kernel_by_backend(backend, devices, score_bytes, want, monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  monkeypatch.setattr(jax, 'device_count', lambda: devices)
  assert ak.resolve('auto', score_bytes) == want
  assert ak.resolve('reference', score_bytes) == 'reference'  # an explicit choice stands
  # and the call itself routes there: the score size is measured from the shapes
  seen = []
  monkeypatch.setattr(ak, 'resolve', lambda impl, nbytes: seen.append(nbytes) or 'reference')
  q = jnp.zeros((2, 3, 5, 2, 8))
  ak.dot_product_attention(q, q[:, :, :4], q[:, :, :4])
  assert seen == [4 * 2 * 3 * 2 * 5 * 4]


def test_an_unknown_implementation_is_refused():
  from imagen_video_jax.models import unet as unet_lib

  with pytest.raises(ValueError, match="'flash' is not one of"):
    ak.resolve('flash')
  with pytest.raises(ValueError, match='attention'):
    unet_lib.UNetConfig(levels=(unet_lib.LevelConfig(8),), attention='flash')


def test_the_unet_is_the_same_function_with_either_cpu_kernel():
  from imagen_video_jax.models import unet as unet_lib
  from imagen_video_jax.models.unet import LevelConfig

  cfg = unet_lib.UNetConfig(
    levels=(
      LevelConfig(8, 1, spatial_attention=True, temporal='attention', cross_attention=True),
      LevelConfig(16, 1, spatial_attention=True, temporal='attention', cross_attention=True),
    ),
    text_dim=8,
    emb_dim=16,
    head_dim=8,
    attention='reference',
  )
  shape = dict(frames=4, height=8, width=8, text_len=5, batch=2)
  params = nn.unbox(jax.jit(unet_lib.init_fn(cfg, **shape))(jax.random.key(0)))
  params = jax.tree.map(lambda a: a + 0.05, params)  # the zero-initialised layers too
  rng = np.random.default_rng(4)
  x, logsnr, text, mask, fid, _, _ = unet_lib.dummy_inputs(cfg, **shape)
  x = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  text = jnp.asarray(rng.standard_normal(text.shape), jnp.float32)
  mask = mask.at[1, 3:].set(False)
  fid = jnp.asarray([[0, 0, 1, 1], [0, 1, 2, 3]])

  def run(impl):
    model = unet_lib.VideoUNet(dataclasses.replace(cfg, attention=impl))
    f = lambda p: model.apply({'params': p}, x, logsnr, text, mask, fid)  # noqa: E731
    out = jax.jit(f)(params)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(f(p)))))(params)
    return out, grads

  out_ref, g_ref = run('reference')
  out, g = run('chunked')
  np.testing.assert_allclose(out, out_ref, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g, g_ref)
