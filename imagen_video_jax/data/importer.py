"""Importing real videos: a ``path,caption`` manifest -> ArrayRecord clip shards.

Each listed file is decoded by ffmpeg (the binary that imageio-ffmpeg ships), which also
resamples it to the target frame rate, centre-crops it to the target aspect ratio and
scales it, so a long high-resolution video never has to exist in memory at full size.
The frames are cut into consecutive clips of ``frames`` frames, written as the same
records the Moving Digits world uses (``videos-*.array_record``).

A bad row never stops the import and never costs the good ones: a missing, empty,
corrupt, unreadable or too-short file, an empty caption, a URL or a path that escapes
the manifest's folder is skipped and counted in ``import_report.json`` with its reason.

Only plain local media files are read: the file's extension must name a container in
:data:`CONTAINERS`, and ffmpeg is told to use exactly that demuxer (``-f``, and
``-format_whitelist`` for any it might open inside) over the ``file`` protocol alone
(``-protocol_whitelist file``). So a playlist (``.m3u8``), a concat list, an image
sequence pattern or a network URL is never followed, even when renamed to ``.mp4``: it
is skipped (``unsupported_format`` or ``unreadable``), never imported.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import numpy as np

from imagen_video_jax.data import records

REPORT_FILE = 'import_report.json'
_OWNER_FILE = '.import_owner'  # in a staging folder: the pid of the import writing it

# Extension -> the one ffmpeg demuxer that may read it (no playlists, concat lists,
# image sequences or anything else that makes ffmpeg open further inputs).
CONTAINERS = {
  '.mp4': 'mov',
  '.m4v': 'mov',
  '.mov': 'mov',
  '.3gp': 'mov',
  '.mkv': 'matroska',
  '.webm': 'matroska',
  '.avi': 'avi',
  '.mpg': 'mpeg',
  '.mpeg': 'mpeg',
  '.ts': 'mpegts',
  '.flv': 'flv',
  '.ogv': 'ogg',
  '.wmv': 'asf',
  '.gif': 'gif',
}


class ImportSetupError(ValueError):
  """The whole import cannot run (bad manifest, bad settings): a message for the user."""


class SkipError(Exception):
  """One manifest row cannot be used; ``reason`` is a short key, ``detail`` says more."""

  def __init__(self, reason: str, detail: str = ''):
    super().__init__(f'{reason}: {detail}' if detail else reason)
    self.reason, self.detail = reason, detail


@dataclasses.dataclass(frozen=True)
class ImportConfig:
  """Clip shape and import behaviour.

  Attributes:
    frames: frames per clip; width, height: clip size (centre crop to this aspect).
    fps: frame rate clips are resampled to.
    max_clips_per_video: at most this many clips per file (0 = every full clip).
    per_shard: records per ArrayRecord shard.
    workers: files decoded in parallel (ffmpeg subprocesses).
    timeout_s: per-file decoding limit.
  """

  frames: int = 16
  width: int = 64
  height: int = 64
  fps: float = 8.0
  max_clips_per_video: int = 0
  per_shard: int = 1000
  workers: int = 2
  timeout_s: float = 600.0

  def __post_init__(self):
    if min(self.frames, self.width, self.height, self.per_shard, self.workers) < 1:
      raise ImportSetupError(f'frames, size, per_shard and workers must be >= 1: {self}')
    if self.fps <= 0 or self.max_clips_per_video < 0:
      raise ImportSetupError(f'need fps > 0 and max_clips_per_video >= 0: {self}')


def parse_size(text: str) -> tuple[int, int]:
  """``"64"`` -> (64, 64); ``"80x48"`` -> (width 80, height 48)."""
  m = re.fullmatch(r'\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*', str(text))
  if not m:
    raise ImportSetupError(f'--size must be N or WxH (e.g. 64 or 80x48), got {text!r}')
  w = int(m.group(1))
  return w, int(m.group(2) or w)


@dataclasses.dataclass(frozen=True)
class Row:
  line: int  # 1-based line number in the manifest, for the report
  path: str
  caption: str


def read_manifest(manifest: str) -> list[Row]:
  """Reads a CSV with a header naming (at least) ``path`` and ``caption`` columns."""
  if not os.path.isfile(manifest):
    raise ImportSetupError(f'manifest not found: {manifest}')
  try:
    with open(manifest, newline='', encoding='utf-8-sig') as f:
      reader = csv.DictReader(f)
      fields = [c.strip().lower() for c in (reader.fieldnames or [])]
      if 'path' not in fields or 'caption' not in fields:
        raise ImportSetupError(
          f"{manifest}: the first line must be a header with 'path' and 'caption' "
          f'columns (WebVid-style), got {reader.fieldnames}'
        )
      reader.fieldnames = fields
      return [
        Row(
          line=reader.line_num,
          path=(r.get('path') or '').strip(),
          caption=(r.get('caption') or '').strip(),
        )
        for r in reader
      ]
  except (UnicodeDecodeError, csv.Error) as e:
    raise ImportSetupError(f'{manifest} is not a UTF-8 CSV file: {e}') from None


def resolve(root: str, rel: str) -> str:
  """The real path of ``rel`` under ``root``; raises SkipError if it leaves ``root``."""
  if not rel:
    raise SkipError('bad_row', 'empty path')
  if re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*://', rel):
    raise SkipError('url', f'{rel} is a URL; download it and list the local path')
  root = os.path.realpath(root)
  # realpath also follows symlinks, so a link pointing outside the folder is refused too.
  path = os.path.realpath(os.path.join(root, rel))
  if os.path.commonpath([root, path]) != root:
    raise SkipError(
      'escapes_manifest_folder', f"{rel} resolves outside the manifest's folder {root}"
    )
  if not os.path.exists(path):
    raise SkipError('missing', f'{rel} does not exist')
  if not os.path.isfile(path):
    raise SkipError('not_a_file', f'{rel} is not a regular file')
  if os.path.getsize(path) == 0:
    raise SkipError('empty', f'{rel} is an empty file')
  return path


def demuxer(path: str) -> str:
  """The ffmpeg demuxer for ``path``'s container; SkipError if it is not one we read."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in CONTAINERS:
    raise SkipError(
      'unsupported_format',
      f'{os.path.basename(path)}: {ext or "no extension"} is not a video container this '
      f'importer reads ({" ".join(sorted(CONTAINERS))}); playlists (.m3u8), concat lists '
      'and other files that point at further inputs are refused',
    )
  return CONTAINERS[ext]


def _ffmpeg_command(path: str, config: ImportConfig) -> list[str]:
  import imageio_ffmpeg  # ships a static ffmpeg binary: nothing to install

  w, h = config.width, config.height
  # fps resamples (dropping/duplicating frames on the output clock); crop keeps the
  # centre at the target aspect ratio; area scaling is the antialiased shrink.
  vf = (
    f'fps={config.fps},'
    f"crop='min(iw,ih*{w}/{h})':'min(ih,iw*{h}/{w})',"
    f'scale={w}:{h}:flags=area,format=rgb24'
  )
  cmd = [
    imageio_ffmpeg.get_ffmpeg_exe(),
    '-nostdin',
    '-v',
    'error',
    # Local files only, read by the one demuxer the extension names: ffmpeg never
    # probes for (or follows) a playlist, concat list or URL, and 'file:' keeps a name
    # with a colon from being read as a protocol.
    '-protocol_whitelist',
    'file',
    '-format_whitelist',
    demuxer(path),
    '-f',
    demuxer(path),
    '-i',
    'file:' + os.path.abspath(path),
    '-map',
    '0:v:0',
    '-an',
    '-vf',
    vf,
  ]
  if config.max_clips_per_video:
    # Decode only what can become clips (plus a frame of slack for rounding).
    cmd += ['-t', f'{(config.max_clips_per_video * config.frames + 1) / config.fps:.3f}']
  return cmd + ['-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:1']


def decode(path: str, config: ImportConfig) -> np.ndarray:
  """All frames of ``path`` at the target fps and size, uint8 ``[N, H, W, 3]``."""
  try:
    proc = subprocess.run(
      _ffmpeg_command(path, config), capture_output=True, timeout=config.timeout_s, check=False
    )
  except subprocess.TimeoutExpired:
    raise SkipError('timeout', f'decoding took over {config.timeout_s:.0f} s') from None
  err = proc.stderr.decode('utf-8', 'replace').strip()
  if proc.returncode != 0:
    last = err.splitlines()[-1] if err else f'ffmpeg exit code {proc.returncode}'
    if 'matches no streams' in err or 'does not contain any stream' in err:
      raise SkipError('no_video_stream', last)
    raise SkipError('unreadable', last)
  size = config.width * config.height * 3
  n = len(proc.stdout) // size
  if n == 0:
    raise SkipError('unreadable', err.splitlines()[-1] if err else 'no frames decoded')
  return np.frombuffer(proc.stdout, np.uint8, count=n * size).reshape(
    n, config.height, config.width, 3
  )


def cut_clips(frames: np.ndarray, config: ImportConfig) -> list[np.ndarray]:
  """Consecutive, non-overlapping clips of ``config.frames`` frames."""
  n = len(frames) // config.frames
  if config.max_clips_per_video:
    n = min(n, config.max_clips_per_video)
  return [frames[i * config.frames : (i + 1) * config.frames] for i in range(n)]


def _load(root: str, row: Row, config: ImportConfig) -> list[np.ndarray]:
  path = resolve(root, row.path)
  demuxer(path)
  if not row.caption:
    raise SkipError('empty_caption', f'{row.path} has no caption')
  frames = decode(path, config)
  clips = cut_clips(frames, config)
  if not clips:
    raise SkipError(
      'too_short',
      f'{row.path} gives {len(frames)} frames at {config.fps:g} fps; a clip needs {config.frames}',
    )
  return clips


def _results(root: str, rows: list[Row], config: ImportConfig) -> Iterator[tuple]:
  """(row, clips or SkipError) in manifest order, decoding ``workers`` files at once."""

  def work(row):
    try:
      return row, _load(root, row, config)
    except SkipError as e:
      return row, e
    except Exception as e:  # never let one odd file end the import
      return row, SkipError('error', f'{type(e).__name__}: {e}')

  with concurrent.futures.ThreadPoolExecutor(config.workers) as pool:
    # Results come back in manifest order, so the shards do not depend on timing; at
    # most 2 x workers files are in flight, so one slow file cannot make every later
    # decoded file pile up in memory.
    pending = collections.deque()
    for row in rows:
      pending.append(pool.submit(work, row))
      if len(pending) >= 2 * config.workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def staging_folder(output: str) -> str:
  """Where an import into ``output`` is written until it is complete (a hidden sibling)."""
  output = os.path.abspath(output)
  return os.path.join(os.path.dirname(output), f'.{os.path.basename(output)}.importing')


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _prepare(output: str) -> str:
  """Checks ``output`` is new or empty and returns a fresh staging folder for it.

  The staging folder of an import that was interrupted (killed, crashed) is removed, so
  re-running the same command starts over; one that a live import is writing is not.
  """
  if os.path.exists(output):
    if not os.path.isdir(output):
      raise ImportSetupError(f'--output {output} is a file, not a folder')
    held = sorted(os.listdir(output))
    if held:
      shown = ', '.join(held[:3]) + (' ...' if len(held) > 3 else '')
      raise ImportSetupError(
        f'--output {output} already holds {shown}; choose a new or empty folder '
        '(nothing there was changed)'
      )
  staging = staging_folder(output)
  if os.path.exists(staging):
    try:
      with open(os.path.join(staging, _OWNER_FILE)) as f:
        pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
      raise ImportSetupError(
        f'{staging} exists but is not an unfinished import of ours; remove it or choose '
        'another --output'
      ) from None
    if pid != os.getpid() and _pid_alive(pid):
      raise ImportSetupError(
        f'another import (pid {pid}) is writing {output} in {staging}; if that process is '
        'not an import, remove the folder and run again'
      )
    logging.warning('removing the unfinished import left at %s; starting over', staging)
    shutil.rmtree(staging)
  os.makedirs(staging)
  with open(os.path.join(staging, _OWNER_FILE), 'w') as f:
    f.write(f'{os.getpid()}\n')
  return staging


def _write_json(path: str, obj: dict) -> None:
  with open(path, 'w') as f:
    json.dump(obj, f, indent=2)
    f.write('\n')


def duplicate_rows(rows: list[Row]) -> list[dict]:
  """Rows repeating an earlier row's video path and caption (each would be imported twice)."""
  first, dups = {}, []
  for row in rows:
    if not row.path:
      continue  # skipped as a bad row anyway
    key = (os.path.normpath(row.path), row.caption)
    if key in first:
      dups.append({'line': row.line, 'first_line': first[key], 'path': row.path})
    else:
      first[key] = row.line
  return dups


def import_videos(manifest: str, output: str, config: ImportConfig, progress: bool = True) -> dict:
  """Imports every usable row of ``manifest`` into ``output``; returns the report.

  The report (also written to ``{output}/import_report.json``) counts rows, usable
  videos, clips and skipped rows, with every skipped row's line, path and reason, and
  lists duplicate rows (same path and caption; imported as listed, with a warning).
  Raises ImportSetupError for problems with the manifest or the output folder as a whole.

  ``output`` must be new or empty, and appears only once the import is complete: the
  shards are written into :func:`staging_folder` (``.{name}.importing`` next to it),
  which is renamed to ``output`` at the end. An import that fails leaves its staging
  folder with a report saying so; one that is killed leaves it without; either way,
  running the same command again removes it and imports afresh.
  """
  from tqdm import tqdm

  rows = read_manifest(manifest)
  if not rows:
    raise ImportSetupError(f'{manifest} lists no videos')
  output = os.path.abspath(output)
  dups = duplicate_rows(rows)
  if dups:
    d = dups[0]
    logging.warning(
      '%s: %d duplicate row(s) (same path and caption; each is imported again), e.g. '
      'line %d repeats line %d (%s)',
      manifest,
      len(dups),
      d['line'],
      d['first_line'],
      d['path'],
    )
  root = os.path.dirname(os.path.abspath(manifest))
  start = time.time()
  skipped, reasons = [], collections.Counter()
  videos_ok = 0
  staging = _prepare(output)
  writer = records.ShardedWriter(staging, records.VIDEO_PREFIX, config.per_shard)

  def report(status: str) -> dict:
    return {
      'status': status,
      'manifest': os.path.abspath(manifest),
      'output': output,
      'settings': dataclasses.asdict(config),
      'rows': len(rows),
      'videos_ok': videos_ok,
      'clips': writer.count,
      'skipped': len(skipped),
      'reasons': dict(sorted(reasons.items())),
      'skipped_rows': skipped,
      'duplicate_rows': dups,
      'shards': [os.path.basename(p) for p in writer.paths],
      'seconds': round(time.time() - start, 2),
    }

  try:
    with writer:
      for row, result in tqdm(
        _results(root, rows, config),
        total=len(rows),
        disable=not progress,
        desc='importing',
        unit='video',
      ):
        if isinstance(result, SkipError):
          skipped.append(
            {'line': row.line, 'path': row.path, 'reason': result.reason, 'detail': result.detail}
          )
          reasons[result.reason] += 1
          continue
        videos_ok += 1
        for j, clip in enumerate(result):
          writer.write(
            records.Example(
              video=clip,
              caption=row.caption,
              fps=config.fps,
              meta={
                'source': row.path,
                'line': row.line,
                'clip': j,
                'start_s': j * config.frames / config.fps,
              },
            )
          )
  except BaseException as e:  # KeyboardInterrupt too: say what was left behind
    failed = report('interrupted')
    failed['error'] = f'{type(e).__name__}: {e}'
    _write_json(os.path.join(staging, REPORT_FILE), failed)
    raise
  done = report('complete')
  records.write_info(
    staging,
    {
      'world': 'imported',
      'frames': config.frames,
      'width': config.width,
      'height': config.height,
      'fps': config.fps,
      'num_videos': writer.count,
      'num_images': 0,
      'shards': {'videos': done['shards']},
    },
  )
  _write_json(os.path.join(staging, REPORT_FILE), done)
  os.remove(os.path.join(staging, _OWNER_FILE))
  os.replace(staging, output)  # onto a new or empty folder: all or nothing
  return done
