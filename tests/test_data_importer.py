"""Importing real videos: good files arrive intact, bad ones are reported, never fatal."""

import json
import os
import subprocess
import sys

import grain
import numpy as np
import pytest

from imagen_video_jax.data import importer, records

FPS_IN, SECONDS = 16, 2

# Other test files may have imported JAX in this process; its fork warning does not apply
# to subprocess.run, which execs at once.
pytestmark = pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')


def _frames(n, w=48, h=40):
  """Left half red and right half blue, both brightening with time."""
  x = np.zeros((n, h, w, 3), np.uint8)
  for t in range(n):
    x[t, :, : w // 2, 0] = 40 + 6 * t
    x[t, :, w // 2 :, 2] = 40 + 6 * t
  return x


def _write_mp4(path, frames, fps=FPS_IN):
  import imageio_ffmpeg

  h, w = frames.shape[1:3]
  # libx264 at crf 0 (lossless luma) keeps the pixel values checkable.
  writer = imageio_ffmpeg.write_frames(
    path, (w, h), fps=fps, codec='libx264', output_params=['-crf', '0'], macro_block_size=1
  )
  writer.send(None)
  for f in frames:
    writer.send(np.ascontiguousarray(f))
  writer.close()


@pytest.fixture(scope='module')
def library(tmp_path_factory):
  root = tmp_path_factory.mktemp('lib')
  (root / 'clips').mkdir()
  _write_mp4(str(root / 'clips' / 'good1.mp4'), _frames(FPS_IN * SECONDS))
  _write_mp4(str(root / 'clips' / 'good2.mp4'), _frames(FPS_IN * SECONDS))
  _write_mp4(str(root / 'clips' / 'short.mp4'), _frames(6))  # 3 frames at 8 fps
  (root / 'clips' / 'corrupt.mp4').write_bytes(np.random.default_rng(0).bytes(4000))
  (root / 'clips' / 'empty.mp4').write_bytes(b'')
  outside = root.parent / 'outside.mp4'
  _write_mp4(str(outside), _frames(32))  # exists, and is still refused
  rows = [
    ('clips/good1.mp4', 'a red and blue split'),
    ('clips/corrupt.mp4', 'broken'),
    ('clips/empty.mp4', 'nothing'),
    ('clips/short.mp4', 'too short'),
    ('../outside.mp4', 'escape attempt'),
    ('clips/missing.mp4', 'gone'),
    ('clips/good2.mp4', 'second, with a comma'),
  ]
  with open(root / 'manifest.csv', 'w') as f:
    f.write('path,caption\n')
    for p, c in rows:
      f.write(f'{p},"{c}"\n')
  return root


def _run(*args):
  return subprocess.run(
    [sys.executable, '-m', 'imagen_video_jax.import_videos', *args],
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_import_keeps_good_clips_and_reports_bad_ones(library, tmp_path):
  out = tmp_path / 'out'
  proc = _run(
    f'--manifest={library / "manifest.csv"}',
    f'--output={out}',
    '--frames=8',
    '--size=16',
    '--fps=8',
  )
  assert proc.returncode == 3, proc.stderr  # some rows were skipped
  report = json.loads((out / importer.REPORT_FILE).read_text())
  assert report['rows'] == 7 and report['videos_ok'] == 2 and report['clips'] == 4
  by_path = {r['path']: r['reason'] for r in report['skipped_rows']}
  assert by_path == {
    'clips/corrupt.mp4': 'unreadable',
    'clips/empty.mp4': 'empty',
    'clips/short.mp4': 'too_short',
    '../outside.mp4': 'escapes_manifest_folder',
    'clips/missing.mp4': 'missing',
  }
  assert 'skipped 5' in proc.stderr

  source = grain.sources.ArrayRecordDataSource(records.shard_paths(str(out), 'videos'))
  clips = [records.decode(source[i]) for i in range(len(source))]
  assert [c.caption for c in clips] == ['a red and blue split'] * 2 + ['second, with a comma'] * 2
  for k, clip in enumerate(clips):
    assert clip.video.shape == (8, 16, 16, 3) and clip.fps == 8
    assert clip.meta['clip'] == k % 2 and clip.meta['start_s'] == (k % 2) * 1.0
    # 16 -> 8 fps keeps every other source frame; the centre crop keeps red left,
    # blue right. Colours survive yuv420 within a few levels away from the seam.
    for i in range(8):
      level = 40 + 6 * 2 * (8 * (k % 2) + i)
      left, right = clip.video[i, :, :5].mean((0, 1)), clip.video[i, :, -5:].mean((0, 1))
      np.testing.assert_allclose(left, [level, 0, 0], atol=6)
      np.testing.assert_allclose(right, [0, 0, level], atol=6)


def test_exit_codes_and_bad_input(library, tmp_path):
  good = (library / 'clips' / 'good1.mp4').read_bytes()
  (library / 'clips' / 'truncated.mp4').write_bytes(good[: len(good) // 2])
  bad = library / 'bad.csv'
  bad.write_text(
    'path,caption\nclips/empty.mp4,x\nclips/corrupt.mp4,y\n'
    'clips/truncated.mp4,z\nclips/good1.mp4,\n'
  )
  proc = _run(f'--manifest={bad}', f'--output={tmp_path / "o1"}', '--frames=8')
  assert proc.returncode == 2 and 'no usable clips' in proc.stderr
  report = json.loads((tmp_path / 'o1' / importer.REPORT_FILE).read_text())
  assert report['reasons'] == {'empty': 1, 'empty_caption': 1, 'unreadable': 2}

  ok = library / 'ok.csv'
  ok.write_text('path,caption\nclips/good1.mp4,fine\n')
  proc = _run(
    f'--manifest={ok}',
    f'--output={tmp_path / "o0"}',
    '--frames=8',
    '--size=8x4',
    '--max_clips_per_video=1',
  )
  assert proc.returncode == 0, proc.stderr
  assert json.loads((tmp_path / 'o0' / importer.REPORT_FILE).read_text())['clips'] == 1

  noheader = tmp_path / 'noheader.csv'
  noheader.write_text('clips/good1.mp4,a caption\n')
  proc = _run(f'--manifest={noheader}', f'--output={tmp_path / "o2"}')
  assert proc.returncode == 1 and 'header' in proc.stderr
  assert 'Traceback' not in proc.stderr

  proc = _run(f'--manifest={library / "manifest.csv"}', f'--output={tmp_path / "o3"}', '--size=big')
  assert proc.returncode == 1 and '--size' in proc.stderr and 'Traceback' not in proc.stderr


def test_resolve_refuses_escapes(tmp_path):
  (tmp_path / 'in').mkdir()
  (tmp_path / 'secret.mp4').write_bytes(b'x')
  os.symlink(tmp_path / 'secret.mp4', tmp_path / 'in' / 'link.mp4')
  for rel in ['../secret.mp4', str(tmp_path / 'secret.mp4'), 'link.mp4', 'a/../../secret.mp4']:
    with pytest.raises(importer.SkipError) as e:
      importer.resolve(str(tmp_path / 'in'), rel)
    assert e.value.reason == 'escapes_manifest_folder', rel
  with pytest.raises(importer.SkipError, match='url'):
    importer.resolve(str(tmp_path / 'in'), 'https://example.com/v.mp4')


def test_parse_size_and_clip_cutting():
  assert importer.parse_size('64') == (64, 64)
  assert importer.parse_size('80x48') == (80, 48)
  with pytest.raises(importer.ImportSetupError):
    importer.parse_size('64x')
  cfg = importer.ImportConfig(frames=4, max_clips_per_video=2)
  clips = importer.cut_clips(np.zeros((11, 2, 2, 3), np.uint8), cfg)
  assert len(clips) == 2 and all(len(c) == 4 for c in clips)
  assert len(importer.cut_clips(np.zeros((11, 2, 2, 3)), importer.ImportConfig(frames=4))) == 2


def _digests(folder):
  import hashlib

  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_existing_output_with_glob_characters_is_refused_untouched(library, tmp_path):
  ok = library / 'one.csv'
  ok.write_text('path,caption\nclips/good1.mp4,fine\n')
  out = tmp_path / 'dat[x]'  # '[x]' is a glob character class: the folder must be literal
  proc = _run(f'--manifest={ok}', f'--output={out}', '--frames=8', '--size=8')
  assert proc.returncode == 0, proc.stderr
  before = _digests(out)
  assert 'videos-00000.array_record' in before and importer.REPORT_FILE in before
  proc = _run(f'--manifest={library / "manifest.csv"}', f'--output={out}', '--frames=4', '--size=8')
  assert proc.returncode == 1, proc.stderr
  assert 'already holds' in proc.stderr and 'dat[x]' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert _digests(out) == before


def test_playlists_and_indirect_inputs_are_refused(library, tmp_path):
  # Each of these makes a permissive ffmpeg read ../outside.mp4, outside the folder.
  playlist = '#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\n../../outside.mp4\n#EXT-X-ENDLIST\n'
  clips = library / 'clips'
  (clips / 'list.m3u8').write_text(playlist)
  (clips / 'disguised.mp4').write_text(playlist)  # a playlist renamed: the mov demuxer only
  (clips / 'cat.ffconcat').write_text('ffconcat version 1.0\nfile ../../outside.mp4\n')
  manifest = library / 'indirect.csv'
  manifest.write_text(
    'path,caption\nclips/list.m3u8,a\nclips/disguised.mp4,b\nclips/cat.ffconcat,c\n'
    'clips/good1.mp4,fine\n'
  )
  cfg = importer.ImportConfig(frames=8, width=8, height=8)
  report = importer.import_videos(str(manifest), str(tmp_path / 'o'), cfg, progress=False)
  reasons = {r['path']: r['reason'] for r in report['skipped_rows']}
  assert reasons == {
    'clips/list.m3u8': 'unsupported_format',
    'clips/disguised.mp4': 'unreadable',
    'clips/cat.ffconcat': 'unsupported_format',
  }
  detail = next(r['detail'] for r in report['skipped_rows'] if r['path'] == 'clips/list.m3u8')
  assert 'playlists (.m3u8)' in detail and '.mp4' in detail
  assert report['videos_ok'] == 1 and report['clips'] == 2
  cmd = importer._ffmpeg_command(str(clips / 'good1.mp4'), cfg)
  assert cmd[cmd.index('-protocol_whitelist') + 1] == 'file'
  assert cmd[cmd.index('-f') + 1] == 'mov' and cmd[cmd.index('-i') + 1].startswith('file:')


def _result(folder):
  """An import's shards (bytes) and its report without timing and location."""
  report = json.loads((folder / importer.REPORT_FILE).read_text())
  for k in ('seconds', 'output'):
    report.pop(k)
  shards = {p.name: p.read_bytes() for p in folder.glob('videos-*.array_record')}
  return shards, report, json.loads((folder / records.INFO_FILE).read_text())


def _long_manifest(library, n):
  path = library / f'long{n}.csv'
  path.write_text(
    'path,caption\n' + ''.join(f'clips/good{1 + i % 2}.mp4,clip {i}\n' for i in range(n))
  )
  return path


def test_a_failed_import_leaves_no_output_and_a_rerun_completes(library, tmp_path, monkeypatch):
  manifest = _long_manifest(library, 6)
  cfg = importer.ImportConfig(frames=8, width=8, height=8, per_shard=2, workers=1)
  importer.import_videos(str(manifest), str(tmp_path / 'ref'), cfg, progress=False)
  out = tmp_path / 'out'
  write = records.ShardedWriter.write

  def failing_write(self, example):
    if self.count == 5:
      raise OSError(28, 'No space left on device')
    write(self, example)

  monkeypatch.setattr(records.ShardedWriter, 'write', failing_write)
  with pytest.raises(OSError, match='No space'):
    importer.import_videos(str(manifest), str(out), cfg, progress=False)
  assert not out.exists()  # never a half-written dataset where the output should be
  staging = tmp_path / '.out.importing'
  left = json.loads((staging / importer.REPORT_FILE).read_text())
  assert left['status'] == 'interrupted' and 'No space' in left['error'] and left['clips'] == 5
  monkeypatch.setattr(records.ShardedWriter, 'write', write)
  report = importer.import_videos(str(manifest), str(out), cfg, progress=False)
  assert report['status'] == 'complete' and report['clips'] == 12
  assert not staging.exists() and sorted(p.name for p in tmp_path.iterdir()) == ['out', 'ref']
  assert _result(out) == _result(tmp_path / 'ref')


def test_a_killed_import_is_redone_by_the_same_command(library, tmp_path):
  import signal
  import time

  manifest = _long_manifest(library, 40)
  args = [f'--manifest={manifest}', '--frames=8', '--size=8', '--per_shard=1', '--workers=1']
  assert _run(*args, f'--output={tmp_path / "ref"}').returncode == 0
  out, staging = tmp_path / 'out', tmp_path / '.out.importing'
  cmd = [sys.executable, '-m', 'imagen_video_jax.import_videos', *args, f'--output={out}']
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 60
  while not (staging / 'videos-00003.array_record').exists() and time.time() < deadline:
    time.sleep(0.002)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL  # killed midway, not finished
  assert not out.exists() and staging.exists()
  proc = _run(*args, f'--output={out}')
  assert proc.returncode == 0, proc.stderr
  assert 'removing the unfinished import' in proc.stderr
  assert not staging.exists() and _result(out) == _result(tmp_path / 'ref')


def test_duplicate_rows_are_reported(library, tmp_path, caplog):
  manifest = library / 'dups.csv'
  manifest.write_text(
    'path,caption\nclips/good1.mp4,same\nclips/good2.mp4,same\n./clips/good1.mp4,same\n'
    'clips/good1.mp4,other\n'
  )
  cfg = importer.ImportConfig(frames=8, width=8, height=8, max_clips_per_video=1)
  with caplog.at_level('WARNING'):
    report = importer.import_videos(str(manifest), str(tmp_path / 'o'), cfg, progress=False)
  assert report['duplicate_rows'] == [{'line': 4, 'first_line': 2, 'path': './clips/good1.mp4'}]
  assert '1 duplicate row(s)' in caplog.text and 'line 4 repeats line 2' in caplog.text
  assert report['clips'] == 4  # imported as listed
