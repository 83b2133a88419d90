"""Analytic FLOP count of a VideoUNet (and the frozen T5 a train step runs), by layer.

Counts the matrix products only: convolutions, dense layers, attention projections and
the attention QK^T and PV products; a multiply-add is 2 FLOPs. Normalisations,
activations, softmax and the optimizer update are left out (they are a few FLOPs per
element against 2 * 9 * C per element of a 3x3 convolution).

A convolution counts the kernel taps that land inside the input ('SAME' zero padding is
not work), as XLA's cost analysis counts it: a 3x3 convolution over an n-pixel row has
3n - 2 taps per row, not 3n.

`unet_flops` gives
  forward:     one forward pass of the U-Net (plus the T5 encoder where given).
  model_train: the train step's model FLOPs by the usual convention, 3 x the U-Net's
               forward (backward = 2 x forward) + the frozen T5's forward: what MFU uses.
  xla_view:    what XLA's `compiled.cost_analysis()['flops']` should count for the same
               step: the backward without the input gradients nobody needs (conv_in reads
               the data, the first layer of each log-SNR MLP reads fixed sinusoids),
               plus what rematerialisation recomputes, and the body of a scanned stack of
               blocks counted once (XLA's cost analysis counts a while loop's body once,
               whatever its trip count).
"""

from __future__ import annotations

import dataclasses
import math


def same_taps(n: int, k: int, stride: int = 1) -> int:
  """Kernel taps inside the input, summed over the outputs of one 'SAME' conv axis."""
  out = -(-n // stride)
  pad = max((out - 1) * stride + k - n, 0)
  lo = pad // 2
  return sum(1 for o in range(out) for j in range(k) if 0 <= o * stride + j - lo < n)


@dataclasses.dataclass
class _Op:
  name: str
  flops: float
  kind: str  # 'conv' | 'dense' | 'attn' (batched products: QK^T, PV)
  in_block: bool = False  # inside a (remat-able) Block
  input_grad: bool = True  # the backward needs d/d input (not just d/d weights)
  xla_weight: float = 1.0  # 1, or 0 for scanned blocks after the first (XLA counts once)
  frozen: bool = False  # forward only (the frozen T5)


class _Counter:
  def __init__(self):
    self.ops: list[_Op] = []
    self.ctx = dict(in_block=False, xla_weight=1.0)

  def add(self, name, flops, kind='dense', **kw):
    self.ops.append(_Op(name, float(flops), kind, **{**self.ctx, **kw}))


def _heads(channels: int, head_dim: int) -> int:
  return max(1, channels // head_dim)


def _conv(c: _Counter, name, b, h, w, cin, cout, k=3, stride=1, **kw):
  taps = same_taps(h, k, stride) * same_taps(w, k, stride)
  c.add(name, 2 * b * taps * cin * cout, 'conv', **kw)


def _mha(c: _Counter, name, rows_q, q_in, rows_kv, kv_in, groups, q_len, kv_len, n, hd, out):
  """q/k/v projections, QK^T and PV over `groups` independent attentions, out projection."""
  inner = n * hd
  c.add(f'{name}.q', 2 * rows_q * q_in * inner)
  c.add(f'{name}.kv', 2 * 2 * rows_kv * kv_in * inner)
  c.add(f'{name}.qk', 2 * groups * n * q_len * kv_len * hd, 'attn')
  c.add(f'{name}.pv', 2 * groups * n * q_len * kv_len * hd, 'attn')
  c.add(f'{name}.out', 2 * rows_q * inner * out)


def _block(c: _Counter, cfg, lv, name, b, t, h, w, cin, emb_rows, text_frames, text_len):
  ch, hd = lv.channels, cfg.head_dim
  n_pix = b * t * h * w
  _conv(c, f'{name}.conv1', b * t, h, w, cin, ch)
  c.add(f'{name}.film', 2 * emb_rows * cfg.emb_dim * 2 * ch)
  _conv(c, f'{name}.conv2', b * t, h, w, ch, ch)
  if cin != ch:
    _conv(c, f'{name}.skip', b * t, h, w, cin, ch, k=1)
  n = _heads(ch, hd)
  if lv.spatial_attention:
    s = h * w
    _mha(c, f'{name}.spatial', n_pix, ch, n_pix, ch, b * t, s, s, n, hd, ch)
  if lv.cross_attention:
    rows_kv = b * text_frames * text_len
    _mha(
      c, f'{name}.cross', n_pix, ch, rows_kv, cfg.text_dim, b * text_frames,
      (t // text_frames) * h * w, text_len + 1, n, hd, ch,
    )  # fmt: skip
  if lv.temporal == 'attention':
    _mha(c, f'{name}.temporal', n_pix, ch, n_pix, ch, b * h * w, t, t, n, hd, ch)
  elif lv.temporal == 'conv':
    taps = sum(1 for d in (-1, 0, 1) if abs(d) < t)
    c.add(f'{name}.temporal_conv', 2 * taps * n_pix * ch * ch)


def t5_forward_flops(t5_cfg, rows: int, length: int) -> float:
  """Forward FLOPs of a T5 v1.1 encoder over `rows` sequences of `length` tokens."""
  d, inner, dff, n = t5_cfg.d_model, t5_cfg.inner_dim, t5_cfg.d_ff, rows * length
  per_layer = (
    2 * n * d * inner * 4  # q, k, v, out
    + 2 * 2 * rows * t5_cfg.num_heads * length * length * t5_cfg.d_kv  # QK^T, PV
    + 2 * n * d * dff * 3  # wi_0, wi_1, wo
  )
  return float(per_layer * t5_cfg.num_layers)


def unet_flops(
  cfg,
  *,
  batch: int,
  frames: int,
  height: int,
  width: int,
  text_len: int = 0,
  text_per_frame: bool = True,
  logsnr_per_frame: bool = True,
  t5_cfg=None,
) -> dict:
  """FLOPs of VideoUNet(cfg) at this input size; see the module doc for the fields.

  text_per_frame: text arrives as [B, T, L, D] (what the train step passes: one
    caption per frame, so the text projections run T times), else [B, L, D].
  logsnr_per_frame: logsnr [B, T] (per_frame_time training) rather than [B].
  t5_cfg: a T5Config run (frozen, forward only) on the B*T captions inside the step.
  """
  b, t = batch, frames
  c = _Counter()
  e = cfg.emb_dim
  rows = b * t if logsnr_per_frame else b
  c.add('logsnr_emb.fc1', 2 * rows * e * 4 * e, input_grad=False)
  c.add('logsnr_emb.fc2', 2 * rows * 4 * e * e)
  tt = (t if text_per_frame else 1) if cfg.text_dim else 0
  emb_rows = rows
  if cfg.text_dim and cfg.text_pool:
    d = cfg.text_dim
    n = _heads(d, cfg.head_dim)
    _mha(c, 'text_pool', b * tt, d, b * tt * text_len, d, b * tt, 1, text_len + 1, n,
         cfg.head_dim, d)  # fmt: skip
    c.add('text_pool.proj', 2 * b * tt * d * e)
    emb_rows = max(rows, b * tt)
  if cfg.cond_augment:
    c.add('cond_logsnr_emb.fc1', 2 * b * e * 4 * e, input_grad=False)
    c.add('cond_logsnr_emb.fc2', 2 * b * 4 * e * e)

  chans = [lv.channels for lv in cfg.levels]
  _conv(c, 'conv_in', b * t, height, width, cfg.in_channels + cfg.cond_channels, chans[0],
        input_grad=False)  # fmt: skip

  def blocks(side, i, first, cin, h, w):
    lv = cfg.levels[i]
    stack = cfg.scan_blocks and lv.num_res_blocks - first >= 2
    for j in range(first, lv.num_res_blocks):
      c.ctx = dict(in_block=True, xla_weight=0.0 if stack and j > first else 1.0)
      _block(c, cfg, lv, f'{side}{i}_block{j}', b, t, h, w, cin, emb_rows, tt or 1, text_len)
      cin = lv.channels
    c.ctx = dict(in_block=False, xla_weight=1.0)

  sizes = [(height, width)]
  for _ in chans[1:]:
    sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
  for i in range(len(chans)):
    if i > 0:
      _conv(c, f'down{i}_sample', b * t, *sizes[i - 1], chans[i - 1], chans[i], stride=2)
    blocks('down', i, 0, chans[i], *sizes[i])
  for i in reversed(range(len(chans))):
    c.ctx = dict(in_block=True, xla_weight=1.0)
    _block(c, cfg, cfg.levels[i], f'up{i}_block0', b, t, *sizes[i], 2 * chans[i], emb_rows,
           tt or 1, text_len)  # fmt: skip
    blocks('up', i, 1, chans[i], *sizes[i])
    if i > 0:
      _conv(c, f'up{i}_sample', b * t, *sizes[i - 1], chans[i], chans[i - 1])
  _conv(c, 'conv_out', b * t, height, width, chans[0], cfg.in_channels)

  if t5_cfg is not None and text_len:
    c.add('t5', t5_forward_flops(t5_cfg, b * t if text_per_frame else b, text_len), frozen=True)

  unet = [op for op in c.ops if not op.frozen]
  frozen = sum(op.flops for op in c.ops if op.frozen)
  fwd = sum(op.flops for op in unet)
  recompute_kinds = {'full': {'conv', 'dense', 'attn'}, 'dots': {'conv'},
                     'dots_no_batch': {'conv', 'attn'}}.get(cfg.remat, set())  # fmt: skip
  xla = frozen
  for op in unet:
    grad = 2.0 if op.input_grad else 1.0
    remat = 1.0 if (op.in_block and op.kind in recompute_kinds) else 0.0
    xla += op.xla_weight * op.flops * (1.0 + grad + remat)
  return {
    'forward': fwd + frozen,
    'model_train': 3.0 * fwd + frozen,
    'xla_view': xla,
    'unet_forward': fwd,
    't5_forward': frozen,
    'by_kind': {k: sum(op.flops for op in unet if op.kind == k) for k in ('conv', 'dense', 'attn')},
  }


def xla_flops(compiled) -> float | None:
  """XLA's FLOP count of a compiled program (None where the backend gives none)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - some backends do not implement it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  f = float(cost['flops'])
  return f if math.isfinite(f) and f > 0 else None
