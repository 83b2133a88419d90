"""Frame conditioning by masking (Make-A-Video's masked frame interpolation and
extrapolation): which frames of a clip are given, in training and when sampling.

A `frame_cond` U-Net (`models/unet.py`) reads a mask `known [B, T]` and the given frames
as extra input channels. Training shows it the clean frames of a random pattern on some
of the video rows and none on the rest, so one model does text-to-video, image-to-video
(the first frame given), extension (the first k) and interpolation (every other frame,
or both ends). The loss still covers every frame: the given ones are learnt as a copy,
so the sampled video holds them as the model reproduces them.

Patterns (on T frames):
  'first'        frame 0 (image-to-video)
  'first_k'      frames 0 .. k-1, k drawn from 1 .. max_known (extension)
  'every_other'  frames 0, 2, 4, ... (interpolation: fill in the odd frames)
  'ends'         frames 0 and T - 1 (interpolation between two key frames)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PATTERNS = ('first', 'first_k', 'every_other', 'ends')
Mode = Literal['animate', 'extend', 'interpolate']
MODES = ('animate', 'extend', 'interpolate')


@dataclasses.dataclass(frozen=True)
class FrameCondConfig:
  """How training draws the given frames (the config's `frame_cond` section).

  Attributes:
    p: the fraction of video rows trained with given frames (the rest: text only).
      Packed image rows (one frame per clip) never have any.
    patterns: the patterns drawn from, uniformly (see the module doc).
    max_known: the largest k of 'first_k' (0: half the frames).
  """

  p: float = 0.5
  patterns: tuple[str, ...] = PATTERNS
  max_known: int = 0

  def __post_init__(self):
    patterns = self.patterns
    if isinstance(patterns, str):
      patterns = tuple(p.strip() for p in patterns.split(',') if p.strip())
    object.__setattr__(self, 'patterns', tuple(patterns))
    if not 0.0 <= self.p <= 1.0:
      raise ValueError(f'frame_cond.p must be in [0, 1]; got {self.p}')
    if not self.patterns:
      raise ValueError(f'frame_cond.patterns is empty: give some of {", ".join(PATTERNS)}')
    bad = [p for p in self.patterns if p not in PATTERNS]
    if bad:
      raise ValueError(f'frame_cond.patterns: unknown {bad}; use some of {", ".join(PATTERNS)}')
    if self.max_known < 0:
      raise ValueError(f'frame_cond.max_known must be >= 0; got {self.max_known}')

  @classmethod
  def from_config(cls, section) -> FrameCondConfig:
    return cls(
      p=float(section.p), patterns=section.patterns, max_known=int(section.get('max_known', 0))
    )

  def largest_k(self, frames: int) -> int:
    """'first_k''s largest k on clips of `frames` frames (at least 1, under `frames`)."""
    k = self.max_known or frames // 2
    return max(1, min(k, frames - 1))


def pattern_mask(pattern: str, frames: int, k: int = 1) -> np.ndarray:
  """[frames] bool: the frames `pattern` gives (`k` for 'first_k')."""
  i = np.arange(frames)
  if pattern == 'first':
    return i == 0
  if pattern == 'first_k':
    return i < k
  if pattern == 'every_other':
    return i % 2 == 0
  if pattern == 'ends':
    return (i == 0) | (i == frames - 1)
  raise ValueError(f'unknown pattern {pattern!r}; use one of {", ".join(PATTERNS)}')


def video_rows(frame_ids_BT: jax.Array) -> jax.Array:
  """[B] bool: rows that are one clip (every frame id the same, none padding) of at
  least two frames; a row packed with images has one clip per frame."""
  same = jnp.all(frame_ids_BT == frame_ids_BT[:, :1], axis=1)
  return same & jnp.all(frame_ids_BT >= 0, axis=1) & (frame_ids_BT.shape[1] > 1)


def draw_known(key: jax.Array, frame_ids_BT: jax.Array, config: FrameCondConfig) -> jax.Array:
  """[B, T] bool, the given frames of a training batch: with probability `config.p` a
  video row gets a pattern drawn uniformly from `config.patterns`; every other row none."""
  b, t = frame_ids_BT.shape
  k_use, k_pattern = jax.random.split(key)
  kmax = config.largest_k(t)
  # One row of masks per pattern, 'first_k' once per k: drawing a pattern then k is a
  # draw of a row of this table with the pattern's weight spread over its k's.
  table, weights = [], []
  for name in config.patterns:
    ks = range(1, kmax + 1) if name == 'first_k' else [1]
    for k in ks:
      table.append(pattern_mask(name, t, k))
      weights.append(1.0 / len(ks))
  table = jnp.asarray(np.stack(table))
  logits = jnp.log(jnp.asarray(weights, jnp.float32))
  row = jax.random.categorical(k_pattern, logits, shape=(b,))
  use = (jax.random.uniform(k_use, (b,)) < config.p) & video_rows(frame_ids_BT)
  return table[row] & use[:, None]


def given_positions(mode: str, num_given: int, frames: int) -> np.ndarray:
  """The frames a user's `num_given` frames take in a clip of `frames` frames:
  'animate': frame 0 (one image); 'extend': the first num_given; 'interpolate': the
  first and last (num_given = 2) or every other frame (num_given = ceil(frames / 2)). Raises
  ValueError naming what fits otherwise."""
  if mode not in MODES:
    raise ValueError(f'mode must be one of {", ".join(MODES)}; got {mode!r}')
  if mode == 'animate':
    if num_given != 1:
      raise ValueError(f'animate takes one image (the first frame); got {num_given} frames')
    return np.array([0])
  if mode == 'extend':
    if not 1 <= num_given < frames:
      raise ValueError(
        f'extend takes 1 to {frames - 1} frames (the clip has {frames}); got {num_given}'
      )
    return np.arange(num_given)
  every_other = math.ceil(frames / 2)
  if num_given == 2:  # (on 3 or 4 frames also every other frame's count: the ends win)
    return np.array([0, frames - 1])
  if num_given == every_other:
    return np.flatnonzero(pattern_mask('every_other', frames))
  raise ValueError(
    f'interpolate takes 2 frames (the first and last) or {every_other} (every other frame '
    f'of {frames}); got {num_given}'
  )


def place(
  given_NTHWC: np.ndarray | jax.Array, positions: Sequence[int], frames: int
) -> tuple[jax.Array, jax.Array]:
  """(known [N, frames], known_frames [N, frames, H, W, C]): the given frames at
  `positions`, zero elsewhere."""
  given = jnp.asarray(given_NTHWC, jnp.float32)
  n, g = given.shape[:2]
  positions = np.asarray(positions)
  if g != len(positions):
    raise ValueError(f'{g} given frames for {len(positions)} positions')
  known = np.zeros((n, frames), bool)
  known[:, positions] = True
  frames_out = jnp.zeros((n, frames) + given.shape[2:], jnp.float32)
  frames_out = frames_out.at[:, positions].set(given)
  return jnp.asarray(known), frames_out
