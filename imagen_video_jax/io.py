"""Video files out (and back in): MP4, animated GIF, PNG contact sheet.

Videos are uint8 `[T, H, W, 3]`; `to_uint8` converts the models' [-1, 1] floats.
MP4s are H.264 (yuv420p, playable everywhere) written through the ffmpeg binary
that imageio-ffmpeg ships, so nothing needs installing. GIFs and PNGs go through
Pillow. Tiny videos (the 32x32 Moving Digits) can be scaled up by an integer
factor with nearest-neighbour so they are visible in a player.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np


def to_uint8(video: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 [0, 255] (clipped, rounded)."""
  v = np.asarray(video, np.float32)
  return np.clip(np.round((v + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _check(video: np.ndarray) -> np.ndarray:
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f'a video must be [T, H, W, 3]; got shape {video.shape}')
  if video.dtype != np.uint8:
    raise ValueError(f'a video must be uint8 (use io.to_uint8 first); got {video.dtype}')
  if video.shape[0] < 1:
    raise ValueError('the video has no frames')
  return video


def upscale(video: np.ndarray, scale: int) -> np.ndarray:
  """Nearest-neighbour enlargement by an integer factor (keeps pixels crisp)."""
  if scale == 1:
    return video
  return np.repeat(np.repeat(video, scale, axis=-3), scale, axis=-2)


def _parent(path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def write_mp4(path: str, video: np.ndarray, fps: float, *, scale: int = 1, crf: int = 12) -> str:
  """Writes an H.264 MP4. yuv420p needs even sizes: odd ones are padded by one pixel."""
  video = upscale(_check(video), scale)
  _, h, w, _ = video.shape
  pad_h, pad_w = h % 2, w % 2
  if pad_h or pad_w:
    video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode='edge')
  _parent(path)
  with warnings.catch_warnings():
    # fork + exec of the ffmpeg binary is safe under JAX's threads; silence its warning.
    warnings.filterwarnings('ignore', message=r'os\.fork\(\) was called')
    _send_frames(path, video, fps, crf)
  return path


def _send_frames(path: str, video: np.ndarray, fps: float, crf: int) -> None:
  import imageio_ffmpeg  # ships its own ffmpeg binary

  _, h, w, _ = video.shape
  writer = imageio_ffmpeg.write_frames(
    path,
    (w, h),
    fps=fps,
    codec='libx264',
    pix_fmt_out='yuv420p',
    macro_block_size=1,
    output_params=['-crf', str(crf)],
    ffmpeg_log_level='error',
  )
  writer.send(None)  # start the generator
  for frame in video:
    writer.send(np.ascontiguousarray(frame))
  writer.close()


def read_mp4(path: str) -> tuple[np.ndarray, float]:
  """Reads a video file back: (uint8 [T, H, W, 3], fps)."""
  import imageio_ffmpeg

  if not os.path.isfile(path):
    raise FileNotFoundError(f'no video file at {path}')
  reader = imageio_ffmpeg.read_frames(path, pix_fmt='rgb24')
  meta = reader.__next__()
  w, h = meta['size']
  frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
  if not frames:
    raise ValueError(f'{path} has no decodable frames')
  return np.stack(frames), float(meta['fps'])


def write_gif(path: str, video: np.ndarray, fps: float, *, scale: int = 1) -> str:
  """Writes an animated GIF that loops forever."""
  from PIL import Image

  video = upscale(_check(video), scale)
  frames = [Image.fromarray(f) for f in video]
  _parent(path)
  frames[0].save(
    path,
    save_all=True,
    append_images=frames[1:],
    loop=0,
    duration=max(1, round(1000.0 / fps)),
    optimize=False,
  )
  return path


def read_gif(path: str) -> np.ndarray:
  """uint8 [T, H, W, 3] frames of an animated GIF."""
  from PIL import Image, ImageSequence

  with Image.open(path) as im:
    return np.stack([np.asarray(f.convert('RGB')) for f in ImageSequence.Iterator(im)])


IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
VIDEO_EXTENSIONS = ('.mp4', '.mov', '.webm', '.avi', '.mkv', '.gif')


def read_frames(path: str) -> np.ndarray:
  """An image or a video file as uint8 frames [N, H, W, 3] (N = 1 for an image), by its
  extension (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS). Raises FileNotFoundError or ValueError
  naming the problem."""
  from PIL import Image, UnidentifiedImageError

  if not os.path.isfile(path):
    raise FileNotFoundError(f'no file at {path}')
  ext = os.path.splitext(path)[1].lower()
  try:
    if ext in IMAGE_EXTENSIONS:
      with Image.open(path) as im:
        return np.asarray(im.convert('RGB'))[None]
    if ext == '.gif':
      return read_gif(path)
    if ext in VIDEO_EXTENSIONS:
      return read_mp4(path)[0]
  except (OSError, UnidentifiedImageError, RuntimeError) as e:
    raise ValueError(f'cannot read {path}: {e}') from None
  raise ValueError(
    f'{path}: unknown file type {ext!r}; use an image ({", ".join(IMAGE_EXTENSIONS)}) '
    f'or a video ({", ".join(VIDEO_EXTENSIONS)})'
  )


def contact_sheet(video: np.ndarray, *, columns: int | None = None, gap: int = 1) -> np.ndarray:
  """All frames tiled left-to-right, top-to-bottom on a black grid: uint8 [H', W', 3]."""
  video = _check(video)
  t, h, w, _ = video.shape
  cols = columns or min(t, 8)
  rows = math.ceil(t / cols)
  sheet = np.zeros((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), np.uint8)
  for i, frame in enumerate(video):
    r, c = divmod(i, cols)
    sheet[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = frame
  return sheet


def write_png(path: str, image: np.ndarray) -> str:
  """Writes a uint8 [H, W, 3] image."""
  from PIL import Image

  _parent(path)
  Image.fromarray(np.asarray(image, np.uint8)).save(path)
  return path


def write_video_files(
  stem: str, video: np.ndarray, fps: float, *, scale: int = 1
) -> dict[str, str]:
  """Writes stem.mp4, stem.gif and stem.png (contact sheet); returns their paths."""
  return {
    'mp4': write_mp4(stem + '.mp4', video, fps, scale=scale),
    'gif': write_gif(stem + '.gif', video, fps, scale=scale),
    'png': write_png(stem + '.png', contact_sheet(upscale(_check(video), scale))),
  }
