"""TensorBoard scalars and animated sample videos, a JSONL log, and the console line.

Only process 0 writes. Sample videos go to TensorBoard as animated GIFs in image
summaries (what tensorboardX's `add_video` does, without needing moviepy) and to
`<workdir>/samples/step_<N>.gif`.
"""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np

from imagen_video_jax.io import to_uint8


def grid(videos: np.ndarray, below: np.ndarray | None = None) -> np.ndarray:
  """[N, T, H, W, C] -> [T, H, N*(W+1)-1, C]: videos side by side, 1-pixel gaps;
  `below` (same shape, e.g. an SR stage's conditioning) as a second row."""
  n, t, h, w, c = videos.shape
  out = np.zeros((t, h, n * (w + 1) - 1, c), videos.dtype)
  for i in range(n):
    out[:, :, i * (w + 1) : i * (w + 1) + w] = videos[i]
  if below is not None:
    gap = np.zeros((t, 1) + out.shape[2:], out.dtype)
    out = np.concatenate([out, gap, grid(below)], axis=1)
  return out


def gif_bytes(frames_uint8: np.ndarray, fps: float = 8.0, scale: int = 4) -> bytes:
  """An animated GIF of [T, H, W, C] uint8 frames (nearest-neighbour upscaled)."""
  from PIL import Image

  frames = np.repeat(np.repeat(frames_uint8, scale, axis=1), scale, axis=2)
  images = [Image.fromarray(f) for f in frames]
  buf = io.BytesIO()
  images[0].save(
    buf, format='GIF', save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
  )
  return buf.getvalue()


def format_eta(seconds: float) -> str:
  if not np.isfinite(seconds) or seconds < 0:
    return '?'
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def truncate_jsonl(path: str, last_step: int) -> int:
  """Drops the rows of `path` after `last_step` (and a torn last line); returns how many.

  Atomic (a new file replaces the old), so a crash meanwhile loses no row.
  """
  if not os.path.isfile(path):
    return 0
  with open(path) as f:
    lines = f.read().splitlines(keepends=True)
  keep = []
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue  # a line torn by a kill mid-write
    if isinstance(row, dict) and int(row.get('step', 0)) <= last_step:
      keep.append(line if line.endswith('\n') else line + '\n')
  if len(keep) == len(lines):
    return 0
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(keep)
  os.replace(tmp, path)
  return len(lines) - len(keep)


class MetricWriter:
  """Scalars and GIFs to TensorBoard (tensorboardX) and metrics.jsonl under workdir.

  `from_step`: the step the run starts (or resumes) at; metrics.jsonl rows after it,
  written by an earlier attempt whose steps are now redone, are dropped.
  """

  def __init__(self, workdir: str, enabled: bool = True, from_step: int | None = None):
    self.enabled = enabled
    self.workdir = workdir
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter

      path = os.path.join(workdir, 'metrics.jsonl')
      if from_step is not None:
        truncate_jsonl(path, from_step)
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      self._jsonl = open(path, 'a')

  def scalars(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    for k, v in values.items():
      self._tb.add_scalar(k, float(v), step)
    self._jsonl.write(json.dumps({'step': step, **{k: float(v) for k, v in values.items()}}) + '\n')
    self._jsonl.flush()

  def video(
    self, step: int, tag: str, videos: np.ndarray, fps: float = 8.0, below: np.ndarray | None = None
  ) -> str | None:
    """Writes [N, T, H, W, C] videos in [-1, 1] as one animated GIF (with `below` as a
    second row); returns its path."""
    if not self.enabled:
      return None
    from tensorboardX.proto.summary_pb2 import Summary

    frames = grid(to_uint8(videos), None if below is None else to_uint8(below))
    data = gif_bytes(frames, fps)
    t, h, w, c = frames.shape
    image = Summary.Image(height=h * 4, width=w * 4, colorspace=c, encoded_image_string=data)
    self._tb._get_file_writer().add_summary(
      Summary(value=[Summary.Value(tag=tag, image=image)]), step
    )
    path = os.path.join(self.workdir, 'samples', f'step_{step:08d}.gif')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
      f.write(data)
    return path

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


class Progress:
  """Steps/s, examples/s and ETA between log points; one console line per log."""

  def __init__(self, start_step: int, num_steps: int, batch_size: int):
    self.num_steps, self.batch_size = num_steps, batch_size
    self.t0, self.s0 = time.perf_counter(), start_step
    self.last_sps = float('nan')

  def rates(self, step: int) -> dict:
    now = time.perf_counter()
    dt = max(now - self.t0, 1e-9)
    sps = (step - self.s0) / dt
    self.t0, self.s0 = now, step
    self.last_sps = sps
    return {'steps_per_sec': sps, 'examples_per_sec': sps * self.batch_size}

  def line(self, step: int, m: dict) -> str:
    # From the latest window's rate: the first window includes compilation.
    eta = (self.num_steps - step) / self.last_sps if self.last_sps > 0 else float('nan')
    return (
      f'step {step}/{self.num_steps} | loss {m["loss"]:.4f} | grad {m["grad_norm"]:.3f} '
      f'| lr {m["lr"]:.2e} | {m["steps_per_sec"]:.2f} steps/s '
      f'{m["examples_per_sec"]:.1f} ex/s | non-finite {int(m["nonfinite_total"])} '
      f'| ETA {format_eta(eta)}'
    )
