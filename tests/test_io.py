"""Video files: MP4 / GIF round trips, contact sheets, input checks."""

import numpy as np
import pytest

from imagen_video_jax import io


def _video(t=10, h=32, w=48):
  rng = np.random.default_rng(0)
  v = np.zeros((t, h, w, 3), np.uint8)
  for i in range(t):  # a coloured block moving right on black: easy for H.264
    v[i, 8:20, 2 + 3 * i : 14 + 3 * i] = rng.choice([64, 200], size=3)
  return v


def test_mp4_reads_back_with_frames_size_fps_and_pixels(tmp_path):
  v = _video()
  path = io.write_mp4(str(tmp_path / 'a' / 'v.mp4'), v, fps=8)
  back, fps = io.read_mp4(path)
  assert back.shape == v.shape and fps == pytest.approx(8.0)
  assert np.abs(back.astype(int) - v).mean() < 3.0  # lossy, but close


def test_mp4_scale_and_odd_sizes(tmp_path):
  v = _video(t=3, h=15, w=21)
  back, _ = io.read_mp4(io.write_mp4(str(tmp_path / 'odd.mp4'), v, fps=4))
  assert back.shape == (3, 16, 22, 3)  # padded to even for yuv420p
  back, _ = io.read_mp4(io.write_mp4(str(tmp_path / 'big.mp4'), _video(t=2), fps=4, scale=4))
  assert back.shape == (2, 128, 192, 3)


def test_gif_round_trip_is_exact_for_few_colours(tmp_path):
  v = _video(t=5)
  back = io.read_gif(io.write_gif(str(tmp_path / 'v.gif'), v, fps=8))
  np.testing.assert_array_equal(back, v)


def test_contact_sheet_layout():
  v = _video(t=5, h=4, w=6)
  sheet = io.contact_sheet(v, columns=3, gap=1)
  assert sheet.shape == (2 * 4 + 1, 3 * 6 + 2, 3)
  np.testing.assert_array_equal(sheet[5:9, 7:13], v[4])  # row 1, column 1
  assert not sheet[4].any()  # the gap is black


def test_to_uint8_and_bad_input(tmp_path):
  np.testing.assert_array_equal(io.to_uint8(np.array([-2.0, -1.0, 0.0, 1.0])), [0, 0, 128, 255])
  with pytest.raises(ValueError, match='uint8'):
    io.write_gif(str(tmp_path / 'x.gif'), np.zeros((2, 4, 4, 3), np.float32), fps=8)
  with pytest.raises(ValueError, match=r'\[T, H, W, 3\]'):
    io.write_mp4(str(tmp_path / 'x.mp4'), np.zeros((4, 4, 3), np.uint8), fps=8)
  with pytest.raises(FileNotFoundError):
    io.read_mp4(str(tmp_path / 'missing.mp4'))


def test_write_video_files(tmp_path):
  paths = io.write_video_files(str(tmp_path / 'demo'), _video(t=4), fps=8, scale=2)
  assert sorted(paths) == ['gif', 'mp4', 'png']
  assert io.read_mp4(paths['mp4'])[0].shape == (4, 64, 96, 3)
