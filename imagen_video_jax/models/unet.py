"""VideoUNet: the one U-Net behind every stage of the cascade (docs/design.md, 'The U-Net').

Efficient U-Net layout (Imagen): each level after the first downsamples (strided
1x3x3 conv) *before* its blocks and upsamples *after* its blocks on the way up;
one skip per level, scaled by 1/sqrt(2). A block is a ResBlock (FiLM from the
conditioning vector) followed by the level's optional spatial self-attention,
text cross-attention and temporal mixing (`attention` | `conv` | `none`).

Frames only ever mix in the temporal layers, which honour `frame_ids` and start as
the identity: a fresh video U-Net computes exactly the per-frame image U-Net.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from imagen_video_jax import parallel
from imagen_video_jax.models import attention, layers

TemporalMixing = Literal['attention', 'conv', 'none']
RematPolicy = Literal['none', 'full', 'dots', 'dots_no_batch']
# What the backward pass keeps of a block's forward (the rest is recomputed):
# 'full' keeps only the block's inputs; 'dots' also keeps matmul outputs (attention
# and dense projections; convolutions are recomputed); 'dots_no_batch' keeps the
# matmuls without batch dimensions (the weight projections, not attention scores).
_REMAT_POLICIES = {
  'full': None,
  'dots': jax.checkpoint_policies.checkpoint_dots,
  'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
_ACT_AXES = ('batch', 'frames', 'height', 'width', 'embed')
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


@dataclasses.dataclass(frozen=True)
class LevelConfig:
  """One resolution level of the U-Net."""

  channels: int
  num_res_blocks: int = 2
  spatial_attention: bool = False
  temporal: TemporalMixing = 'conv'
  cross_attention: bool = False


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Architecture of a VideoUNet; every cascade stage is one of these.

  Attributes:
    levels: resolution levels, highest resolution first. Level i > 0 runs at
      1/2**i of the input's height and width.
    in_channels: channels of the video (also the output's).
    cond_channels: channels of the low-resolution conditioning video of a
      super-resolution stage (0 for a base model).
    cond_augment: whether the stage is conditioned on `cond_logsnr` (noise
      conditioning augmentation of `cond`).
    text_dim: width D of the text embeddings; None for an unconditional model.
    text_pool: add attention-pooled text to the conditioning vector.
    emb_dim: width of the conditioning vector (logsnr + pooled text + aug logsnr).
    head_dim: channels per attention head.
    temporal_buckets / temporal_max_distance: relative position bias of temporal attention.
    dropout: dropout rate inside ResBlocks (training only).
    dtype: compute dtype ('float32' | 'bfloat16' | 'float16'); params stay float32.
    remat: rematerialisation of each block ('none' | 'full' | 'dots' | 'dots_no_batch',
      see _REMAT_POLICIES): trades recompute in the backward pass for activation memory.
      Results are the same.
    scan_blocks: run each level's run of identical blocks as one `nn.scan` (params get a
      leading 'layers' axis): one compiled block per level instead of one per block, so
      big models compile much faster. `scan_params`/`unscan_params` convert params
      between the two layouts; results are the same.
    attention: the attention kernel ('auto' | 'reference' | 'chunked' | 'cudnn' | 'splash',
      see models/attention_kernels.py). 'auto' picks by backend: the chunked kernel on a
      one-device CPU, cuDNN on GPU, splash on TPU; all compute the same function.
    guidance_embed: the network also reads a classifier-free guidance weight `guidance`
      [B] (an embedding added to the conditioning vector, zero at initialisation): the
      student of guided distillation (`diffusion/distill.py`), which computes in one
      forward what the guided teacher computes in two.
    frame_cond: the network also reads given frames (Make-A-Video's masked frame
      conditioning, `diffusion/frame_cond.py`): `known` [B, T] (which frames are given)
      and `known_frames` [B, T, H, W, C] (zero where not given), as 1 + C more input
      channels of the first convolution. They have their own zero-initialised kernel
      (`FRAME_CONDITIONING`, summed with `conv_in`'s output: the same linear map as a
      wider `conv_in`), so a network warm-started from one without frame conditioning
      computes what it did (to float rounding) until it is trained, and with no frame
      given (`known` None or all False) it reads nothing but its bias.
    fps_embed: the network also reads each row's frame rate `fps` [B] (an embedding of
      log2(fps) added to the conditioning vector, zero at initialisation; fps <= 0, a
      row of still images, adds nothing): fps conditioning, trained on frame strides
      drawn per row (`data.frame_strides`).
  """

  levels: tuple[LevelConfig, ...]
  in_channels: int = 3
  cond_channels: int = 0
  cond_augment: bool = False
  text_dim: int | None = None
  text_pool: bool = True
  emb_dim: int = 256
  head_dim: int = 64
  temporal_buckets: int = 32
  temporal_max_distance: int = 64
  dropout: float = 0.0
  dtype: str = 'float32'
  remat: str = 'none'
  scan_blocks: bool = False
  attention: str = 'auto'
  guidance_embed: bool = False
  frame_cond: bool = False
  fps_embed: bool = False

  def __post_init__(self):
    levels = tuple(l if isinstance(l, LevelConfig) else LevelConfig(**l) for l in self.levels)
    object.__setattr__(self, 'levels', levels)
    problems = []
    if not levels:
      problems.append('levels is empty: give at least one LevelConfig')
    for i, l in enumerate(levels):
      if l.channels <= 0 or l.num_res_blocks < 1:
        problems.append(
          f'levels[{i}]: channels ({l.channels}) and num_res_blocks '
          f'({l.num_res_blocks}) must be positive'
        )
      if l.temporal not in ('attention', 'conv', 'none'):
        problems.append(
          f"levels[{i}].temporal is {l.temporal!r}; use 'attention', 'conv' or 'none'"
        )
      if l.cross_attention and self.text_dim is None:
        problems.append(f'levels[{i}] has cross_attention but text_dim is None')
    if self.remat != 'none' and self.remat not in _REMAT_POLICIES:
      problems.append(f'remat {self.remat!r} is not one of {["none", *_REMAT_POLICIES]}')
    if self.attention not in attention.attention_kernels.IMPLEMENTATIONS:
      problems.append(
        f'attention {self.attention!r} is not one of '
        f'{list(attention.attention_kernels.IMPLEMENTATIONS)}'
      )
    if self.dtype not in _DTYPES:
      problems.append(f'dtype {self.dtype!r} is not one of {sorted(_DTYPES)}')
    if self.head_dim <= 0 or self.emb_dim <= 0 or self.in_channels <= 0:
      problems.append('head_dim, emb_dim and in_channels must be positive')
    if not 0.0 <= self.dropout < 1.0:
      problems.append(f'dropout {self.dropout} must be in [0, 1)')
    if problems:
      raise ValueError('Invalid UNetConfig:\n  ' + '\n  '.join(problems))

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'UNetConfig':
    """Builds a config from a plain/ml_collections mapping (levels as dicts)."""
    d = dict(d)
    d['levels'] = tuple(LevelConfig(**dict(l)) for l in d['levels'])
    return cls(**d)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.levels) - 1)

  def check_inputs(
    self,
    x_shape: Sequence[int],
    cond_shape: Sequence[int] | None = None,
    text_shape: Sequence[int] | None = None,
  ) -> None:
    """Raises ValueError naming the problem if these inputs cannot run through the model."""
    if len(x_shape) != 5:
      raise ValueError(f'x must be [B, T, H, W, C]; got shape {tuple(x_shape)}')
    _, _, h, w, c = x_shape
    f = self.downsample_factor
    if h % f or w % f:
      raise ValueError(
        f'height x width {h}x{w} cannot be downsampled {len(self.levels) - 1} times: both must be '
        f'divisible by {f}. Use a size that is a multiple of {f} or fewer levels.'
      )
    if c != self.in_channels:
      raise ValueError(f'x has {c} channels but the config says in_channels={self.in_channels}')
    if self.cond_channels:
      if cond_shape is None:
        raise ValueError(
          'this is a super-resolution model (cond_channels='
          f'{self.cond_channels}): pass cond [B, T, H, W, C]'
        )
      if tuple(cond_shape) != tuple(x_shape[:4]) + (self.cond_channels,):
        raise ValueError(
          f'cond must have shape {tuple(x_shape[:4]) + (self.cond_channels,)} '
          f'(the low-res video brought to the output size); got {tuple(cond_shape)}'
        )
    elif cond_shape is not None:
      raise ValueError('cond was given but the config has cond_channels=0')
    if self.text_dim is not None:
      if text_shape is None:
        raise ValueError('the model is text-conditioned: pass text_emb and text_mask')
      if text_shape[-1] != self.text_dim:
        raise ValueError(f'text_emb width {text_shape[-1]} != config text_dim {self.text_dim}')


def frame_cond_channels(x_BTHWC, known_BT=None, known_frames_BTHWC=None) -> jax.Array:
  """The 1 + C channels a `frame_cond` U-Net reads: the given frames (zero where not
  given) and the mask, [B, T, H, W, C + 1]; all zero when `known_BT` is None."""
  b, t, h, w, c = x_BTHWC.shape
  if known_BT is None:
    if known_frames_BTHWC is not None:
      raise ValueError('known_frames given without known [B, T] (which frames are given)')
    return jnp.zeros((b, t, h, w, c + 1), jnp.float32)
  if tuple(known_BT.shape) != (b, t):
    raise ValueError(f'known must be [B, T] = {(b, t)}; got {tuple(known_BT.shape)}')
  if known_frames_BTHWC is None or tuple(known_frames_BTHWC.shape) != (b, t, h, w, c):
    got = None if known_frames_BTHWC is None else tuple(known_frames_BTHWC.shape)
    raise ValueError(f'known_frames must be [B, T, H, W, C] = {(b, t, h, w, c)}; got {got}')
  k = known_BT.astype(jnp.float32)[:, :, None, None, None]
  frames = jnp.asarray(known_frames_BTHWC, jnp.float32) * k
  return jnp.concatenate([frames, jnp.broadcast_to(k, (b, t, h, w, 1))], axis=-1)


def upsample_nearest(x_BTHWC: jax.Array) -> jax.Array:
  """Doubles H and W by repeating each pixel 2x2: `jax.image.resize(..., 'nearest')`'s
  values, written as a broadcast and a reshape, which stay split over the rows where the
  mesh splits them (the resize indexes the rows with an index array: a gather, which a
  partitioner cannot in general keep split)."""
  b, t, h, w, c = x_BTHWC.shape
  x = jnp.broadcast_to(x_BTHWC[:, :, :, None, :, None, :], (b, t, h, 2, w, 2, c))
  return x.reshape(b, t, 2 * h, 2 * w, c)


class ResBlock(nn.Module):
  """GroupNorm-SiLU-conv(1x3x3), FiLM from the conditioning, GroupNorm-SiLU-conv."""

  channels: int
  dropout: float = 0.0
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb_BtE, *, train: bool):
    h = nn.silu(layers.FrameGroupNorm(dtype=self.dtype, name='norm1')(x))
    h = layers.conv(self.channels, (1, 3, 3), dtype=self.dtype, name='conv1')(h)
    film = layers.dense(2 * self.channels, ('embed', 'mlp'), dtype=self.dtype, name='film')(
      nn.silu(emb_BtE)
    )
    scale, shift = jnp.split(film[:, :, None, None, :], 2, axis=-1)
    h = layers.FrameGroupNorm(dtype=self.dtype, name='norm2')(h) * (1 + scale) + shift
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = layers.conv(self.channels, (1, 3, 3), dtype=self.dtype, zero=True, name='conv2')(h)
    if x.shape[-1] != self.channels:
      x = layers.conv(self.channels, (1, 1, 1), dtype=self.dtype, name='skip')(x)
    return x + h


class TemporalConvBlock(nn.Module):
  """x + TemporalConv(SiLU(GroupNorm(x))): identity when fresh (zero kernel)."""

  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, frame_ids):
    h = nn.silu(layers.FrameGroupNorm(dtype=self.dtype, name='norm')(x))
    return x + layers.TemporalConv(dtype=self.dtype, name='conv')(h, frame_ids)


class Block(nn.Module):
  """ResBlock + the level's attention and temporal layers."""

  cfg: UNetConfig
  level: LevelConfig
  train: bool = False

  @nn.compact
  def __call__(self, x, emb, text, text_mask, frame_ids):
    cfg, lv, dt = self.cfg, self.level, self.cfg.compute_dtype
    # Each layer's output pinned to the activation layout: with frames or rows split,
    # layouts left to propagation drifted into reshards that XLA (jaxlib 0.10) computed
    # wrongly on meshes that also split the batch (tests/test_activation_sharding.py).
    pin = lambda y: parallel.constrain(y, _ACT_AXES)
    x = pin(ResBlock(lv.channels, cfg.dropout, dtype=dt, name='res')(x, emb, train=self.train))
    if lv.spatial_attention:
      x = pin(
        attention.SpatialSelfAttention(
          cfg.head_dim, dtype=dt, attention=cfg.attention, name='spatial_attn'
        )(x)
      )
    if lv.cross_attention:
      x = pin(
        attention.TextCrossAttention(
          cfg.head_dim, dtype=dt, attention=cfg.attention, name='cross_attn'
        )(x, text, text_mask)
      )
    if lv.temporal == 'attention':
      x = attention.TemporalSelfAttention(
        cfg.head_dim,
        cfg.temporal_buckets,
        cfg.temporal_max_distance,
        dtype=dt,
        attention=cfg.attention,
        name='temporal_attn',
      )(x, frame_ids)
    elif lv.temporal == 'conv':
      x = TemporalConvBlock(dtype=dt, name='temporal_conv')(x, frame_ids)
    return pin(x)


class _ScanBlock(Block):
  """A Block as an `nn.scan` body: (carry, broadcast inputs) -> (carry, None)."""

  def __call__(self, x, emb, text, text_mask, frame_ids):
    return super().__call__(x, emb, text, text_mask, frame_ids), None


# The module name of the guidance-weight embedding (`UNetConfig.guidance_embed`).
GUIDANCE_EMBEDDING = 'guidance_emb'

# The module name of the frame-rate embedding (`UNetConfig.fps_embed`).
FPS_EMBEDDING = 'fps_emb'

# The module name of the frame-conditioning input convolution (`UNetConfig.frame_cond`).
FRAME_CONDITIONING = 'frame_cond_in'

# The module names of the temporal layers (Block): all an image U-Net of the same
# config but `temporal='none'` lacks, and what `optim.trainable='temporal'` trains.
TEMPORAL_LAYERS = ('temporal_attn', 'temporal_conv')


def is_temporal(name: str) -> bool:
  """Whether a parameter, by its '/'-joined name, is in a temporal layer."""
  return any(k in TEMPORAL_LAYERS for k in name.split('/'))


def image_config(cfg: UNetConfig) -> UNetConfig:
  """The image U-Net of the same family: `cfg` with every level's temporal='none'.

  It runs each frame on its own; its parameters are `cfg`'s without the temporal layers
  (whose fresh, zero-initialised values make the video U-Net compute exactly it).
  """
  levels = tuple(dataclasses.replace(lv, temporal='none') for lv in cfg.levels)
  return dataclasses.replace(cfg, levels=levels)


def _block_stacks(cfg: UNetConfig) -> list[tuple[str, list[str]]]:
  """Which blocks `scan_blocks` runs as one scan: (scanned name, the unscanned names).

  A level's encoder blocks all map its width to itself; in the decoder the first
  block reads the skip concatenation (twice as wide), so only the blocks after it scan.
  """
  out = []
  for i, lv in enumerate(cfg.levels):
    for side, first in (('down', 0), ('up', 1)):
      names = [f'{side}{i}_block{j}' for j in range(first, lv.num_res_blocks)]
      if len(names) >= 2:
        out.append((f'{side}{i}_blocks', names))
  return out


def scan_params(params: Mapping[str, Any], cfg: UNetConfig) -> dict[str, Any]:
  """Unscanned params -> the `scan_blocks=True` layout (blocks stacked on axis 0)."""
  out = dict(params)
  for scanned, names in _block_stacks(cfg):
    blocks = [out.pop(n) for n in names]
    out[scanned] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  return out


def unscan_params(params: Mapping[str, Any], cfg: UNetConfig) -> dict[str, Any]:
  """`scan_blocks=True` params -> one entry per block (the inverse of `scan_params`)."""
  out = dict(params)
  for scanned, names in _block_stacks(cfg):
    stacked = out.pop(scanned)
    for j, n in enumerate(names):
      out[n] = jax.tree.map(lambda x, j=j: x[j], stacked)
  return out


class TextPool(nn.Module):
  """Attention pooling of the text tokens (a learned query; a null token when all masked)."""

  emb_dim: int
  head_dim: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, text_BtLD, mask_BtL):
    d = text_BtLD.shape[-1]
    n = attention._heads(d, self.head_dim)
    text = layers.LayerNorm(dtype=self.dtype, name='norm')(text_BtLD)
    query = self.param(
      'query',
      nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, 'embed')),
      (1, d),
      jnp.float32,
    )
    null_k, null_v = attention.null_key_value(self, n, self.head_dim)
    q = jnp.broadcast_to(query.astype(text.dtype), text.shape[:-2] + (1, d))
    pooled = attention.MultiHeadAttention(n, self.head_dim, d, dtype=self.dtype, name='attn')(
      q, text, mask=mask_BtL[..., None, None, :], extra_kv=(null_k, null_v)
    )
    return layers.dense(self.emb_dim, ('embed', 'mlp'), dtype=self.dtype, name='proj')(
      pooled[..., 0, :]
    )


class VideoUNet(nn.Module):
  """Predicts v (or eps, or x) for a noisy video; see `UNetConfig`.

  Call with:
    x: [B, T, H, W, C] noisy video.
    logsnr: [B] (or [B, T] for per-frame noise levels of packed images).
    text_emb: [B, L, D] (one caption per row) or [B, T, L, D] (per frame).
    text_mask: [B, L] / [B, T, L] bool; all False is the null (unconditional) text.
    frame_ids: [B, T] int32 clip id of each frame (negative: padding); default all 0.
    cond: [B, T, H, W, Cc] low-res video at the output size (super-resolution stages).
    cond_logsnr: [B] noise-augmentation level of `cond`.
    guidance: [B] guidance weight (only with `guidance_embed`).
    fps: [B] frame rate of each row (only with `fps_embed`; <= 0: still images).
    known: [B, T] bool, the frames given (only with `frame_cond`; default none).
    known_frames: [B, T, H, W, C] those frames' pixels (ignored where not `known`).
  Returns [B, T, H, W, C] float32.
  """

  config: UNetConfig

  @nn.compact
  def __call__(
    self,
    x,
    logsnr,
    text_emb=None,
    text_mask=None,
    frame_ids=None,
    cond=None,
    cond_logsnr=None,
    *,
    guidance=None,
    fps=None,
    known=None,
    known_frames=None,
    train: bool = False,
  ):
    cfg = self.config
    dt = cfg.compute_dtype
    cfg.check_inputs(
      x.shape, None if cond is None else cond.shape, None if text_emb is None else text_emb.shape
    )
    b, t = x.shape[:2]
    if frame_ids is None:
      frame_ids = jnp.zeros((b, t), jnp.int32)

    # Conditioning vector per row or per frame: [B, 1 or T, E].
    logsnr = jnp.asarray(logsnr, jnp.float32)
    logsnr = logsnr[:, None] if logsnr.ndim == 1 else logsnr
    emb = layers.LogSNREmbedding(cfg.emb_dim, dtype=dt, name='logsnr_emb')(logsnr)
    text = mask = None
    if cfg.text_dim is not None:
      text, mask = text_emb, text_mask.astype(bool)
      if text.ndim == 3:  # one caption per row -> [B, 1, L, D]
        text, mask = text[:, None], mask[:, None]
      if text.shape[1] not in (1, t):
        raise ValueError(f'per-frame text_emb must have T={t} frames; got {text.shape[1]}')
      text = text.astype(dt)
      if cfg.text_pool:
        emb = emb + TextPool(cfg.emb_dim, cfg.head_dim, dtype=dt, name='text_pool')(text, mask)
    if cfg.cond_augment:
      if cond_logsnr is None:
        raise ValueError('cond_augment=True: pass cond_logsnr [B] (the noise-augmentation level)')
      emb = emb + layers.LogSNREmbedding(cfg.emb_dim, dtype=dt, name='cond_logsnr_emb')(
        jnp.asarray(cond_logsnr, jnp.float32)[:, None]
      )

    if cfg.guidance_embed:
      if guidance is None:
        raise ValueError('guidance_embed=True: pass guidance [B] (the guidance weight)')
      w = jnp.broadcast_to(jnp.asarray(guidance, jnp.float32), (b,))
      emb = emb + layers.ScalarEmbedding(cfg.emb_dim, dtype=dt, name=GUIDANCE_EMBEDDING)(w[:, None])
    elif guidance is not None:
      raise ValueError('guidance given, but this U-Net has no guidance_embed')

    if cfg.fps_embed:
      if fps is None:
        raise ValueError("fps_embed=True: pass fps [B] (each row's frame rate)")
      rate = jnp.broadcast_to(jnp.asarray(fps, jnp.float32), (b,))
      fps_emb = layers.ScalarEmbedding(cfg.emb_dim, dtype=dt, name=FPS_EMBEDDING)(
        jnp.log2(jnp.maximum(rate, 1e-3))[:, None]
      )
      emb = emb + jnp.where((rate > 0)[:, None, None], fps_emb, 0.0).astype(emb.dtype)
    elif fps is not None:
      raise ValueError('fps given, but this U-Net has no fps_embed')

    h = x.astype(dt)
    if cfg.cond_channels:
      h = jnp.concatenate([h, cond.astype(dt)], axis=-1)
    h = layers.conv(cfg.levels[0].channels, (1, 3, 3), dtype=dt, name='conv_in')(h)
    if cfg.frame_cond:
      h = h + layers.conv(
        cfg.levels[0].channels, (1, 3, 3), dtype=dt, zero=True, name=FRAME_CONDITIONING
      )(frame_cond_channels(x, known, known_frames).astype(dt))
    elif known is not None or known_frames is not None:
      raise ValueError('known frames given, but this U-Net has no frame_cond')
    # Pins the activations' layout (batch; frames and rows split over the mesh's `time`
    # and `space` axes where it has them); a no-op without a global mesh.
    h = parallel.constrain(h, _ACT_AXES)

    def remat(cls):
      if cfg.remat == 'none':
        return cls
      # Inside a scan, CSE across iterations cannot undo the remat: skip its barrier.
      return nn.remat(cls, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=cls is not _ScanBlock)

    def blocks(h, lv, side, i, first):
      """Blocks `first`.. of one side of level i: one scan, or one module each."""
      n = lv.num_res_blocks - first
      args = (emb, text, mask, frame_ids)
      if cfg.scan_blocks and n >= 2:
        stack = nn.scan(
          remat(_ScanBlock),
          variable_axes={'params': 0},
          split_rngs={'params': True, 'dropout': True},
          in_axes=(nn.broadcast,) * len(args),
          length=n,
          metadata_params={nn.PARTITION_NAME: 'layers'},
        )
        h, _ = stack(cfg, lv, train=train, name=f'{side}{i}_blocks')(h, *args)
        return h
      block = remat(Block)
      for j in range(first, lv.num_res_blocks):
        h = block(cfg, lv, train=train, name=f'{side}{i}_block{j}')(h, *args)
      return h

    skips = []
    for i, lv in enumerate(cfg.levels):
      if i > 0:  # Efficient U-Net: downsample before the level's blocks
        h = layers.conv(lv.channels, (1, 3, 3), strides=(2, 2), dtype=dt, name=f'down{i}_sample')(h)
        h = parallel.constrain(h, _ACT_AXES)
      h = blocks(h, lv, 'down', i, 0)
      skips.append(h)

    skip_scale = 1.0 / math.sqrt(2.0)
    for i in reversed(range(len(cfg.levels))):
      lv = cfg.levels[i]
      h = jnp.concatenate([h, skips.pop() * skip_scale], axis=-1)
      # The first block reads the (wider) skip concatenation: never part of a scan.
      h = remat(Block)(cfg, lv, train=train, name=f'up{i}_block0')(h, emb, text, mask, frame_ids)
      h = blocks(h, lv, 'up', i, 1)
      if i > 0:  # ... and upsample after them
        h = upsample_nearest(h)
        h = layers.conv(cfg.levels[i - 1].channels, (1, 3, 3), dtype=dt, name=f'up{i}_sample')(h)
        h = parallel.constrain(h, _ACT_AXES)

    h = nn.silu(layers.FrameGroupNorm(dtype=dt, name='norm_out')(h))
    out = layers.conv(cfg.in_channels, (1, 3, 3), dtype=dt, zero=True, name='conv_out')(h)
    return out.astype(jnp.float32)


def init_params(
  config: UNetConfig,
  key: jax.Array,
  *,
  frames: int,
  height: int,
  width: int,
  text_len: int = 8,
  batch: int = 1,
):
  """Initialises (boxed, logically-partitioned) params for inputs of this size.

  Jitted: eager (op-by-op) initialisation of a U-Net compiles hundreds of tiny
  programs and is ~10x slower on CPU. For sharded initialisation see `parallel`.
  """
  return jax.jit(
    init_fn(config, frames=frames, height=height, width=width, text_len=text_len, batch=batch)
  )(key)


def init_fn(
  config: UNetConfig, *, frames: int, height: int, width: int, text_len: int = 8, batch: int = 1
):
  """key -> boxed params, un-jitted: for jax.eval_shape and jit(out_shardings=...)."""
  model = VideoUNet(config)
  inputs = dummy_inputs(
    config, frames=frames, height=height, width=width, text_len=text_len, batch=batch
  )
  extra = {'guidance': jnp.ones((batch,))} if config.guidance_embed else {}
  if config.fps_embed:
    extra['fps'] = jnp.ones((batch,))
  return lambda key: model.init(key, *inputs, **extra)['params']


def dummy_inputs(
  config: UNetConfig, *, frames: int, height: int, width: int, text_len: int = 8, batch: int = 1
) -> tuple:
  """Zero inputs of the right shapes (positional, as VideoUNet.__call__ takes them)."""
  x = jnp.zeros((batch, frames, height, width, config.in_channels))
  logsnr = jnp.zeros((batch,))
  text = mask = None
  if config.text_dim is not None:
    text = jnp.zeros((batch, text_len, config.text_dim))
    mask = jnp.ones((batch, text_len), bool)
  fid = jnp.zeros((batch, frames), jnp.int32)
  cond = (
    jnp.zeros((batch, frames, height, width, config.cond_channels))
    if config.cond_channels
    else None
  )
  cond_logsnr = jnp.zeros((batch,)) if config.cond_augment else None
  return x, logsnr, text, mask, fid, cond, cond_logsnr


def count_params(
  config: UNetConfig, *, frames: int = 1, height: int | None = None, width: int | None = None
) -> int:
  """Parameter count from abstract shapes only (jax.eval_shape: nothing is allocated)."""
  f = config.downsample_factor
  h = height or f
  w = width or f
  shapes = jax.eval_shape(
    lambda k: init_params(config, k, frames=frames, height=h, width=w), jax.random.key(0)
  )
  return sum(math.prod(p.shape) for p in jax.tree.leaves(nn.unbox(shapes)))
