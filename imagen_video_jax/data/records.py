"""The on-disk example format shared by every writer and the grain pipeline.

One ArrayRecord record is one example: a clip (or a still image, a 1-frame clip) as
uint8 ``[T, H, W, 3]``, its caption, its frame rate, and optional metadata (ground-truth
attributes for the Moving Digits world, the source file and time for imported videos).

The record is a small self-describing container, not a pickle and not a TF Example:

    b"IVJ1" | uint32 header length | JSON header | raw array bytes

The JSON header holds the scalars and, for every array, its dtype, shape and byte
offset, so decoding is one ``json.loads`` plus zero-copy ``np.frombuffer`` calls and
needs neither TensorFlow nor anything that can execute code from the file.

Files are named ``{prefix}-{index:05d}.array_record`` (prefix ``videos``, ``images``,
``eval_videos``); :func:`shard_paths` finds them again.
"""

from __future__ import annotations

import bisect
import dataclasses
import glob
import json
import logging
import os
import struct
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MAGIC = b'IVJ1'
_LEN = struct.Struct('<I')
VIDEO_PREFIX = 'videos'
IMAGE_PREFIX = 'images'
EVAL_VIDEO_PREFIX = 'eval_videos'
INFO_FILE = 'dataset_info.json'


@dataclasses.dataclass(frozen=True)
class Example:
  """One stored clip or image.

  Attributes:
    video: uint8 ``[T, H, W, 3]``; a still image has ``T == 1``.
    caption: the text describing it.
    fps: frame rate of ``video`` (0 for a still image).
    meta: JSON-serialisable extras (ground truth, provenance).
    arrays: extra named arrays (for Moving Digits: ``positions [T, 2]``).
  """

  video: np.ndarray
  caption: str
  fps: float = 0.0
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  arrays: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def is_image(self) -> bool:
    return self.video.shape[0] == 1


def encode(example: Example) -> bytes:
  """Serialises ``example`` into the bytes of one ArrayRecord record."""
  video = np.asarray(example.video)
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f'video must be uint8 [T, H, W, 3], got {video.dtype} {video.shape}')
  arrays = {'video': video, **{k: np.asarray(v) for k, v in example.arrays.items()}}
  specs, blobs, offset = {}, [], 0
  for name, arr in arrays.items():
    arr = np.ascontiguousarray(arr)
    specs[name] = {'dtype': arr.dtype.str, 'shape': list(arr.shape), 'offset': offset}
    blobs.append(arr.tobytes())
    offset += arr.nbytes
  header = json.dumps(
    {
      'caption': example.caption,
      'fps': float(example.fps),
      'meta': dict(example.meta),
      'arrays': specs,
    },
    sort_keys=True,
  ).encode('utf-8')
  return b''.join([MAGIC, _LEN.pack(len(header)), header, *blobs])


def decode(record: bytes) -> Example:
  """Inverse of :func:`encode`. Arrays are read-only views into ``record``."""
  if record[:4] != MAGIC:
    raise ValueError('not an imagen_video_jax record (bad magic bytes)')
  (n,) = _LEN.unpack_from(record, 4)
  header = json.loads(record[8 : 8 + n].decode('utf-8'))
  base = 8 + n
  arrays = {}
  for name, spec in header['arrays'].items():
    dtype = np.dtype(spec['dtype'])
    count = int(np.prod(spec['shape'], dtype=np.int64))
    arrays[name] = np.frombuffer(
      record, dtype=dtype, count=count, offset=base + spec['offset']
    ).reshape(spec['shape'])
  video = arrays.pop('video')
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f'the video is not uint8 [T, H, W, 3]: {video.dtype} {video.shape}')
  return Example(
    video=video, caption=header['caption'], fps=header['fps'], meta=header['meta'], arrays=arrays
  )


def shard_name(prefix: str, index: int) -> str:
  """The file name of shard `index` of `prefix` (what :func:`shard_paths` finds)."""
  return f'{prefix}-{index:05d}.array_record'


def open_shard(path: str):
  """An ArrayRecordWriter for one shard file."""
  from array_record.python import array_record_module  # heavy import, lazily

  # group_size:1 keeps every record independently seekable: random access is what
  # grain's shuffling needs.
  return array_record_module.ArrayRecordWriter(path, 'group_size:1')


def refuse_existing(folder: str, prefix: str) -> None:
  """Raises FileExistsError if `folder` already holds `prefix` shards (never overwrite)."""
  stale = shard_paths(folder, prefix, missing_ok=True)
  if stale:
    raise FileExistsError(
      f'{folder} already holds {prefix} shards ({stale[0]} ...); choose an empty --output folder'
    )


class ShardedWriter:
  """Writes records into ``{prefix}-00000.array_record``, ``-00001``, ... in a folder.

  A shard is closed (and so readable) as soon as it holds ``per_shard`` records, and
  :meth:`close` runs on any exit from a ``with`` block, so an interrupted writer never
  loses the shards it already finished.
  """

  def __init__(self, folder: str | os.PathLike, prefix: str, per_shard: int = 1000):
    if per_shard < 1:
      raise ValueError('per_shard must be >= 1')
    self.folder, self.prefix, self.per_shard = os.fspath(folder), prefix, per_shard
    os.makedirs(self.folder, exist_ok=True)
    refuse_existing(self.folder, prefix)
    self.paths: list[str] = []
    self.count = 0
    self._writer = None
    self._in_shard = 0

  def write(self, example: Example | bytes) -> None:
    """Appends one example (or already encoded record)."""
    if self._writer is None:
      path = os.path.join(self.folder, shard_name(self.prefix, len(self.paths)))
      self._writer = open_shard(path)
      self.paths.append(path)
    self._writer.write(example if isinstance(example, bytes) else encode(example))
    self.count += 1
    self._in_shard += 1
    if self._in_shard >= self.per_shard:
      self._close_shard()

  def _close_shard(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer, self._in_shard = None, 0

  def close(self) -> None:
    self._close_shard()

  def __enter__(self) -> 'ShardedWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def shard_paths(
  folder_or_paths: str | os.PathLike | Sequence[str],
  prefix: str = VIDEO_PREFIX,
  missing_ok: bool = False,
) -> list[str]:
  """Resolves a folder, a glob pattern, one file or a list of files into shard paths.

  A folder means ``{folder}/{prefix}-*.array_record``, sorted, so that every process and
  every restart sees the same order. A folder's name is taken literally (``dat[x]`` is a
  folder, not a pattern); only a path that is not a folder is read as a glob.
  """
  if isinstance(folder_or_paths, (list, tuple)):
    return [os.fspath(p) for p in folder_or_paths]
  path = os.fspath(folder_or_paths)
  if os.path.isdir(path):
    found = sorted(glob.glob(os.path.join(glob.escape(path), f'{prefix}-*.array_record')))
  elif any(c in path for c in '*?['):
    found = sorted(glob.glob(path))
  else:
    found = [path] if os.path.exists(path) else []
  if not found and not missing_ok:
    raise FileNotFoundError(f'no {prefix} ArrayRecord shards at {path!r}')
  return found


class BadRecordError(ValueError):
  """A stored record, or a whole shard, cannot be read; the message names the file."""


_skipped = {'records': 0, 'shards': 0}
_skipped_lock = threading.Lock()


def skipped_records() -> dict[str, int]:
  """How many bad records and unreadable shards :class:`ShardSource` skipped so far.

  Counts this process's reads (grain worker processes count their own, and log each
  skip themselves).
  """
  with _skipped_lock:
    return dict(_skipped)


def _skip(kind: str, error: BadRecordError) -> None:
  with _skipped_lock:
    _skipped[kind] += 1
    n = _skipped[kind]
  if n <= 10 or n % 100 == 0:
    logging.warning('skipping a bad %s (%d skipped so far): %s', kind[:-1], n, error)


class ShardSource:
  """Random access to the examples stored in ArrayRecord shards (grain's data source).

  Items are decoded :class:`Example` s. A record that cannot be read or decoded raises
  :class:`BadRecordError` naming its shard file and its index in that shard, and a
  shard that cannot be opened (truncated, not an ArrayRecord file) one naming the
  shard. With ``skip_bad=True`` such a record reads as ``None`` instead (grain drops
  it) and an unreadable shard is left out; either way it is counted
  (:func:`skipped_records`) and logged as a warning, never skipped silently.
  """

  def __init__(self, paths: Sequence[str], skip_bad: bool = False):
    self._skip_bad = skip_bad
    self.paths = [os.fspath(p) for p in paths]
    try:
      self._source = self._open(self.paths)
    except Exception:  # find the shard(s) at fault, and name them
      good = []
      for path in self.paths:
        try:
          self._open([path])
          good.append(path)
        except Exception as e:
          err = BadRecordError(
            f'{path}: cannot open this ArrayRecord shard (truncated or corrupt?): '
            f'{type(e).__name__}: {e}'
          )
          if not skip_bad:
            raise err from e
          _skip('shards', err)
      if not good:
        raise BadRecordError(f'none of the shards can be read: {self.paths}') from None
      self.paths = good
      self._source = self._open(good)
    self._starts = None  # first index of every shard, computed on the first error

  @staticmethod
  def _open(paths):
    import grain

    return grain.sources.ArrayRecordDataSource(paths)

  def __len__(self) -> int:
    return len(self._source)

  def locate(self, index: int) -> tuple[str, int]:
    """(shard file, index in that shard) of record ``index``."""
    if self._starts is None:
      sizes = [len(self._open([p])) for p in self.paths]
      self._starts = np.cumsum([0] + sizes[:-1]).tolist()
    k = bisect.bisect_right(self._starts, index) - 1
    return self.paths[k], index - self._starts[k]

  def __getitem__(self, index: int) -> Example | None:
    try:
      return decode(self._source[index])
    except Exception as e:
      path, i = self.locate(index)
      err = BadRecordError(f'{path}: record {i}: {type(e).__name__}: {e}')
      if not self._skip_bad:
        raise err from e
      _skip('records', err)
      return None

  def __repr__(self) -> str:
    return f'ShardSource({len(self.paths)} shards, skip_bad={self._skip_bad})'


def write_info(folder: str | os.PathLike, info: Mapping[str, Any]) -> str:
  """Writes ``dataset_info.json`` (counts, sizes, seed) next to the shards."""
  path = os.path.join(os.fspath(folder), INFO_FILE)
  with open(path, 'w') as f:
    json.dump(dict(info), f, indent=2, sort_keys=True)
    f.write('\n')
  return path
