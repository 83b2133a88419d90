"""Scaled dot-product attention, one function, an implementation per backend.

`dot_product_attention(q, k, v, bias=, mask=, implementation=)` is what every attention
layer of the U-Net calls. All implementations compute the same function (softmax in
float32 whatever the compute dtype) and are tested against `reference` in values and
gradients:

- `reference`: two einsums around a softmax; XLA differentiates it. Runs everywhere.
- `chunked` (chosen on a one-device CPU for large attention): the attention of a few query/key sequences at
  a time (`lax.map` over chunks of batch x heads), with a custom gradient that saves
  the softmax's row max and sum and recomputes the probabilities. XLA's CPU backend runs the
  reference on [L, L] score temporaries for every batch row and head at once; those miss
  the caches (page-fault under glibc malloc at large L) and its backward pass differentiates
  a separate max/exp/sum. Over 1024 tokens chunks sized to stay in cache run 2.4x faster
  forward and 1.8x forward + backward; over the digits stages' 8 to 64 tokens the
  reference is as fast or faster, so `auto` keeps it there (benchmarks/BENCHMARKS.md).
- `cudnn` (chosen on GPU): `jax.nn.dot_product_attention`, cuDNN's fused flash kernel
  when the inputs allow it (16-bit compute, no per-row masks beyond its support), XLA's
  otherwise.
- `splash` (chosen on TPU): the Pallas splash-attention kernel for unmasked, unbiased
  attention over sequences it tiles (lengths multiples of 128, head_dim multiple of 128 or
  64); everything else (temporal attention's relative-position bias, the text mask) runs
  the reference, which XLA fuses well on TPU at those short lengths.

`auto` picks by `jax.default_backend()`; on a CPU with several devices (the fake-device
meshes of tests and dry runs) it keeps `reference`, which the partitioner shards as is.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

Implementation = Literal['auto', 'reference', 'chunked', 'cudnn', 'splash']
IMPLEMENTATIONS = ('auto', 'reference', 'chunked', 'cudnn', 'splash')

NEG_INF = -1e9  # large negative, finite: no NaN even if a softmax row were all masked

# Bytes of float32 score temporaries one chunk may hold (scores, probabilities and, in the
# backward pass, their gradients): about a 2-core CPU's L2 cache. Measured on the digits
# and 32x32 shapes: 256 KiB to 4 MiB chunks are within 10% of each other, whole-batch ones
# (the reference) 1.5-3x slower.
CHUNK_BYTES = 1 << 20

# `auto` on CPU keeps the reference below this many bytes of float32 scores per call: there
# the scores stay in cache anyway and the chunked kernel's row layout and loop cost as much
# as they save (benchmarks/attention_cpu.py, forward + backward: 64 tokens x 256 frames,
# 4 MB, 0.9x; 256 tokens x 64 frames, 16 MB, 1.5x; 1024 tokens x 64 rows, 256 MB, 1.8x).
CHUNKED_MIN_SCORE_BYTES = 8 << 20


def resolve(implementation: str = 'auto', score_bytes: int | None = None) -> str:
  """The implementation `auto` means here, or `implementation` checked.

  `auto` goes by backend and, on CPU, by the size of the call's float32 scores
  (`score_bytes`; None: large).
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
      f'attention implementation {implementation!r} is not one of {list(IMPLEMENTATIONS)}'
    )
  if implementation != 'auto':
    return implementation
  backend = jax.default_backend()
  if backend == 'gpu':
    return 'cudnn'
  if backend == 'tpu':
    return 'splash'
  if backend == 'cpu' and jax.device_count() == 1:
    if score_bytes is None or score_bytes >= CHUNKED_MIN_SCORE_BYTES:
      return 'chunked'
  return 'reference'


def dot_product_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  bias: jax.Array | None = None,
  mask: jax.Array | None = None,
  implementation: str = 'auto',
) -> jax.Array:
  """Attention of q [..., Q, N, K] over k/v [..., S, N, K] -> [..., Q, N, K].

  `bias` (added to the logits) and `mask` (True: may attend) broadcast to [..., N, Q, S].
  The softmax runs in float32; the output has v's dtype.
  """
  score_bytes = 4 * math.prod(q.shape[:-3]) * q.shape[-2] * q.shape[-3] * k.shape[-3]
  impl = resolve(implementation, score_bytes)
  if impl == 'chunked':
    return _chunked(q, k, v, bias, mask)
  if impl == 'cudnn':
    return _cudnn(q, k, v, bias, mask)
  if impl == 'splash' and bias is None and mask is None and _splash_fits(q, k):
    return _splash(q, k, v)
  return reference(q, k, v, bias=bias, mask=mask)


def reference(q, k, v, *, bias=None, mask=None):
  """The definition: einsum, softmax in float32, einsum."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum('...qnk,...snk->...nqs', q, k).astype(jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, NEG_INF)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum('...nqs,...snk->...qnk', probs, v)


# ---------------------------------------------------------------------------
# Rows: [..., Q, N, K] -> [R = prod(...) * N, Q, K], with bias/mask as [R | 1, Q | 1, S].
# ---------------------------------------------------------------------------


def _to_rows(x):
  *lead, length, n, d = x.shape
  return jnp.swapaxes(x.reshape(math.prod(lead), length, n, d), 1, 2).reshape(-1, length, d)


def _from_rows(x, shape):
  *lead, length, n, _ = shape
  y = x.reshape(math.prod(lead), n, length, x.shape[-1])
  return jnp.swapaxes(y, 1, 2).reshape(*lead, length, n, x.shape[-1])


def _rows_of(a, lead, n):
  """[..., N, Q, S]-broadcastable -> [R or 1, Q', S'] (only broadcast when it varies)."""
  if a is None:
    return None
  a = a.reshape((1,) * (len(lead) + 3 - a.ndim) + a.shape)
  if all(d == 1 for d in a.shape[:-2]):  # the same for every row: keep it shared
    return a.reshape(1, *a.shape[-2:])
  a = jnp.broadcast_to(a, (*lead, n, *a.shape[-2:]))
  return a.reshape(-1, *a.shape[-2:])


def _chunk_rows(rows: int, per_row_bytes: int) -> int:
  """The largest divisor of `rows` whose chunk of temporaries fits CHUNK_BYTES."""
  limit = max(1, min(rows, CHUNK_BYTES // max(per_row_bytes, 1)))
  for c in range(limit, 0, -1):
    if rows % c == 0:
      return c
  return 1


def _map_chunks(fn, args, rows, chunk):
  """fn over chunks of the rows of `args` (those with rows; shared ones passed whole)."""
  if chunk >= rows:
    return fn(*args)
  split = [a is not None and a.shape[0] == rows for a in args]

  def body(xs):
    it = iter(xs)
    return fn(*[next(it) if s else a for a, s in zip(args, split)])

  xs = [a.reshape(rows // chunk, chunk, *a.shape[1:]) for a, s in zip(args, split) if s]
  out = lax.map(body, xs)
  return out


def _unchunk(x, rows, chunk):
  return x.reshape(rows, *x.shape[2:]) if chunk < rows else x


def _logits(q, k, bias, mask):
  s = jnp.einsum('rqk,rsk->rqs', q, k, preferred_element_type=jnp.float32)
  if bias is not None:
    s = s + bias
  if mask is not None:
    s = jnp.where(mask, s, NEG_INF)
  return s


def _forward_chunk(q, k, v, bias, mask):
  s = _logits(q, k, bias, mask)
  m = jnp.max(s, axis=-1, keepdims=True)
  p = jnp.exp(s - m)
  l = jnp.sum(p, axis=-1, keepdims=True)
  o = jnp.einsum('rqs,rsk->rqk', p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  # The row's max and sum, kept apart: m + log(l) would round log(l) away when m is the
  # masked value -1e9 (a fully masked row), and the backward pass would recompute p * S.
  return (o / l).astype(v.dtype), jnp.concatenate([m, l], axis=-1)


def _backward_chunk(q, k, v, bias, mask, o, stats, do):
  p = jnp.exp(_logits(q, k, bias, mask) - stats[..., :1]) / stats[..., 1:]
  dv = jnp.einsum('rqs,rqk->rsk', p.astype(do.dtype), do, preferred_element_type=jnp.float32)
  dp = jnp.einsum('rqk,rsk->rqs', do, v, preferred_element_type=jnp.float32)
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
  ds = p * (dp - delta)
  if mask is not None:  # masked logits are constants: no gradient to q, k or the bias
    ds = jnp.where(mask, ds, 0.0)  # (p is not ~0 there when a whole row is masked)
  dq = jnp.einsum('rqs,rsk->rqk', ds.astype(k.dtype), k, preferred_element_type=jnp.float32)
  dk = jnp.einsum('rqs,rqk->rsk', ds.astype(q.dtype), q, preferred_element_type=jnp.float32)
  db = None
  if bias is not None:  # summed over what the bias broadcasts along
    axes = tuple(i for i in range(3) if bias.shape[i] == 1 and ds.shape[i] != 1)
    db = jnp.sum(ds, axis=axes, keepdims=True)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), db


@jax.custom_vjp
def _rows_attention(q, k, v, bias, mask):
  return _rows_forward(q, k, v, bias, mask)[0]


def _rows_forward(q, k, v, bias, mask):
  rows, length = q.shape[:2]
  chunk = _chunk_rows(rows, 3 * length * k.shape[1] * 4)
  o, stats = _map_chunks(_forward_chunk, (q, k, v, bias, mask), rows, chunk)
  o, stats = _unchunk(o, rows, chunk), _unchunk(stats, rows, chunk)
  return o, (q, k, v, bias, mask, o, stats)


def _rows_backward(res, do):
  q, k, v, bias, mask, o, stats = res
  rows, length = q.shape[:2]
  chunk = _chunk_rows(rows, 4 * length * k.shape[1] * 4)
  dq, dk, dv, db = _map_chunks(_backward_chunk, (q, k, v, bias, mask, o, stats, do), rows, chunk)
  dq, dk, dv = (_unchunk(x, rows, chunk) for x in (dq, dk, dv))
  if db is not None:
    if bias.shape[0] == rows:  # a bias per row: each chunk's rows
      db = _unchunk(db, rows, chunk)
    elif chunk < rows:  # a shared bias: [chunks, 1, Q', S'], each chunk's share
      db = jnp.sum(db, axis=0)
    db = db.astype(bias.dtype)
  dmask = None if mask is None else jnp.zeros(mask.shape, jax.dtypes.float0)
  return dq, dk, dv, db, dmask


_rows_attention.defvjp(_rows_forward, _rows_backward)


def _chunked(q, k, v, bias, mask):
  *lead, _, n, d = q.shape
  # Queries pre-scaled: one multiply of [Q, K] instead of one of every [Q, S] score.
  qr = _to_rows(q * jnp.asarray(d**-0.5, q.dtype))
  br = _rows_of(None if bias is None else bias.astype(jnp.float32), lead, n)
  mr = _rows_of(mask, lead, n)
  out = _rows_attention(qr, _to_rows(k), _to_rows(v), br, mr)
  return _from_rows(out, q.shape)


# ---------------------------------------------------------------------------
# GPU: jax.nn.dot_product_attention (cuDNN flash attention where it applies).
# ---------------------------------------------------------------------------


def _cudnn(q, k, v, bias, mask):
  *lead, lq, n, d = q.shape
  b = math.prod(lead)
  flat = lambda x: x.reshape(b, *x.shape[-3:])  # noqa: E731

  def four_d(a):
    if a is None:
      return None
    a = a.reshape((1,) * (len(lead) + 3 - a.ndim) + a.shape)
    if any(x != 1 for x in a.shape[:-3]):
      a = jnp.broadcast_to(a, (*lead, *a.shape[-3:]))
    return a.reshape(-1, *a.shape[-3:])

  # cuDNN's kernel needs 16-bit inputs; in float32 jax.nn picks XLA's implementation.
  impl = 'cudnn' if q.dtype in (jnp.bfloat16, jnp.float16) and d % 8 == 0 and d <= 128 else None
  try:
    out = jax.nn.dot_product_attention(
      flat(q),
      flat(k),
      flat(v),
      bias=four_d(None if bias is None else bias.astype(q.dtype)),
      mask=four_d(mask),
      implementation=impl,
    )
  except (ValueError, NotImplementedError):  # shapes or masks cuDNN does not take
    return reference(q, k, v, bias=bias, mask=mask)
  return out.reshape(q.shape[:-1] + (v.shape[-1],))


# ---------------------------------------------------------------------------
# TPU: Pallas splash attention for long unmasked sequences.
# ---------------------------------------------------------------------------


def _splash_fits(q, k) -> bool:
  return q.shape[-3] % 128 == 0 and k.shape[-3] % 128 == 0 and q.shape[-1] % 64 == 0


def _splash(q, k, v, *, interpret: bool = False):
  from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_kernel as kernel_lib,
    splash_attention_mask as mask_lib,
  )

  *lead, lq, n, d = q.shape
  ls = k.shape[-3]
  mask = mask_lib.MultiHeadMask([mask_lib.FullMask((lq, ls)) for _ in range(n)])
  kernel = kernel_lib.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)
  heads_first = lambda x: jnp.swapaxes(x.reshape(-1, *x.shape[-3:]), 1, 2)  # [B, N, L, K]
  qs = heads_first(q * jnp.asarray(d**-0.5, q.dtype))
  out = jax.vmap(kernel)(qs, heads_first(k), heads_first(v))
  return jnp.swapaxes(out, 1, 2).reshape(q.shape[:-1] + (v.shape[-1],))
