"""Attention for the video U-Net: spatial (per frame), temporal (per pixel), text cross.

All three share `MultiHeadAttention`, whose `attend` broadcasts over any leading
axes, so a per-pixel temporal mask `[B, 1, 1, T, T]` is never materialised per pixel.
Each block is a residual branch; the temporal block's output projection starts
at zero so a fresh temporal layer is the identity (image-to-video inflation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from imagen_video_jax import parallel
from imagen_video_jax.models import attention_kernels, layers


# Scaled dot-product attention over leading batch axes, q [..., Q, N, K], k/v [..., S, N, K];
# `implementation` picks the kernel ('auto': by backend). Defined in attention_kernels.
attend = attention_kernels.dot_product_attention


# Explicit kernels rather than nn.DenseGeneral: under a global mesh (jax.set_mesh) Flax
# 0.12's DenseGeneral re-applies the kernel's 3-axis logical names to its flattened 2-D
# init in apply's shape check and fails. Same parameter tree, shapes and init values.
class HeadsProjection(nn.Module):
  """x [..., D] -> [..., heads, kv]; kernel [D, heads, kv] named ('embed', 'heads', 'kv')."""

  num_heads: int
  head_dim: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
      'kernel',
      nn.with_logical_partitioning(
        nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)), ('embed', 'heads', 'kv')
      ),
      (x.shape[-1], self.num_heads, self.head_dim),
      jnp.float32,
    )
    return jnp.einsum('...d,dnk->...nk', x.astype(self.dtype), kernel.astype(self.dtype))


class OutProjection(nn.Module):
  """[..., heads, kv] -> [..., D]; kernel [heads, kv, D] ('heads', 'kv', 'embed'), bias [D]."""

  features: int
  zero: bool = False
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = (
      nn.initializers.zeros
      if self.zero
      else nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
    )
    kernel = self.param(
      'kernel',
      nn.with_logical_partitioning(init, ('heads', 'kv', 'embed')),
      x.shape[-2:] + (self.features,),
      jnp.float32,
    )
    bias = self.param(
      'bias',
      nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
      (self.features,),
      jnp.float32,
    )
    y = jnp.einsum('...nk,nkd->...d', x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


class MultiHeadAttention(nn.Module):
  """Projections around `attend`; q/k/v kernels named ('embed', 'heads', 'kv')."""

  num_heads: int
  head_dim: int
  out_features: int
  zero_out: bool = False
  dtype: layers.Dtype = jnp.float32
  implementation: str = 'auto'  # attention_kernels: which kernel computes the attention

  def _proj(self, name: str) -> 'HeadsProjection':
    return HeadsProjection(self.num_heads, self.head_dim, dtype=self.dtype, name=name)

  @nn.compact
  def __call__(
    self,
    x_q: jax.Array,
    x_kv: jax.Array,
    *,
    bias=None,
    mask=None,
    extra_kv: tuple[jax.Array, jax.Array] | None = None,
  ) -> jax.Array:
    q = self._proj('query')(x_q)
    k = self._proj('key')(x_kv)
    v = self._proj('value')(x_kv)
    if extra_kv is not None:  # learned tokens every query may attend to (the null text)
      ek, ev = extra_kv
      shape = k.shape[:-3] + ek.shape
      k = jnp.concatenate([jnp.broadcast_to(ek.astype(k.dtype), shape), k], axis=-3)
      v = jnp.concatenate([jnp.broadcast_to(ev.astype(v.dtype), shape), v], axis=-3)
      if mask is not None:
        mask = jnp.concatenate([jnp.ones(mask.shape[:-1] + (ek.shape[0],), bool), mask], axis=-1)
    out = attend(q, k, v, bias=bias, mask=mask, implementation=self.implementation)
    return OutProjection(self.out_features, self.zero_out, dtype=self.dtype, name='out')(out)


def _heads(channels: int, head_dim: int) -> int:
  return max(1, channels // head_dim)


class SpatialSelfAttention(nn.Module):
  """Self-attention over the H*W positions of each frame (frames never mix)."""

  head_dim: int = 64
  dtype: layers.Dtype = jnp.float32
  attention: str = 'auto'  # the attention kernel (attention_kernels.IMPLEMENTATIONS)

  @nn.compact
  def __call__(self, x_BTHWC: jax.Array) -> jax.Array:
    b, t, h, w, c = x_BTHWC.shape
    y = layers.FrameGroupNorm(dtype=self.dtype, name='norm')(x_BTHWC)
    # Each frame attends over all its rows: gathered where the mesh splits them.
    y = parallel.constrain(y.reshape(b, t, h * w, c), ('batch', 'frames', None, 'embed'))
    y = MultiHeadAttention(
      _heads(c, self.head_dim),
      self.head_dim,
      c,
      dtype=self.dtype,
      implementation=self.attention,
      name='attn',
    )(y, y)
    y = parallel.constrain(y, ('batch', 'frames', None, 'embed'))
    return x_BTHWC + y.reshape(b, t, h, w, c)


def null_key_value(module: nn.Module, heads: int, head_dim: int) -> tuple[jax.Array, jax.Array]:
  """A learned null token's key and value [1, heads, head_dim], params of `module`.

  Attended alongside the text, it keeps the softmax defined when every text token is
  masked (the unconditional half of classifier-free guidance).
  """
  init = nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, 'heads', 'kv'))
  key = module.param('null_key', init, (1, heads, head_dim), jnp.float32)
  value = module.param('null_value', init, (1, heads, head_dim), jnp.float32)
  return key, value


class TextCrossAttention(nn.Module):
  """Each pixel of each frame attends to its text tokens (plus one learned null token).

  Text is per row `[B, 1, L, D]` (one caption for the clip) or per frame
  `[B, T, L, D]` (packed images, each with its own caption). The null token keeps
  the softmax defined for the all-masked unconditional text of guidance.
  """

  head_dim: int = 64
  dtype: layers.Dtype = jnp.float32
  attention: str = 'auto'  # the attention kernel (attention_kernels.IMPLEMENTATIONS)

  @nn.compact
  def __call__(self, x_BTHWC: jax.Array, text_BtLD: jax.Array, mask_BtL: jax.Array) -> jax.Array:
    b, t, h, w, c = x_BTHWC.shape
    tt = text_BtLD.shape[1]
    n = _heads(c, self.head_dim)
    y = layers.FrameGroupNorm(dtype=self.dtype, name='norm')(x_BTHWC)
    # Queries of all frames that share one caption are attended in one go.
    y = y.reshape(b, tt, (t // tt) * h * w, c)
    # Queries stay where the mesh split their frames and rows (the text is replicated).
    names = (
      ('batch', 'frames', 'height', 'embed') if tt == t else ('batch', None, 'queries', 'embed')
    )
    y = parallel.constrain(y, names)
    text = layers.LayerNorm(dtype=self.dtype, name='text_norm')(text_BtLD)
    null_k, null_v = null_key_value(self, n, self.head_dim)
    mask = mask_BtL[:, :, None, None, :]  # [B, t, heads, Q, L]
    y = MultiHeadAttention(
      n, self.head_dim, c, dtype=self.dtype, implementation=self.attention, name='attn'
    )(y, text, mask=mask, extra_kv=(null_k, null_v))
    y = parallel.constrain(y, names)
    return x_BTHWC + y.reshape(b, t, h, w, c)


class TemporalSelfAttention(nn.Module):
  """Self-attention along time at each pixel, masked to frames of the same clip.

  T5-style bucketed relative position bias (Imagen Video). Zero-initialised output:
  a fresh layer is the identity.
  """

  head_dim: int = 64
  num_buckets: int = 32
  max_distance: int = 64
  dtype: layers.Dtype = jnp.float32
  attention: str = 'auto'  # the attention kernel (attention_kernels.IMPLEMENTATIONS)

  @nn.compact
  def __call__(self, x_BTHWC: jax.Array, frame_ids_BT: jax.Array) -> jax.Array:
    b, t, h, w, c = x_BTHWC.shape
    n = _heads(c, self.head_dim)
    y = layers.FrameGroupNorm(dtype=self.dtype, name='norm')(x_BTHWC)
    y = jnp.transpose(y, (0, 2, 3, 1, 4)).reshape(b, h * w, t, c)
    # Each pixel attends over all frames: where the mesh splits frames (and rows), the
    # split moves to the pixels for the attention (one all-to-all each way) instead of
    # gathering every frame's keys and values onto every device.
    y = parallel.constrain(y, ('batch', 'pixels', None, 'embed'))
    pos = jnp.arange(t)
    buckets = layers.relative_position_bucket(
      pos[None, :] - pos[:, None],
      bidirectional=True,
      num_buckets=self.num_buckets,
      max_distance=self.max_distance,
    )
    table = self.param(
      'rel_bias',
      nn.with_logical_partitioning(nn.initializers.zeros, (None, 'heads')),
      (self.num_buckets, n),
      jnp.float32,
    )
    bias = jnp.transpose(table[buckets], (2, 0, 1))  # [N, T, T]
    mask = layers.same_clip(frame_ids_BT)[:, None, None]  # [B, 1(HW), 1(N), T, T]
    y = MultiHeadAttention(
      n,
      self.head_dim,
      c,
      zero_out=True,
      dtype=self.dtype,
      implementation=self.attention,
      name='attn',
    )(y, y, bias=bias, mask=mask)
    y = parallel.constrain(y, ('batch', 'pixels', None, 'embed'))
    y = jnp.transpose(y.reshape(b, h, w, t, c), (0, 3, 1, 2, 4))
    # ... and back, explicitly: left to propagation, the backward pass reached this
    # layout by a full gather that XLA (jaxlib 0.10) got wrong on a mesh that also splits
    # the batch (tests/test_activation_sharding.py).
    y = parallel.constrain(y, ('batch', 'frames', 'height', 'width', 'embed'))
    return x_BTHWC + y
