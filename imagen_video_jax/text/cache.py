"""The text-embedding cache: T5 outputs stored once, read by the data pipeline.

Running T5-XXL (4.6B parameters) inside every training step would cost more than
the base U-Net; Imagen Video precomputes the embeddings. A cache is a directory:

  metadata.json                        format, count, shapes, T5 config, shard list
  embeddings.array_record-00000-of-0000N   ArrayRecord shards, one record per caption

Each record is a msgpack map (no pickle; readable from any language):

  caption  str            the caption, exactly as given
  ids      bytes          int32 little-endian [L] token ids (padded with 0)
  mask     bytes          uint8 [L], 1 on real tokens
  emb      bytes          bfloat16 little-endian [n, D]: the rows where mask is 1
  length   int            L (= max_length)
  dim      int            D (= d_model)

Only unmasked rows of the embedding are stored (captions are short; XXL rows are
8 KiB each): positions where the mask is False read back as zeros, which is what
`encode_text` writes there anyway. Everything else round-trips bit for bit.

`CacheReader` is a random-access source (`len`, `[i]`) usable directly by grain;
`decode_record` turns raw record bytes into numpy arrays for pipelines that read the
ArrayRecord files themselves.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterator, Mapping

import ml_dtypes
import msgpack
import numpy as np

FORMAT = 'imagen_video_jax.text_cache/1'
METADATA = 'metadata.json'
PREFIX = 'embeddings.array_record'
_BF16 = np.dtype(ml_dtypes.bfloat16).newbyteorder('<')


def encode_record(caption: str, ids: np.ndarray, emb: np.ndarray, mask: np.ndarray) -> bytes:
  """Serialises one caption's `ids [L]`, `emb [L, D]` (bfloat16) and `mask [L]`."""
  ids, emb, mask = np.asarray(ids), np.asarray(emb), np.asarray(mask, bool)
  if ids.ndim != 1 or mask.shape != ids.shape or emb.ndim != 2 or emb.shape[0] != len(ids):
    raise ValueError(
      f'Expected ids [L], emb [L, D], mask [L]; got {ids.shape}, {emb.shape}, {mask.shape}.'
    )
  if emb.dtype != ml_dtypes.bfloat16:
    raise ValueError(
      f'Cache embeddings are bfloat16; got {emb.dtype}. Cast first '
      '(the cast is the only rounding the cache does).'
    )
  if not isinstance(caption, str):
    raise TypeError(f'caption must be str, got {type(caption).__name__}.')
  return msgpack.packb(
    {
      'caption': caption,
      'ids': ids.astype('<i4').tobytes(),
      'mask': mask.astype(np.uint8).tobytes(),
      'emb': np.ascontiguousarray(emb[mask]).astype(_BF16).tobytes(),
      'length': int(ids.shape[0]),
      'dim': int(emb.shape[1]),
    },
    use_bin_type=True,
  )


def decode_record(data: bytes) -> dict[str, Any]:
  """Inverse of `encode_record`: {'caption', 'ids' int32 [L], 'mask' bool [L],
  'emb' bfloat16 [L, D]} (zeros where mask is False)."""
  rec = msgpack.unpackb(data, raw=False)
  length, dim = rec['length'], rec['dim']
  mask = np.frombuffer(rec['mask'], np.uint8).astype(bool)
  emb = np.zeros((length, dim), ml_dtypes.bfloat16)
  emb[mask] = np.frombuffer(rec['emb'], _BF16).reshape(-1, dim)
  return {
    'caption': rec['caption'],
    'ids': np.frombuffer(rec['ids'], '<i4').astype(np.int32),
    'mask': mask,
    'emb': emb,
  }


def shard_names(num_shards: int) -> list[str]:
  return [f'{PREFIX}-{i:05d}-of-{num_shards:05d}' for i in range(num_shards)]


class CacheWriter:
  """Writes `num_records` records over shards of at most `shard_size` records.

  Use as a context manager; `metadata.json` is written on a clean exit only, so a
  crashed run never looks like a finished cache.
  """

  def __init__(
    self,
    directory: str,
    num_records: int,
    *,
    shard_size: int = 4096,
    metadata: Mapping[str, Any] | None = None,
  ):
    from array_record.python.array_record_module import ArrayRecordWriter

    if num_records < 1:
      raise ValueError('A cache needs at least one record.')
    self._writer_cls = ArrayRecordWriter
    self.directory = directory
    self.num_records = num_records
    self.shard_size = max(1, int(shard_size))
    self.num_shards = -(-num_records // self.shard_size)
    self.names = shard_names(self.num_shards)
    self.metadata = dict(metadata or {})
    self._written = 0
    self._writer = None
    os.makedirs(directory, exist_ok=True)

  def __enter__(self) -> 'CacheWriter':
    return self

  def write(self, caption: str, ids, emb, mask) -> None:
    """Appends one record (in caption order)."""
    if self._written >= self.num_records:
      raise ValueError(f'CacheWriter was sized for {self.num_records} records.')
    if self._written % self.shard_size == 0:
      self._close_shard()
      path = os.path.join(self.directory, self.names[self._written // self.shard_size])
      # group_size:1 keeps every record individually seekable (random access).
      self._writer = self._writer_cls(path, 'group_size:1')
    self._writer.write(encode_record(caption, ids, emb, mask))
    self._written += 1

  def _close_shard(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __exit__(self, exc_type, exc, tb) -> None:
    self._close_shard()
    if exc_type is not None:
      return
    if self._written != self.num_records:
      raise ValueError(f'CacheWriter got {self._written} of {self.num_records} records.')
    meta = {
      'format': FORMAT,
      'num_records': self.num_records,
      'shards': self.names,
      'shard_size': self.shard_size,
      **self.metadata,
    }
    with open(os.path.join(self.directory, METADATA), 'w') as f:
      json.dump(meta, f, indent=2)


class CacheReader:
  """Random access to a cache written by `CacheWriter` / `encode_text`."""

  def __init__(self, directory: str):
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    path = os.path.join(directory, METADATA)
    if not os.path.isfile(path):
      raise FileNotFoundError(
        f'{directory} is not a text-embedding cache (no {METADATA}); make one with '
        '`python -m imagen_video_jax.encode_text`.'
      )
    with open(path) as f:
      self.metadata = json.load(f)
    if self.metadata.get('format') != FORMAT:
      raise ValueError(
        f'{directory}: unknown cache format {self.metadata.get("format")!r}'
        f' (this reader reads {FORMAT}).'
      )
    self.paths = [os.path.join(directory, n) for n in self.metadata['shards']]
    missing = [p for p in self.paths if not os.path.isfile(p)]
    if missing:
      raise FileNotFoundError(f'Cache shards are missing: {missing}')
    self._source = ArrayRecordDataSource(self.paths)
    self._index: dict[str, int] | None = None

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return decode_record(self._source[i])

  def __iter__(self) -> Iterator[dict[str, Any]]:
    for i in range(len(self)):
      yield self[i]

  def lookup(self, caption: str) -> dict[str, Any]:
    """The record of `caption` (first occurrence); builds an index on first use."""
    if self._index is None:
      self._index = {}
      for i in range(len(self)):
        cap = msgpack.unpackb(self._source[i], raw=False)['caption']
        self._index.setdefault(cap, i)
    if caption not in self._index:
      raise KeyError(f'Caption {caption!r} is not in the cache.')
    return self[self._index[caption]]


def cache_files(directory: str) -> list[str]:
  """The ArrayRecord shard paths of a cache directory, in order."""
  return sorted(glob.glob(os.path.join(directory, PREFIX + '-*')))
