"""Building blocks shared by the video U-Net and the T5 encoder.

Every parameter is created through `nn.with_logical_partitioning`, so a mesh's
logical-axis rules (in configs, never here) decide how it is sharded.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from imagen_video_jax import parallel


def relative_position_bucket(
  relative_position: jax.Array,
  *,
  bidirectional: bool = True,
  num_buckets: int = 32,
  max_distance: int = 128,
) -> jax.Array:
  """T5's bucketing of relative positions (memory - query) into `num_buckets` ids.

  Exact positions for small distances, logarithmically wider buckets up to
  `max_distance`, one shared bucket beyond. Used by T5 self-attention and by the
  U-Net's temporal attention (Imagen Video).
  """
  ret = jnp.zeros_like(relative_position, dtype=jnp.int32)
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret = ret + (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # Guard log(0): n == 0 takes the `is_small` branch anyway.
  val_if_large = max_exact + (
    jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
    / math.log(max_distance / max_exact)
    * (num_buckets - max_exact)
  ).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


# ---------------------------------------------------------------------------
# Parameter helpers: every parameter carries logical axis names.
# ---------------------------------------------------------------------------

Dtype = jnp.dtype | type


def dense(
  features: int,
  axes: tuple[str | None, str | None],
  *,
  dtype: Dtype,
  zero: bool = False,
  use_bias: bool = True,
  name: str | None = None,
) -> nn.Dense:
  """A Dense layer whose kernel/bias are named `axes` / `axes[-1:]`."""
  kinit = nn.initializers.zeros if zero else nn.initializers.lecun_normal()
  return nn.Dense(
    features,
    use_bias=use_bias,
    dtype=dtype,
    name=name,
    kernel_init=nn.with_logical_partitioning(kinit, axes),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
  )


class FrameConv(nn.Module):
  """A per-frame [1, kh, kw] convolution over [B, T, H, W, C], 'SAME' padded.

  Holds exactly the parameters `nn.Conv(features, (1, kh, kw))` holds (`kernel`
  [1, kh, kw, C, F], `bias` [F], same initialisers and logical names), so checkpoints
  are interchangeable, but runs as a 2-D convolution over the B*T frames: XLA's CPU
  backend runs a 1x3x3 3-D convolution 1.2-2.3x slower than the same 2-D one
  (benchmarks/BENCHMARKS.md), and on TPU/GPU the reshape is free.
  """

  features: int
  kernel_size: tuple[int, int, int]
  strides: tuple[int, int] = (1, 1)
  zero: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTHWC: jax.Array) -> jax.Array:
    kt, kh, kw = self.kernel_size
    if kt != 1:
      raise ValueError(
        f'FrameConv is per frame: kernel {self.kernel_size} must have a temporal '
        'size of 1 (temporal mixing is TemporalConv / temporal attention)'
      )
    b, t, h, w, c = x_BTHWC.shape
    kinit = nn.initializers.zeros if self.zero else nn.initializers.lecun_normal()
    kernel = self.param(
      'kernel',
      nn.with_logical_partitioning(kinit, (None, None, None, 'conv_in', 'conv_out')),
      (1, kh, kw, c, self.features),
      jnp.float32,
    )
    bias = self.param(
      'bias',
      nn.with_logical_partitioning(nn.initializers.zeros, ('conv_out',)),
      (self.features,),
      jnp.float32,
    )
    if (kh, kw) == (1, 1) and tuple(self.strides) == (1, 1):
      # A 1x1 convolution is a matmul over channels. Written as one, its kernel gradient is
      # a matmul too: with XLA's default (YNNPACK) convolutions, the kernel gradient ran at
      # ~3 GFLOP/s (the U-Net's 64->128 skip at 8x8, 256 frames: 30 ms forward+backward vs
      # 10 ms as a matmul; measured before imagen_video_jax._xla_cpu took convolutions out).
      y = jnp.einsum(
        '...c,cf->...f', x_BTHWC.astype(self.dtype), kernel[0, 0, 0].astype(self.dtype)
      )
      return y + bias.astype(self.dtype)
    if parallel.splits_examples():
      # Frames and rows split over the mesh: a 3-D convolution. XLA's SPMD partitioner
      # (jaxlib 0.10) gets the kernel gradient of the 2-D form below wrong when both the
      # merged B*T axis (split by frames) and H are split (tests/test_activation_sharding).
      y = jax.lax.conv_general_dilated(
        x_BTHWC.astype(self.dtype),
        kernel.astype(self.dtype),
        window_strides=(1, *self.strides),
        padding='SAME',
        dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'),
      )
      return y + bias.astype(self.dtype)
    y = jax.lax.conv_general_dilated(
      x_BTHWC.reshape(b * t, h, w, c).astype(self.dtype),
      kernel[0].astype(self.dtype),
      window_strides=self.strides,
      padding='SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )
    y = y + bias.astype(self.dtype)
    return y.reshape(b, t, *y.shape[1:])


def conv(
  features: int,
  kernel: tuple[int, int, int],
  *,
  dtype: Dtype,
  zero: bool = False,
  strides: tuple[int, int] = (1, 1),
  name: str | None = None,
) -> FrameConv:
  """A per-frame [1, kh, kw] convolution over a [B, T, H, W, C] tensor, 'SAME' padded.

  Used for the spatial 1x3x3 and the 1x1x1 (channel-mixing) convolutions; the
  temporal 3x1x1 convolution is `TemporalConv`, which respects clip boundaries.
  """
  return FrameConv(
    features, tuple(kernel), strides=tuple(strides), zero=zero, dtype=dtype, name=name
  )


def num_groups_for(channels: int, max_groups: int = 32) -> int:
  """Largest group count <= max_groups that divides `channels`."""
  for g in range(min(max_groups, channels), 0, -1):
    if channels % g == 0:
      return g
  return 1


class FrameGroupNorm(nn.Module):
  """GroupNorm with statistics per frame (over H, W and the group's channels).

  Per-frame statistics keep frames independent, which packed image rows and
  identity inflation (a video model equal to the per-frame image model) need.
  """

  max_groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTHWC: jax.Array) -> jax.Array:
    b, t, h, w, c = x_BTHWC.shape
    g = num_groups_for(c, self.max_groups)
    scale = self.param(
      'scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)), (c,), jnp.float32
    )
    bias = self.param(
      'bias', nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)), (c,), jnp.float32
    )
    x = x_BTHWC.astype(jnp.float32)
    # Statistics as per-channel sums over H, W (a reduction over the outer axes, which
    # vectorises along C), then summed within each group: reducing the [.., H, W, G, C/G]
    # view over (H, W, C/G) directly made XLA's CPU backend transpose the activation and
    # cost 5-13x as much, forward and backward (benchmarks/BENCHMARKS.md). Two passes (mean,
    # then the centred square) keep the variance exact when |mean| >> std.
    n = h * w * (c // g)

    def per_group(sums_BTC):  # [B, T, C] -> [B, T, C]: each channel gets its group's mean
      groups = sums_BTC.reshape(b, t, g, c // g).sum(-1) / n
      return jnp.repeat(groups, c // g, axis=-1)

    centred = x - per_group(x.sum(axis=(2, 3)))[:, :, None, None, :]
    var = per_group(jnp.square(centred).sum(axis=(2, 3)))
    gain = jax.lax.rsqrt(var + 1e-6) * scale  # [B, T, C]: one multiply-add per element
    return (centred * gain[:, :, None, None, :] + bias).astype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis with named parameters."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.LayerNorm(
      dtype=self.dtype,
      epsilon=1e-6,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
    )(x)


# ---------------------------------------------------------------------------
# Clip structure from frame ids.
# ---------------------------------------------------------------------------


def same_clip(frame_ids_BT: jax.Array) -> jax.Array:
  """[B, T, T] bool: frames i and j belong to the same clip.

  Negative ids mark padding frames; they are connected to nothing but themselves.
  """
  ids = frame_ids_BT
  eq = ids[:, :, None] == ids[:, None, :]
  real = (ids >= 0)[:, :, None] & (ids >= 0)[:, None, :]
  eye = jnp.eye(ids.shape[1], dtype=bool)[None]
  return (eq & real) | eye


class TemporalConv(nn.Module):
  """Temporal convolution (kernel k x 1 x 1) that never mixes different clips.

  Each tap reads frame t+d only where it has the same frame id as t; elsewhere it
  reads zero, exactly as at a clip's edge. Zero-initialised: a fresh layer is the
  identity when used as a residual branch (`x + TemporalConv(x)`).
  """

  kernel_size: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTHWC: jax.Array, frame_ids_BT: jax.Array) -> jax.Array:
    b, t, h, w, c = x_BTHWC.shape
    k = self.kernel_size
    kernel = self.param(
      'kernel',
      nn.with_logical_partitioning(nn.initializers.zeros, (None, 'conv_in', 'conv_out')),
      (k, c, c),
      jnp.float32,
    )
    bias = self.param(
      'bias', nn.with_logical_partitioning(nn.initializers.zeros, ('conv_out',)), (c,), jnp.float32
    )
    x = x_BTHWC.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    ids = frame_ids_BT
    out = jnp.zeros((b, t, h, w, c), self.dtype)
    for i in range(k):
      d = i - k // 2  # tap i reads frame t + d
      if abs(d) >= t:
        continue
      if d == 0:
        shifted, valid = x, ids >= 0
      else:
        # Shift frames so position t holds frame t + d (zeros past the ends).
        shifted = jnp.roll(x, -d, axis=1)
        valid = jnp.roll(ids, -d, axis=1) == ids
        pos = jnp.arange(t)
        inside = (pos + d >= 0) & (pos + d < t)
        valid = valid & inside[None] & (ids >= 0)
      shifted = shifted * valid[:, :, None, None, None].astype(self.dtype)
      out = out + jnp.einsum('bthwc,cd->bthwd', shifted, kernel[i])
    return out + bias.astype(self.dtype)


# ---------------------------------------------------------------------------
# Conditioning embeddings.
# ---------------------------------------------------------------------------


def logsnr_to_cosine_time(logsnr: jax.Array) -> jax.Array:
  """Maps logsnr to the cosine schedule's t in [0, 1] (bounded: a good embedding input)."""
  return jnp.arctan(jnp.exp(-0.5 * logsnr.astype(jnp.float32))) / (0.5 * np.pi)


def sinusoidal_embedding(x: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """[...] -> [..., dim] transformer-style sinusoidal features."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = x.astype(jnp.float32)[..., None] * freqs
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
  return emb


class ScalarEmbedding(nn.Module):
  """value [...] -> [..., dim]: sinusoidal features of value * scale and an MLP whose
  last layer starts at zero, so a conditioning signal added to a trained network leaves
  its output unchanged until it is trained (a distilled student's guidance weight)."""

  dim: int
  scale: float = 100.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, value: jax.Array) -> jax.Array:
    h = sinusoidal_embedding(jnp.asarray(value, jnp.float32) * self.scale, self.dim)
    h = nn.silu(dense(self.dim * 4, ('embed', 'mlp'), dtype=self.dtype, name='fc1')(h))
    return dense(self.dim, ('mlp', 'embed'), dtype=self.dtype, zero=True, name='fc2')(h)


class LogSNREmbedding(nn.Module):
  """logsnr [...] -> [..., dim] via sinusoidal features of the cosine time and an MLP."""

  dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, logsnr: jax.Array) -> jax.Array:
    t = logsnr_to_cosine_time(logsnr) * 1000.0
    h = sinusoidal_embedding(t, self.dim)
    h = dense(self.dim * 4, ('embed', 'mlp'), dtype=self.dtype, name='fc1')(h)
    h = nn.silu(h)
    return dense(self.dim, ('mlp', 'embed'), dtype=self.dtype, name='fc2')(h)
