"""Moving Digits: the offline world the embedded cascade is trained and judged on.

A coloured handwritten digit (scikit-learn's bundled 8x8 digits, upscaled) moves left,
right, up or down on black; captions read "a red 3 moving left". Still images of a digit
("a red 3") are made the same way.

Two versions of the motion (``DigitsConfig.bounce``, recorded as ``world_version`` in
``dataset_info.json`` and in an exported cascade, so the two are never mixed):

* world v2 (the default): the digit moves one way over the whole clip, covering between
  a quarter and three eighths of the frame (``travel``), and stops short of the wall it
  moves towards: where it ends is on the side the caption names, as a person reads it.
* world v1 (``bounce=True``): a speed of ``speed`` frame-sizes per second, bouncing off
  the walls; at 32x32 nearly every 2-second clip turns at a wall, so "moving left" may
  end right of where it began. Every example is a
pure function of ``(config, seed, stream, index)``, so shards can be generated in any
order or in parallel and the same seed always gives the same bytes.

A held-out list of (digit, colour, direction) combinations never appears as a training
video; their (digit, colour) pairs still appear as images and, with other directions, as
videos, so a model's transfer from images to motion can be measured on them
(:func:`make_eval_video` draws only held-out combinations).

The generator also returns the ground truth (digit, colour, direction, per-frame digit
centres) for the judge in ``imagen_video_jax.evaluation``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Iterator

import numpy as np

from imagen_video_jax.data import records

COLOURS: dict[str, tuple[float, float, float]] = {
  'red': (1.0, 0.0, 0.0),
  'green': (0.0, 1.0, 0.0),
  'blue': (0.0, 0.0, 1.0),
  'yellow': (1.0, 1.0, 0.0),
  'cyan': (0.0, 1.0, 1.0),
  'magenta': (1.0, 0.0, 1.0),
  'white': (1.0, 1.0, 1.0),
}
# (dx, dy) in image coordinates: y grows downwards.
DIRECTIONS: dict[str, tuple[int, int]] = {
  'left': (-1, 0),
  'right': (1, 0),
  'up': (0, -1),
  'down': (0, 1),
}
DEFAULT_HELD_OUT: tuple[tuple[int, str, str], ...] = (
  (0, 'red', 'left'),
  (3, 'green', 'up'),
  (5, 'blue', 'right'),
  (7, 'yellow', 'down'),
  (9, 'white', 'left'),
)
WORLD_VERSIONS = {False: 2, True: 1}  # bounce -> version
# Independent random streams, so videos, images and evaluation clips never share draws.
_STREAMS = {'video': 0, 'image': 1, 'eval_video': 2}


@dataclasses.dataclass(frozen=True)
class DigitsConfig:
  """Shape and content of the Moving Digits world.

  Attributes:
    frames: frames per video clip.
    size: frame height and width in pixels.
    fps: frame rate the clips are stored at (speeds are per second, so a clip at another
      fps shows the same motion).
    digit_size: side of the rendered digit in pixels (default ``size // 2``).
    speed: world v1: (min, max) speed in frame-sizes per second.
    colours: colour names used (keys of ``COLOURS``).
    held_out: (digit, colour, direction) combinations that are never training videos.
    bounce: True for world v1 (constant speed, bouncing off the walls); False for world
      v2 (one direction all clip long, stopping short of the far wall).
    travel: world v2: (min, max) distance the digit covers over the clip, as a fraction
      of the frame (its speed is that over ``frames - 1`` frame steps).
  """

  frames: int = 16
  size: int = 32
  fps: int = 8
  digit_size: int | None = None
  speed: tuple[float, float] = (0.2, 0.4)
  colours: tuple[str, ...] = tuple(COLOURS)
  held_out: tuple[tuple[int, str, str], ...] = DEFAULT_HELD_OUT
  bounce: bool = False
  travel: tuple[float, float] = (0.25, 0.375)

  def __post_init__(self):
    # Accept lists (from JSON or flags) but store hashable tuples.
    object.__setattr__(
      self, 'held_out', tuple((int(d), str(c), str(m)) for d, c, m in self.held_out)
    )
    object.__setattr__(self, 'colours', tuple(self.colours))
    object.__setattr__(self, 'speed', tuple(self.speed))
    object.__setattr__(self, 'travel', tuple(float(t) for t in self.travel))
    object.__setattr__(self, 'bounce', bool(self.bounce))
    if self.frames < 1 or self.size < 8 or self.fps < 1:
      raise ValueError(f'need frames >= 1, size >= 8, fps >= 1; got {self}')
    if not 4 <= self.sprite_size <= self.size - 2:
      raise ValueError(f'digit_size must be in [4, size - 2], got {self.sprite_size}')
    for c in self.colours:
      if c not in COLOURS:
        raise ValueError(f'unknown colour {c!r}; choose from {sorted(COLOURS)}')
    for combo in self.held_out:
      d, c, m = combo
      if d not in range(10) or c not in self.colours or m not in DIRECTIONS:
        raise ValueError(f'bad held-out combination {combo!r}: want (0-9, colour, direction)')
    if not self.train_combinations:
      raise ValueError('every combination is held out; nothing is left for training videos')
    if not self.bounce:
      lo, hi = self.travel
      room = (self.free_space - 1.0) / self.size  # a pixel short of the far wall
      if not 0.0 < lo <= hi <= room:
        raise ValueError(
          f'travel {self.travel} must satisfy 0 < min <= max <= {room:.3f} (the free space '
          f'a {self.sprite_size}-pixel digit leaves in a {self.size}-pixel frame, less one '
          'pixel); lower it, or make digit_size smaller'
        )

  @property
  def world_version(self) -> int:
    """2 for the default world (monotone motion), 1 for the bouncing world."""
    return WORLD_VERSIONS[self.bounce]

  @property
  def free_space(self) -> float:
    """How far the digit's top-left corner can move along an axis, in pixels (the
    sub-pixel splat needs one pixel of room)."""
    return float(self.size - self.sprite_size - 1)

  @property
  def sprite_size(self) -> int:
    return self.digit_size or self.size // 2

  @functools.cached_property  # sampled from for every clip
  def train_combinations(self) -> tuple[tuple[int, str, str], ...]:
    """All (digit, colour, direction) triples allowed as training videos, sorted."""
    held = set(self.held_out)
    return tuple(
      (d, c, m)
      for d in range(10)
      for c in self.colours
      for m in DIRECTIONS
      if (d, c, m) not in held
    )


def caption_for(digit: int, colour: str, direction: str | None = None) -> str:
  """ "a red 3 moving left" for a video, "a red 3" for a still image."""
  text = f'a {colour} {digit}'
  return f'{text} moving {direction}' if direction else text


_CAPTION_RE = re.compile(r'^an? (\w+) (\d)(?: moving (\w+))?$')


def parse_caption(caption: str) -> tuple[int, str, str | None]:
  """Inverse of :func:`caption_for`: ``(digit, colour, direction or None)``."""
  m = _CAPTION_RE.match(caption.strip().lower())
  if not m or m.group(1) not in COLOURS or (m.group(3) and m.group(3) not in DIRECTIONS):
    raise ValueError(f'not a Moving Digits caption: {caption!r}')
  return int(m.group(2)), m.group(1), m.group(3)


def parse_held_out(text: str) -> tuple[tuple[int, str, str], ...]:
  """``"0:red:left,3:green:up"`` -> ((0, "red", "left"), (3, "green", "up")); "none" -> ()."""
  text = text.strip().lower()
  if text in ('', 'none'):
    return ()
  combos = []
  for item in text.split(','):
    parts = item.strip().split(':')
    if len(parts) != 3 or not parts[0].isdigit():
      raise ValueError(f'held-out item {item!r} is not DIGIT:COLOUR:DIRECTION (e.g. 3:red:left)')
    combos.append((int(parts[0]), parts[1], parts[2]))
  return tuple(combos)


@functools.lru_cache(maxsize=1)
def _glyphs() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 1797 bundled 8x8 digits, in [0, 1], and their labels."""
  from sklearn.datasets import load_digits  # bundled with the wheel: no download

  d = load_digits()
  return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _glyph_indices(digit: int) -> np.ndarray:
  return np.flatnonzero(_glyphs()[1] == digit)


def _upscale(glyph: np.ndarray, size: int) -> np.ndarray:
  """Bilinear (half-pixel centres) upscaling of a square glyph to ``size`` x ``size``."""
  n = glyph.shape[0]
  src = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, n - 1)
  w = (src - lo).astype(np.float32)
  rows = glyph[lo] * (1 - w)[:, None] + glyph[hi] * w[:, None]
  return rows[:, lo] * (1 - w)[None] + rows[:, hi] * w[None]


def _place(canvas: np.ndarray, sprite: np.ndarray, x: float, y: float) -> None:
  """Draws ``sprite`` [h, w, 3] with its top-left at sub-pixel (x, y) (max-blend)."""
  h, w = sprite.shape[:2]
  ix, iy = int(np.floor(x)), int(np.floor(y))
  fx, fy = x - ix, y - iy
  # Bilinear splatting keeps motion smooth at every resolution the cascade works at.
  p = np.zeros((h + 1, w + 1, 3), np.float32)
  p[:h, :w] += (1 - fy) * (1 - fx) * sprite
  p[:h, 1:] += (1 - fy) * fx * sprite
  p[1:, :w] += fy * (1 - fx) * sprite
  p[1:, 1:] += fy * fx * sprite
  region = canvas[iy : iy + h + 1, ix : ix + w + 1]
  np.maximum(region, p[: region.shape[0], : region.shape[1]], out=region)


def _sprite(rng: np.random.Generator, config: DigitsConfig, digit: int, colour: str):
  glyph = _glyphs()[0][rng.choice(_glyph_indices(digit))]
  mono = np.clip(_upscale(glyph, config.sprite_size), 0.0, 1.0)
  return mono[..., None] * np.asarray(COLOURS[colour], np.float32)


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
  return np.round(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8)


def _render_video(rng, config: DigitsConfig, digit: int, colour: str, direction: str):
  s, d = config.size, config.sprite_size
  hi = config.free_space
  sprite = _sprite(rng, config, digit, colour)
  pos = rng.uniform(0.0, hi, size=2)
  if config.bounce:
    speed = rng.uniform(*config.speed) * s / config.fps  # pixels per frame
  else:
    # World v2: draw the distance covered, then a start that leaves the whole path (and
    # one pixel before the far wall) inside the frame, so the motion never turns.
    travel = rng.uniform(*config.travel) * s
    speed = travel / max(config.frames - 1, 1)
    axis = 0 if DIRECTIONS[direction][0] else 1
    sign = DIRECTIONS[direction][axis]
    start = rng.uniform(0.0, hi - 1.0 - travel)  # distance from the near wall
    pos[axis] = start if sign > 0 else hi - start
  vel = np.asarray(DIRECTIONS[direction], np.float64) * speed
  canvas = np.zeros((config.frames, s, s, 3), np.float32)
  centres = np.zeros((config.frames, 2), np.float32)
  for t in range(config.frames):
    _place(canvas[t], sprite, pos[0], pos[1])
    centres[t] = pos + d / 2.0
    pos = pos + vel
    if not config.bounce:
      continue
    for axis in range(2):  # bounce: reflect the position and the velocity
      if pos[axis] < 0.0:
        pos[axis], vel[axis] = -pos[axis], -vel[axis]
      elif pos[axis] > hi:
        pos[axis], vel[axis] = 2 * hi - pos[axis], -vel[axis]
  return _to_uint8(canvas), centres


def _video_example(
  config: DigitsConfig, seed: int, index: int, stream: str, combos
) -> records.Example:
  rng = np.random.default_rng([seed, _STREAMS[stream], index])
  digit, colour, direction = combos[rng.integers(len(combos))]
  video, centres = _render_video(rng, config, digit, colour, direction)
  return records.Example(
    video=video,
    caption=caption_for(digit, colour, direction),
    fps=config.fps,
    meta={
      'world': 'digits',
      'world_version': config.world_version,
      'digit': int(digit),
      'colour': colour,
      'direction': direction,
      'held_out': stream == 'eval_video',
    },
    arrays={'positions': centres},
  )


def make_video(config: DigitsConfig, seed: int, index: int) -> records.Example:
  """The ``index``-th training clip for ``seed`` (never a held-out combination).

  Returns an :class:`~imagen_video_jax.data.records.Example` whose ``meta`` holds the
  digit, colour and direction and whose ``arrays["positions"]`` holds the digit's centre
  (x, y) in pixels for every frame.
  """
  return _video_example(config, seed, index, 'video', config.train_combinations)


def make_eval_video(config: DigitsConfig, seed: int, index: int) -> records.Example:
  """The ``index``-th clip of a held-out combination (for measuring transfer)."""
  if not config.held_out:
    raise ValueError('config.held_out is empty: there is nothing to evaluate transfer on')
  return _video_example(config, seed, index, 'eval_video', tuple(config.held_out))


def make_image(config: DigitsConfig, seed: int, index: int) -> records.Example:
  """The ``index``-th still image: any digit and colour, captioned "a red 3"."""
  rng = np.random.default_rng([seed, _STREAMS['image'], index])
  digit = int(rng.integers(10))
  colour = config.colours[rng.integers(len(config.colours))]
  s, d = config.size, config.sprite_size
  sprite = _sprite(rng, config, digit, colour)
  pos = rng.uniform(0.0, float(s - d - 1), size=2)
  canvas = np.zeros((1, s, s, 3), np.float32)
  _place(canvas[0], sprite, pos[0], pos[1])
  return records.Example(
    video=_to_uint8(canvas),
    caption=caption_for(digit, colour),
    fps=0.0,
    meta={
      'world': 'digits',
      'digit': digit,
      'colour': colour,
      'direction': None,
      'held_out': False,
    },
    arrays={'positions': (pos + d / 2.0).astype(np.float32)[None]},
  )


_MAKERS = {'video': make_video, 'image': make_image, 'eval_video': make_eval_video}


def generate(
  config: DigitsConfig, seed: int, kind: str, num: int, start: int = 0
) -> Iterator[records.Example]:
  """Yields examples ``start .. start + num - 1`` of one kind.

  Args:
    config: the world's shape and held-out list.
    seed: the data seed; equal seeds give byte-identical examples.
    kind: ``"video"``, ``"image"`` or ``"eval_video"`` (held-out combinations only).
    num: how many examples.
    start: index of the first one (shards can be generated independently).
  """
  if kind not in _MAKERS:
    raise ValueError(f'kind must be one of {sorted(_MAKERS)}, got {kind!r}')
  make = _MAKERS[kind]
  for i in range(start, start + num):
    yield make(config, seed, i)


def _write_shard(
  config: DigitsConfig, seed: int, kind: str, path: str, start: int, num: int
) -> str:
  """One shard file: examples ``start .. start + num - 1`` (a worker's unit of work)."""
  writer = records.open_shard(path)
  try:
    for ex in generate(config, seed, kind, num, start):
      writer.write(records.encode(ex))
  finally:
    writer.close()
  return path


def write_shards(
  config: DigitsConfig,
  seed: int,
  output: str,
  num_videos: int,
  num_images: int,
  num_eval_videos: int = 0,
  per_shard: int = 1000,
  progress: bool = False,
  workers: int = 1,
) -> dict:
  """Writes the world as ``videos-*``, ``images-*`` (and ``eval_videos-*``) shards.

  workers > 1 renders shards in that many processes; the bytes are the same (every
  example is a function of its index). Returns the summary also written to
  ``{output}/dataset_info.json``.
  """
  from tqdm import tqdm

  plan = [
    ('video', records.VIDEO_PREFIX, num_videos),
    ('image', records.IMAGE_PREFIX, num_images),
    ('eval_video', records.EVAL_VIDEO_PREFIX, num_eval_videos),
  ]
  shards: dict[str, list[str]] = {}
  if workers <= 1:
    for kind, prefix, num in plan:
      if num <= 0:
        continue
      with records.ShardedWriter(output, prefix, per_shard) as writer:
        for ex in tqdm(
          generate(config, seed, kind, num),
          total=num,
          disable=not progress,
          desc=f'digits {kind}s',
          unit='ex',
        ):
          writer.write(ex)
      shards[prefix] = [os.path.basename(p) for p in writer.paths]
  else:
    import concurrent.futures
    import multiprocessing

    os.makedirs(output, exist_ok=True)
    jobs = []  # (kind, path, start, num), one per shard
    for kind, prefix, num in plan:
      if num <= 0:
        continue
      records.refuse_existing(output, prefix)
      names = []
      for i, start in enumerate(range(0, num, per_shard)):
        names.append(records.shard_name(prefix, i))
        jobs.append((kind, os.path.join(output, names[-1]), start, min(per_shard, num - start)))
      shards[prefix] = names
    # spawn, not fork: the parent may hold JAX's threads.
    ctx = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
      futures = [
        pool.submit(_write_shard, config, seed, kind, path, start, n)
        for kind, path, start, n in jobs
      ]
      for f in tqdm(
        concurrent.futures.as_completed(futures),
        total=len(futures),
        disable=not progress,
        desc='digits shards',
        unit='shard',
      ):
        f.result()
  info = {
    'world': 'digits',
    'world_version': config.world_version,
    'seed': seed,
    'frames': config.frames,
    'size': config.size,
    'fps': config.fps,
    'num_videos': num_videos,
    'num_images': num_images,
    'num_eval_videos': num_eval_videos,
    'held_out': [list(c) for c in config.held_out],
    'travel': None if config.bounce else list(config.travel),
    'speed': list(config.speed) if config.bounce else None,
    'shards': shards,
  }
  records.write_info(output, info)
  return info
