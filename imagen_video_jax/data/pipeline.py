"""grain input pipeline: stored clips -> per-stage training batches.

Every stage of the cascade reads the same shards. :func:`stage_example` turns one source
clip into one stage's example (frame stride for the stage's fps, centre crop and resize
for its size, and for super-resolution stages the low-resolution conditioning built
exactly as the sampler builds it), :func:`make_pipeline` mixes video rows with rows
packed from T independent still images, attaches text and batches.

Batch layout (``B`` rows per process, ``T`` = ``stage.frames``)::

  video      [B, T, H, W, 3] float32 in [-1, 1]
  frame_ids  [B, T] int32   one id per clip; a video row is all 0, a packed image row
                            is 0..T-1; -1 marks a padding frame
  cond       [B, T, H, W, 3] float32   (SR stages only)
  tokens     [B, T, L] int32 + text_mask [B, T, L] bool          (given a tokenizer)
  text_emb   [B, T, L, D] + text_mask [B, T, L] bool  (given an embedder; its dtype)
  captions   [B, T] str      (only with ``PipelineConfig.keep_captions``)
  fps        [B] float32     (only with ``PipelineConfig.frame_strides``): a video row's
                            frame rate, its clip's fps / the stride drawn; 0 for images

With a training crop (``PipelineConfig.crop``, see :class:`Crop`) every row is one
random window of the row the stage would make, and ``T, H, W`` above are the crop's
sizes, not the stage's: the same window of ``video``, ``cond`` (the full-size
conditioning's window), ``frame_ids`` and the per-frame captions, before text is
attached. Rows are computed in the window only (`stage_example` / `pack_images` with a
``window``), never at full size. The ids that remain after a temporal crop are
renumbered 0..k-1 in order of first appearance (a video row stays all 0, padding -1).

Text is per frame because a batch mixes video rows (one caption, repeated on every
frame) and packed image rows (one caption per frame) and must have one shape.

The pipeline is a ``grain.MapDataset`` chain converted to an ``IterDataset``: its
iterator's ``get_state()``/``set_state()`` resume exactly at the next batch, and
everything random is drawn from the seed and the element index, so it is deterministic.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from imagen_video_jax.data import records
from imagen_video_jax.stage import StageSpec

Tokenizer = Callable[[Sequence[str]], Any]
"""captions -> ids [N, L] int32 and mask [N, L] bool, as a tuple, a mapping or an object
with ``.ids``/``.mask`` (``functools.partial(text.tokenizer.Tokenizer(...),
max_length=L, warn=False)`` fits)."""
Embedder = Callable[[str], Any]
"""caption -> emb [L, D] and mask [L] bool, as a tuple, a mapping or an object with
``.emb``/``.mask`` (``text.cache.CacheReader(dir).lookup`` fits)."""
PAD_ID = -1


# docs/design.md, 'The cascades': the embedded cascade on 16-frame 32x32 8 fps Moving Digits clips.
DIGITS_STAGES: Mapping[str, StageSpec] = {
  'base': StageSpec(frames=8, height=16, width=16, frame_stride=2),
  'tsr': StageSpec(frames=16, height=16, width=16, kind='tsr', factor=2),
  'ssr': StageSpec(frames=16, height=32, width=32, kind='ssr', factor=2),
}


@dataclasses.dataclass(frozen=True)
class Crop:
  """A random training crop of each clip: frames x height x width (0 = the full axis).

  Fully convolutional stages (Imagen's largest SR model) can be trained on crops and
  sampled at full size. Each row is one window of the row the stage would make: of the
  video, the SR conditioning (the full-size conditioning's window, so the model sees
  exactly the conditioning it sees at full size in that region), the frame ids and the
  captions; computed in the window only. Offsets: for an SSR stage the spatial offsets, for a TSR stage the
  temporal offset, are multiples of ``spec.factor``, so the low-resolution conditioning
  keeps its full-size phase; other offsets are free.

  A crop trains the same function as full-size training only where the network is
  local: per-frame convolutions and temporal convolutions are (away from the window's
  edges, within their receptive field), but GroupNorm statistics (per whole frame) and
  spatial self-attention (over the whole frame) change with a spatial crop, and
  temporal attention with a temporal crop. Training-time sample videos are made at the
  crop's size; the exported stage samples at full size.
  """

  frames: int = 0
  height: int = 0
  width: int = 0

  def __post_init__(self):
    for name in ('frames', 'height', 'width'):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f'data.crop.{name} must be an integer (0 = full size); got {v!r}')

  @property
  def is_full(self) -> bool:
    """True when nothing is cropped on any axis (all three are 0)."""
    return not (self.frames or self.height or self.width)

  def problems(self, spec: StageSpec) -> list[str]:
    """Why this crop does not fit the stage (empty: it fits)."""
    out = []
    full = {'frames': spec.frames, 'height': spec.height, 'width': spec.width}
    aligned = {'tsr': ('frames',), 'ssr': ('height', 'width')}.get(spec.kind, ())
    for name, size in full.items():
      v = getattr(self, name)
      if v == 0:
        continue
      if not 1 <= v <= size:
        out.append(
          f'data.crop.{name}={v} is outside [1, {size}] (the {spec.kind} stage has {size} '
          f'{name}); use a value in that range, or 0 for the full {name}'
        )
      elif name in aligned and v % spec.factor:
        out.append(
          f'data.crop.{name}={v} is not a multiple of the {spec.kind} factor {spec.factor}, '
          f'so the low-resolution conditioning would lose its phase; use a multiple of '
          f'{spec.factor} (e.g. {max(spec.factor, v - v % spec.factor)}) or 0'
        )
    return out

  def size(self, spec: StageSpec) -> tuple[int, int, int]:
    """The training clip's (frames, height, width): each 0 is the stage's full size.

    Raises ValueError (naming field, value, limit and fix) if the crop does not fit.
    """
    problems = self.problems(spec)
    if problems:
      raise ValueError('; '.join(problems))
    return (self.frames or spec.frames, self.height or spec.height, self.width or spec.width)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """How batches are drawn (the stage decides what an example is).

  Attributes:
    batch_size: global batch size; each JAX process gets ``batch_size / process_count``
      rows: its slice of the same global batch, whatever the number of processes.
    image_fraction: fraction of rows that are packed still images (0 = videos only).
    seed: shuffling and random-crop seed.
    num_epochs: passes over the videos (None = forever).
    shuffle: shuffle the records (each epoch differently).
    random_offset: random temporal offset into source clips longer than a stage needs
      (else the clip's start).
    crop: a random training crop of every row (default: none), see :class:`Crop`.
    keep_captions: also emit the caption strings (``captions [B, T]``; keep them out of
      ``jax.device_put``).
    num_threads: grain read threads; prefetch_rows: rows read ahead (bounds memory);
    worker_count: grain worker processes (0 = none).
    shard_index, shard_count: this process's data shard (default: the JAX process).
    frame_strides: frame-rate augmentation (fps conditioning): each video row takes every
      s-th frame of its clip, s drawn uniformly from these strides (those whose frames
      fit in the clip; the stage's own stride if none does), and carries its frame rate,
      ``fps``; () (the default): the stage's stride, no ``fps``.
    skip_bad_records: skip a record (or shard) that cannot be read or decoded instead of
      stopping with an error naming its shard file and record index; each skip is
      counted (``records.skipped_records()``) and logged. A skipped record shifts the
      rows after it, so batches then differ from those of the intact data.
  """

  batch_size: int
  image_fraction: float = 0.0
  seed: int = 0
  num_epochs: int | None = None
  shuffle: bool = True
  random_offset: bool = True
  keep_captions: bool = False
  num_threads: int = 4
  prefetch_rows: int = 64
  worker_count: int = 0
  shard_index: int | None = None
  shard_count: int | None = None
  skip_bad_records: bool = False
  crop: Crop = Crop()
  frame_strides: tuple[int, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, 'frame_strides', tuple(int(s) for s in self.frame_strides))
    if any(s < 1 for s in self.frame_strides):
      raise ValueError(f'frame_strides must be >= 1; got {self.frame_strides}')
    if self.batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {self.batch_size}')
    if not 0.0 <= self.image_fraction <= 1.0:
      raise ValueError(f'image_fraction must be in [0, 1], got {self.image_fraction}')


# ----------------------------------------------------------------------------- resizing
def _resize_weights(in_size: int, out_size: int, antialias: bool) -> np.ndarray:
  """[out, in] triangle-kernel weights, the same as ``jax.image.resize(..., "bilinear")``.

  Written in numpy so the data pipeline needs no JAX, yet gives the conditioning the
  sampler builds with ``jax.image.resize`` (half-pixel centres, antialiased when
  shrinking, weights renormalised at the borders).
  """
  inv = in_size / out_size
  kernel_scale = max(inv, 1.0) if antialias else 1.0
  sample = (np.arange(out_size, dtype=np.float64) + 0.5) * inv - 0.5
  x = np.abs(sample[:, None] - np.arange(in_size, dtype=np.float64)[None]) / kernel_scale
  w = np.maximum(0.0, 1.0 - x)
  total = w.sum(axis=1, keepdims=True)
  w = np.where(np.abs(total) > 1000 * np.finfo(np.float32).eps, w / np.where(total, total, 1), 0)
  inside = (sample >= -0.5) & (sample <= in_size - 0.5)
  return np.where(inside[:, None], w, 0.0).astype(np.float32)


def resize_frames(x: np.ndarray, height: int, width: int, antialias: bool = True) -> np.ndarray:
  """Bilinearly resizes ``x [..., H, W, C]`` to ``[..., height, width, C]`` (float32).

  Matches ``jax.image.resize(x, shape, "bilinear", antialias=antialias)``.
  """
  x = np.asarray(x, np.float32)
  h, w = x.shape[-3:-1]
  if (h, w) != (height, width):
    x = np.einsum('oh,...hwc->...owc', _resize_weights(h, height, antialias), x)
    x = np.einsum('ow,...hwc->...hoc', _resize_weights(w, width, antialias), x)
  return x


def centre_crop(x: np.ndarray, height: int, width: int) -> np.ndarray:
  """Crops ``x [..., H, W, C]`` about its centre to the aspect ratio height:width."""
  h, w = x.shape[-3:-1]
  if h * width > w * height:  # too tall
    ch = max(1, round(w * height / width))
    top = (h - ch) // 2
    return x[..., top : top + ch, :, :]
  if h * width < w * height:  # too wide
    cw = max(1, round(h * width / height))
    left = (w - cw) // 2
    return x[..., :, left : left + cw, :]
  return x


def to_model_range(x_uint8: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return np.asarray(x_uint8, np.float32) / 127.5 - 1.0


def sr_condition(video: np.ndarray, frame_ids: np.ndarray, stage: StageSpec) -> np.ndarray:
  """The low-resolution conditioning of an SR stage, brought to the output size.

  TSR: within each clip (run of equal ``frame_ids``), every ``factor``-th frame repeated
  ``factor`` times. SSR: each frame resized down by ``factor`` (antialiased), then
  bilinearly back up. Padding frames (negative id) get zeros.

  Args:
    video: float ``[T, H, W, C]`` at the stage's output size.
    frame_ids: int ``[T]``.
    stage: an SR stage.
  """
  cond = np.asarray(video, np.float32)
  k = stage.temporal_factor
  if k > 1:
    src = np.arange(len(frame_ids))
    for t in range(len(frame_ids)):
      start = t
      while start > 0 and frame_ids[start - 1] == frame_ids[t]:
        start -= 1
      src[t] = start + ((t - start) // k) * k
    cond = cond[src]
  if stage.spatial_factor > 1:
    low = resize_frames(cond, stage.cond_height, stage.cond_width, antialias=True)
    cond = resize_frames(low, stage.height, stage.width, antialias=False)
  return np.where((np.asarray(frame_ids) < 0)[:, None, None, None], 0.0, cond).astype(np.float32)


# --------------------------------------------------------------------- stage examples
def _as_example(element: Any) -> records.Example:
  """Accepts our record bytes or a ``tfds.data_source`` dict."""
  if isinstance(element, (bytes, bytearray, memoryview)):
    return records.decode(bytes(element))
  if isinstance(element, Mapping):
    caption = element['caption']
    return records.Example(
      video=np.asarray(element['video'], np.uint8),
      caption=caption.decode('utf-8') if isinstance(caption, bytes) else str(caption),
      fps=float(element.get('fps', 0.0)),
    )
  if isinstance(element, records.Example):
    return element
  raise TypeError(f'cannot read a {type(element).__name__} as a clip')


def _fit(frames_uint8: np.ndarray, stage: StageSpec) -> np.ndarray:
  """Centre-crops and resizes uint8 frames to the stage's size, in [-1, 1]."""
  x = centre_crop(frames_uint8, stage.height, stage.width)
  return resize_frames(to_model_range(x), stage.height, stage.width)


Window = tuple[tuple[int, int, int], tuple[int, int, int]]  # ((t0, y0, x0), (t, h, w))


def _rows(x: np.ndarray, w: np.ndarray | None, axis: int) -> np.ndarray:
  """Applies [out, in] weights along `axis` (-3: rows, -2: columns); None: as it is."""
  if w is None:
    return x
  spec = 'oh,...hwc->...owc' if axis == -3 else 'ow,...hwc->...hoc'
  return np.einsum(spec, w, x)


def _fit_window(frames_uint8: np.ndarray, stage: StageSpec, window: Window):
  """`_fit`'s frames in the window's rows and columns, and for an SSR stage the window of
  `sr_condition`'s conditioning; computed without the full-size frames.

  A row of a resize is one row of its weight matrix, so the window's frames are those of
  the full-size frames. The conditioning's low-resolution frames come from the source
  through the two resizes' composed weights (float64, then float32), so they equal the
  full-size path's up to float32 rounding (~1e-6).
  """
  (_, y0, x0), (_, h, w) = window
  x = to_model_range(centre_crop(frames_uint8, stage.height, stage.width))
  sh, sw = x.shape[-3:-1]

  def weights(n_in, n_out, lo=0, hi=None, antialias=True):
    if n_in == n_out:
      return np.eye(n_in, dtype=np.float32)[lo:hi]
    return _resize_weights(n_in, n_out, antialias)[lo:hi]

  wy, wx = weights(sh, stage.height), weights(sw, stage.width)
  frames = _rows(_rows(x, wy[y0 : y0 + h], -3), wx[x0 : x0 + w], -2)
  if stage.spatial_factor == 1:
    return frames, None
  compose = lambda down, full: (down.astype(np.float64) @ full.astype(np.float64)).astype(
    np.float32
  )
  low = _rows(x, compose(weights(stage.height, stage.cond_height), wy), -3)
  low = _rows(low, compose(weights(stage.width, stage.cond_width), wx), -2)
  up_y = weights(stage.cond_height, stage.height, y0, y0 + h, antialias=False)
  up_x = weights(stage.cond_width, stage.width, x0, x0 + w, antialias=False)
  return frames, _rows(_rows(low, up_y, -3), up_x, -2)


def _frames(frames_uint8: np.ndarray, stage: StageSpec, window: Window | None):
  """(frames, SSR conditioning or None) of source frames: the whole stage size
  (`sr_condition` then makes the conditioning), or one window (`_fit_window`)."""
  if window is None:
    return _fit(frames_uint8, stage), None
  return _fit_window(frames_uint8, stage, window)


def _row(stage: StageSpec, window: Window | None, sources: list, captions: list) -> dict:
  """One row from its frames' sources: `sources[i]` (uint8 frames of one clip, or None
  for a padding frame) fills the window's frame i. Ids: one per distinct clip in order
  (a video row: all 0; packed images: 0..k-1); -1 for padding."""
  t, h, w = (stage.frames, stage.height, stage.width) if window is None else window[1]
  frames = np.zeros((t, h, w, 3), np.float32)
  cond = np.zeros((t, h, w, 3), np.float32) if window and stage.spatial_factor > 1 else None
  ids = np.full((t,), PAD_ID, np.int32)
  for clip_id, (pos, src) in enumerate(sources):
    f, c = _frames(src, stage, window)
    frames[pos], ids[pos] = f, clip_id
    if cond is not None:
      cond[pos] = c
  row = {'video': frames, 'frame_ids': ids, 'captions': captions}
  if stage.is_sr:
    # SSR windows: the full-size conditioning's window (`_fit_window`). Otherwise
    # `sr_condition` of the frames: a TSR window starts at a multiple of the factor within
    # clips that start at 0, so its frames' sources lie inside it and the result is the
    # full row's conditioning, windowed.
    row['cond'] = (
      sr_condition(frames, ids, stage)
      if cond is None
      else np.where((ids < 0)[:, None, None, None], 0.0, cond).astype(np.float32)
    )
  return row


def stage_example(
  element: Any, stage: StageSpec, offset: int = 0, window: Window | None = None
) -> dict[str, np.ndarray]:
  """One stage's video row from one stored clip.

  Takes frames ``offset, offset + stride, ...``; a clip too short for the stage is
  padded with padding frames (id -1, zeros) rather than dropped. `window`
  (``((t0, y0, x0), (t, h, w))``, see `crop_window`): only that window of the row,
  computed without making the full-size row (`crop_row` of the full row, up to float32
  rounding of an SSR conditioning).
  """
  ex = _as_example(element)
  idx = offset + stage.frame_stride * np.arange(stage.frames)
  if window is not None:
    (t0, _, _), (t, _, _) = window
    idx = idx[t0 : t0 + t]
  valid = idx < ex.video.shape[0]
  sources = [(valid, ex.video[idx[valid]])] if valid.any() else []
  return _row(stage, window, sources, [ex.caption] * len(idx))


def pack_images(
  elements: Sequence[Any], stage: StageSpec, window: Window | None = None
) -> dict[str, np.ndarray]:
  """Packs up to ``stage.frames`` still images into one row with distinct frame ids
  (`window`: only that window of the row, as in `stage_example`; its images are
  renumbered 0..k-1, as `crop_row` does)."""
  if len(elements) > stage.frames:
    raise ValueError(f'{len(elements)} images do not fit in {stage.frames} frames')
  t0, t = (0, stage.frames) if window is None else (window[0][0], window[1][0])
  examples = [_as_example(e) for e in elements[t0 : t0 + t]]
  captions = [ex.caption for ex in examples] + [''] * (t - len(examples))
  return _row(stage, window, [(i, ex.video[:1]) for i, ex in enumerate(examples)], captions)


class _Cropping(grain.transforms.RandomMap):
  """A row maker that draws each row's crop window (none without a crop)."""

  def __init__(self, stage: StageSpec, crop: Crop):
    self.stage, size = stage, crop.size(stage)
    self.size = None if size == (stage.frames, stage.height, stage.width) else size

  def window(self, rng: np.random.Generator) -> Window | None:
    return None if self.size is None else (crop_window(self.stage, self.size, rng), self.size)


class _VideoRow(_Cropping):
  def __init__(
    self,
    stage: StageSpec,
    random_offset: bool,
    crop: Crop = Crop(),
    frame_strides: tuple[int, ...] = (),
  ):
    super().__init__(stage, crop)
    self.random_offset = random_offset
    self.frame_strides = tuple(frame_strides)

  def random_map(self, element, rng: np.random.Generator):
    ex = _as_example(element)
    stage = self.stage
    if self.frame_strides:
      n = ex.video.shape[0]
      fits = [s for s in self.frame_strides if (stage.frames - 1) * s < n] or [stage.frame_stride]
      stage = dataclasses.replace(stage, frame_stride=int(fits[rng.integers(len(fits))]))
    slack = ex.video.shape[0] - stage.source_span
    offset = int(rng.integers(slack + 1)) if self.random_offset and slack > 0 else 0
    row = stage_example(ex, stage, offset, self.window(rng))
    if self.frame_strides:
      row['fps'] = np.float32(ex.fps / stage.frame_stride)
    return row


class _StillRate(grain.transforms.Map):
  """Packed images carry frame rate 0 when video rows carry theirs (fps conditioning)."""

  def map(self, row):
    return {**row, 'fps': np.float32(0.0)}


class _PackImages(_Cropping):
  def random_map(self, elements, rng: np.random.Generator):
    # A skipped bad record (None) leaves its frame as padding.
    return pack_images([e for e in elements if e is not None], self.stage, self.window(rng))


def renumber_frame_ids(frame_ids: np.ndarray) -> np.ndarray:
  """Maps the non-negative ids to 0..k-1 in order of first appearance; -1 stays -1."""
  ids = np.asarray(frame_ids)
  out = np.full(ids.shape, PAD_ID, np.int32)
  seen: dict[int, int] = {}
  for i, v in enumerate(ids.tolist()):
    if v >= 0:
      out[i] = seen.setdefault(v, len(seen))
  return out


def crop_window(
  spec: StageSpec, size: tuple[int, int, int], rng: np.random.Generator
) -> tuple[int, int, int]:
  """A random (frame, top, left) offset of a ``size`` window in a clip of ``spec``.

  The SR conditioning's axis (time for TSR, space for SSR) moves in steps of
  ``spec.factor`` so the window keeps the conditioning's full-size phase.
  """
  steps = (spec.temporal_factor, spec.spatial_factor, spec.spatial_factor)
  out = []
  for full, n, step in zip((spec.frames, spec.height, spec.width), size, steps):
    out.append(step * int(rng.integers((full - n) // step + 1)))
  return tuple(out)


def crop_row(row: dict, offset: tuple[int, int, int], size: tuple[int, int, int]) -> dict:
  """The ``size`` window at ``offset`` of one full-size row (before text is attached):
  what the pipeline's cropped rows are (`stage_example` / `pack_images` with a window
  compute them without the full-size row)."""
  (t0, y0, x0), (t, h, w) = offset, size
  out = dict(row)
  for key in ('video', 'cond'):
    if key in row:
      out[key] = np.ascontiguousarray(row[key][t0 : t0 + t, y0 : y0 + h, x0 : x0 + w])
  out['frame_ids'] = renumber_frame_ids(row['frame_ids'][t0 : t0 + t])
  out['captions'] = list(row['captions'][t0 : t0 + t])
  return out


def _pair(out: Any, first: str) -> tuple[np.ndarray, np.ndarray]:
  """(ids or emb, mask) from a tuple, a mapping or an object with attributes."""
  if isinstance(out, Mapping):
    return out[first], out['mask']
  if hasattr(out, first) and hasattr(out, 'mask'):
    return getattr(out, first), out.mask
  a, m = out
  return a, m


class _AttachText(grain.transforms.Map):
  """Adds per-frame text; padding frames get an all-false mask."""

  def __init__(self, tokenizer: Tokenizer | None, embedder: Embedder | None, keep_captions: bool):
    self.tokenizer, self.embedder, self.keep_captions = tokenizer, embedder, keep_captions

  def map(self, row):
    captions = row.pop('captions')
    pad = row['frame_ids'] < 0
    unique = sorted(set(captions))  # a video row tokenises its caption once
    where = np.asarray([unique.index(c) for c in captions])
    if self.tokenizer is not None:
      ids, mask = _pair(self.tokenizer(unique), 'ids')
      ids, mask = np.asarray(ids, np.int32)[where], np.asarray(mask, bool)[where]
      row['tokens'] = np.where(pad[:, None], 0, ids).astype(np.int32)
      row['text_mask'] = mask & ~pad[:, None]
    if self.embedder is not None:
      pairs = [_pair(self.embedder(c), 'emb') for c in unique]
      emb = np.stack([np.asarray(e) for e, _ in pairs])[where]
      mask = np.stack([np.asarray(m, bool) for _, m in pairs])[where]
      # Keeps the embedder's dtype (the T5 cache stores bfloat16: half the bytes).
      row['text_emb'] = np.where(pad[:, None, None], np.zeros((), emb.dtype), emb)
      if 'text_mask' in row and not np.array_equal(row['text_mask'], mask & ~pad[:, None]):
        raise ValueError('tokenizer and embedder disagree on the text mask; pass one')
      row['text_mask'] = mask & ~pad[:, None]
    if self.keep_captions:
      row['captions'] = np.asarray(captions, dtype=str)
    return row


# ----------------------------------------------------------------------------- sources
Source = str | os.PathLike | Sequence[str] | grain.sources.RandomAccessDataSource


def _source(spec: Any, prefix: str, skip_bad: bool = False) -> Any:
  """A random-access source from a folder / glob / file list, or a ready source.

  Shards are read by ``records.ShardSource``: a bad record's error names its file.
  """
  if (
    hasattr(spec, '__getitem__')
    and hasattr(spec, '__len__')
    and not isinstance(spec, (str, list, tuple))
  ):
    return spec  # e.g. tfds.data_source(...)["videos"] or an ArrayRecordDataSource
  return records.ShardSource(records.shard_paths(spec, prefix), skip_bad=skip_bad)


class _ProcessRows(grain.MapDataset):
  """This process's rows of every global batch of a global row stream.

  Global batch ``b`` is rows ``[b*B, (b+1)*B)`` of the one stream every process
  defines identically (same sources, shuffle, mix and per-index randomness); process
  ``p`` of ``P`` reads rows ``b*B + p*B/P ...`` of it, and only those. So the global
  batch, and with it the training run, is the same on any number of processes, and
  ``jax.make_array_from_process_local_data`` (which stacks the processes' rows in
  process order) rebuilds it exactly.
  """

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, index: int, count: int, batch_size: int):
    super().__init__(parent)
    self._index, self._count, self._global = index, count, batch_size
    self._local = batch_size // count
    self._length = (len(parent) // batch_size) * self._local  # whole global batches only

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, i: int) -> int:
    b, j = divmod(i, self._local)
    return b * self._global + self._index * self._local + j

  def __getitem__(self, i):
    if isinstance(i, slice):
      return self.slice(i)
    return self._parent[self._parent_index(i)]

  def __str__(self) -> str:
    return f'ProcessRows[{self._index}/{self._count} of global batch {self._global}]'


def _process_shard(config: PipelineConfig) -> tuple[int, int]:
  if config.shard_index is not None:
    return config.shard_index, config.shard_count or 1
  import jax  # only here: the rest of the data code runs without JAX

  return jax.process_index(), jax.process_count()


def _ensure_flags_parsed() -> None:
  """grain's worker processes read absl flags; outside ``app.run`` (notebooks, tests)
  nothing has parsed them, so take the defaults instead of failing in the worker."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_pipeline(
  stage: StageSpec,
  config: PipelineConfig,
  videos: Source | None,
  images: Source | None = None,
  *,
  tokenizer: Tokenizer | None = None,
  embedder: Embedder | None = None,
) -> grain.IterDataset:
  """The training input of one stage, as a checkpointable ``grain.IterDataset``.

  Args:
    stage: what one example is (frames, size, stride, SR conditioning).
    config: batch size, image fraction, seed, epochs, sharding.
    videos: clip shards (a folder holding ``videos-*.array_record``, a glob, a list of
      files) or any random-access source such as ``tfds.data_source(...)["videos"]``.
    images: still-image shards (folder: ``images-*.array_record``) or a source; needed
      when ``config.image_fraction > 0``.
    tokenizer: captions -> (ids, mask); adds ``tokens`` and ``text_mask``.
    embedder: caption -> (emb, mask), e.g. cached T5 embeddings; adds ``text_emb`` and
      ``text_mask``.

  Returns:
    An IterDataset of batch dicts (see the module docstring). ``it = iter(ds)``;
    ``it.get_state()`` / ``it.set_state(state)`` save and restore the position (a
    small JSON-able dict), and orbax saves it next to the train state with
    ``ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it))`` (restore with
    ``grain.checkpoint.CheckpointRestore(it)``, handler
    ``grain.checkpoint.CheckpointHandler()``).
  """
  index, count = _process_shard(config)
  if config.batch_size % count:
    raise ValueError(
      f'batch_size {config.batch_size} is not divisible by the {count} data processes'
    )
  f = config.image_fraction
  if f > 0 and images is None:
    raise ValueError('image_fraction > 0 needs image shards (images=...)')
  if f < 1 and videos is None:
    raise ValueError('image_fraction < 1 needs video shards (videos=...)')
  seed = config.seed
  parts, weights = [], []

  def read(spec, prefix, salt):
    ds = grain.MapDataset.source(_source(spec, prefix, config.skip_bad_records))
    if config.shuffle:  # anew every epoch
      ds = ds.shuffle(seed=seed + salt)
    return ds.repeat(config.num_epochs)

  if f < 1:
    rows = read(videos, records.VIDEO_PREFIX, 0).random_map(
      _VideoRow(stage, config.random_offset, config.crop, config.frame_strides), seed=seed + 2
    )
    parts.append(rows)
    weights.append(1.0 - f)
  if f > 0:
    rows = (
      read(images, records.IMAGE_PREFIX, 1)
      .batch(stage.frames, batch_fn=list)
      .random_map(_PackImages(stage, config.crop), seed=seed + 3)
    )
    if config.frame_strides:
      rows = rows.map(_StillRate())
    parts.append(rows)
    weights.append(f)
  rows = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)
  rows = rows.map(_AttachText(tokenizer, embedder, config.keep_captions))
  if count > 1:
    rows = _ProcessRows(rows, index, count, config.batch_size)
  ds = rows.to_iter_dataset(
    grain.ReadOptions(num_threads=config.num_threads, prefetch_buffer_size=config.prefetch_rows)
  )
  ds = ds.batch(config.batch_size // count, drop_remainder=True)
  if config.worker_count > 0:
    _ensure_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count))
  return ds
