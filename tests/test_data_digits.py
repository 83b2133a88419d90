"""Moving Digits world and the record format."""

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
