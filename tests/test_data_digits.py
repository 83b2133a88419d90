"""Moving Digits world and the record format."""

import json
import os

import numpy as np
import pytest

from imagen_video_jax.data import digits, records

CONFIG = digits.DigitsConfig()


def _bytes(seed, kind, num):
  return [records.encode(ex) for ex in digits.generate(CONFIG, seed, kind, num)]


def test_same_seed_same_bytes_different_seed_differs():
  a, b = _bytes(7, 'video', 6), _bytes(7, 'video', 6)
  assert a == b
  assert _bytes(7, 'image', 6) == _bytes(7, 'image', 6)
  c = _bytes(8, 'video', 6)
  assert all(x != y for x, y in zip(a, c))
  # Random access: example i does not depend on which examples came before it.
  assert records.encode(digits.make_video(CONFIG, 7, 4)) == a[4]
  assert list(digits.generate(CONFIG, 7, 'video', 2, start=4))[0].caption == (
    records.decode(a[4]).caption
  )


def test_held_out_combinations_never_appear_as_videos():
  held = ((3, 'red', 'left'), (5, 'green', 'up'), (1, 'blue', 'down'))
  config = digits.DigitsConfig(frames=2, held_out=held)
  seen_video, seen_image = set(), set()
  for ex in digits.generate(config, 0, 'video', 600):
    combo = (ex.meta['digit'], ex.meta['colour'], ex.meta['direction'])
    assert combo not in held
    assert ex.caption == digits.caption_for(*combo)
    seen_video.add(combo)
  for ex in digits.generate(config, 0, 'image', 600):
    seen_image.add((ex.meta['digit'], ex.meta['colour']))
    assert ex.video.shape == (1, 32, 32, 3) and 'moving' not in ex.caption
  # The held-out (digit, colour) pairs are still seen as images ...
  assert {(d, c) for d, c, _ in held} <= seen_image
  # ... and held-out clips exist only in the evaluation stream.
  evals = {
    (e.meta['digit'], e.meta['colour'], e.meta['direction'])
    for e in digits.generate(config, 0, 'eval_video', 30)
  }
  assert evals == set(held)
  assert len(seen_video) > 200  # most of the 277 training combinations in 600 draws


def test_video_shape_motion_and_positions():
  config = digits.DigitsConfig(frames=6, size=32, fps=8, held_out=())
  for i in range(20):
    ex = digits.make_video(config, 1, i)
    assert ex.video.shape == (6, 32, 32, 3) and ex.video.dtype == np.uint8
    assert ex.fps == 8
    pos = ex.arrays['positions']
    assert pos.shape == (6, 2)
    # Only the caption's colour channels light up.
    rgb = np.asarray(digits.COLOURS[ex.meta['colour']]) > 0
    assert ex.video[..., ~rgb].max() == 0 and ex.video[..., rgb].max() > 100
    # The first step goes the captioned way (before any bounce, it may bounce later).
    dx, dy = digits.DIRECTIONS[ex.meta['direction']]
    step = pos[1] - pos[0]
    if abs(step[0]) + abs(step[1]) > 0 and np.all(np.abs(pos[1] - 16) < 6):
      assert np.sign(step[0]) == dx and np.sign(step[1]) == dy
    # The returned positions are where the digit is drawn: the sprite's box covers
    # every lit pixel.
    lit = ex.video.max(-1) > 0
    for t in range(6):
      ys, xs = np.nonzero(lit[t])
      half = config.sprite_size / 2 + 1
      assert xs.min() >= pos[t, 0] - half and xs.max() <= pos[t, 0] + half
      assert ys.min() >= pos[t, 1] - half and ys.max() <= pos[t, 1] + half


def test_captions_round_trip_and_validation():
  assert digits.caption_for(3, 'red', 'left') == 'a red 3 moving left'
  assert digits.caption_for(3, 'red') == 'a red 3'
  assert digits.parse_caption('a red 3 moving left') == (3, 'red', 'left')
  assert digits.parse_caption('a cyan 0') == (0, 'cyan', None)
  with pytest.raises(ValueError):
    digits.parse_caption('a purple 3')
  assert digits.parse_held_out('3:red:left, 1:blue:up') == ((3, 'red', 'left'), (1, 'blue', 'up'))
  assert digits.parse_held_out('none') == ()
  with pytest.raises(ValueError, match='DIGIT:COLOUR:DIRECTION'):
    digits.parse_held_out('3-red')
  with pytest.raises(ValueError, match='held-out'):
    digits.DigitsConfig(held_out=((3, 'purple', 'left'),))
  with pytest.raises(ValueError):
    digits.DigitsConfig(size=4)


def test_record_round_trip_and_sharded_writer(tmp_path):
  ex = digits.make_video(CONFIG, 0, 0)
  back = records.decode(records.encode(ex))
  assert np.array_equal(back.video, ex.video) and back.caption == ex.caption
  assert back.meta == ex.meta and back.fps == ex.fps
  assert np.array_equal(back.arrays['positions'], ex.arrays['positions'])
  with pytest.raises(ValueError, match='magic'):
    records.decode(b'nope' + bytes(8))
  with records.ShardedWriter(tmp_path, 'videos', per_shard=2) as w:
    for e in digits.generate(CONFIG, 0, 'video', 5):
      w.write(e)
  paths = records.shard_paths(tmp_path, 'videos')
  assert [p.rsplit('/', 1)[1] for p in paths] == [
    'videos-00000.array_record',
    'videos-00001.array_record',
    'videos-00002.array_record',
  ]
  with pytest.raises(FileExistsError):
    records.ShardedWriter(tmp_path, 'videos')


def test_shards_written_in_parallel_are_byte_identical(tmp_path):
  serial, parallel = tmp_path / 'serial', tmp_path / 'parallel'
  a = digits.write_shards(CONFIG, 3, str(serial), 7, 5, 2, per_shard=3)
  b = digits.write_shards(CONFIG, 3, str(parallel), 7, 5, 2, per_shard=3, workers=2)
  assert a == b and a['shards']['videos'] == [
    'videos-00000.array_record',
    'videos-00001.array_record',
    'videos-00002.array_record',
  ]
  names = sorted(os.listdir(serial))
  assert names == sorted(os.listdir(parallel)) and len(names) == 3 + 2 + 1 + 1
  for name in names:
    assert (serial / name).read_bytes() == (parallel / name).read_bytes(), name
  with pytest.raises(FileExistsError):  # an existing world is never overwritten
    digits.write_shards(CONFIG, 3, str(parallel), 7, 5, workers=2)


def _intensity_centroids(video):
  """(x, y) intensity centroid of every frame of a uint8 clip [T, H, W, 3]."""
  w = video.max(-1).astype(np.float64)
  total = w.sum((1, 2))
  x = (w * (np.arange(w.shape[2]) + 0.5)).sum((1, 2)) / total
  y = (w * (np.arange(w.shape[1]) + 0.5)[:, None]).sum((1, 2)) / total
  return np.stack([x, y], -1)


def _far_wall(video, direction):
  """The frame's edge row or column the digit moves towards, every frame: [T, size]."""
  return {
    'left': video[:, :, 0],
    'right': video[:, :, -1],
    'up': video[:, 0],
    'down': video[:, -1],
  }[direction].max(-1)


@pytest.mark.parametrize(
  'config',
  [digits.DigitsConfig(), digits.DigitsConfig(frames=8, fps=4), digits.DigitsConfig(size=16)],
  ids=['16x32x32', 'base-8-frames', '16x16'],
)
def test_world_v2_motion_is_monotone_visible_and_never_reaches_the_far_wall(config):
  assert config.world_version == 2 and not config.bounce
  clips = [digits.make_video(config, 0, i) for i in range(200)]
  clips += [digits.make_eval_video(config, 0, i) for i in range(40)]
  seen = set()
  for ex in clips:
    direction = ex.meta['direction']
    seen.add(direction)
    assert ex.meta['world_version'] == 2
    dx, dy = digits.DIRECTIONS[direction]
    axis, sign = (0, dx) if dx else (1, dy)
    c = _intensity_centroids(ex.video)
    steps = np.diff(c[:, axis]) * sign
    # The centroid moves the caption's way between every two frames ...
    assert steps.min() > 0, (ex.caption, c[:, axis])
    # ... by at least a quarter of the frame over the clip ...
    assert (c[-1, axis] - c[0, axis]) * sign >= 0.25 * config.size - 0.5, ex.caption
    # ... and not at all across it (bilinear splatting is exact in the drawn positions).
    pos = ex.arrays['positions']
    np.testing.assert_allclose(pos[:, 1 - axis], pos[0, 1 - axis])
    # The digit never touches the wall it moves towards.
    assert _far_wall(ex.video, direction).max() == 0, ex.caption
  assert seen == set(digits.DIRECTIONS)


def test_world_v1_bounces_and_world_v2_never_turns():
  v1, v2 = digits.DigitsConfig(bounce=True), digits.DigitsConfig()
  assert (v1.world_version, v2.world_version) == (1, 2)

  def turns(config):
    out = []
    for i in range(100):
      ex = digits.make_video(config, 0, i)
      dx, dy = digits.DIRECTIONS[ex.meta['direction']]
      steps = np.diff(ex.arrays['positions'][:, 0 if dx else 1])
      out.append(bool(np.any(steps > 0)) and bool(np.any(steps < 0)))
    return np.mean(out)

  # The reason for v2: in v1 most 2-second clips turn at a wall.
  assert turns(v1) > 0.7 and turns(v2) == 0.0
  # Still images are the same in both worlds, byte for byte.
  assert records.encode(digits.make_image(v1, 3, 5)) == records.encode(digits.make_image(v2, 3, 5))


def test_world_v2_refuses_a_travel_that_cannot_fit():
  with pytest.raises(ValueError, match='travel'):
    digits.DigitsConfig(travel=(0.25, 0.5))  # a 16-pixel digit leaves 15 px of 32
  with pytest.raises(ValueError, match='travel'):
    digits.DigitsConfig(travel=(0.0, 0.3))
  digits.DigitsConfig(travel=(0.5, 0.6), digit_size=8)  # a smaller digit has the room


def test_dataset_info_records_the_world_version(tmp_path):
  for bounce, version in ((False, 2), (True, 1)):
    info = digits.write_shards(
      digits.DigitsConfig(frames=4, bounce=bounce), 0, str(tmp_path / str(version)), 3, 2
    )
    assert info['world_version'] == version
    with open(tmp_path / str(version) / records.INFO_FILE) as f:
      assert json.load(f)['world_version'] == version
