"""Parameter trees round-trip through safetensors exactly."""

import numpy as np
import pytest

from imagen_video_jax import params_io


def test_nested_tree_round_trips_bit_exactly(tmp_path):
  rng = np.random.default_rng(0)
  tree = {
    'a': {
      'kernel': rng.standard_normal((3, 4)).astype(np.float32),
      'b': {'bias': np.array([-0.0, 1e-40, np.inf], np.float32)},
    },
    'scale': np.ones(2, np.float32),
  }
  back = params_io.load_params(params_io.save_params(str(tmp_path / 'p.safetensors'), tree))
  assert sorted(params_io.flatten_params(back)) == ['a/b/bias', 'a/kernel', 'scale']
  for k, v in params_io.flatten_params(tree).items():
    np.testing.assert_array_equal(params_io.flatten_params(back)[k], v)
    assert params_io.flatten_params(back)[k].tobytes() == v.tobytes()  # -0.0, subnormals kept


def test_float16_storage_halves_the_file_and_rounds_to_nearest(tmp_path):
  rng = np.random.default_rng(1)
  tree = {'w': rng.standard_normal((64, 64)).astype(np.float32), 'b': np.float32([1e-3, -2.5])}
  full = params_io.save_params(str(tmp_path / 'f32.safetensors'), tree)
  half = params_io.save_params(str(tmp_path / 'f16.safetensors'), tree, 'float16')
  size = lambda p: (tmp_path / p).stat().st_size  # noqa: E731
  assert size('f16.safetensors') < 0.55 * size('f32.safetensors')
  back = params_io.flatten_params(params_io.load_params(half))
  for k, v in params_io.flatten_params(tree).items():
    assert back[k].dtype == np.float16
    np.testing.assert_array_equal(back[k], v.astype(np.float16))
    # float16 keeps 11 significant bits: relative error at most 2**-11.
    assert np.max(np.abs(back[k].astype(np.float32) - v) / np.abs(v)) <= 2.0**-11
  assert params_io.load_params(full)['w'].dtype == np.float32


def test_float16_storage_refuses_what_it_cannot_hold(tmp_path):
  with pytest.raises(ValueError, match=r'parameter big/kernel .*beyond float16'):
    params_io.save_params(
      str(tmp_path / 'p.safetensors'), {'big': {'kernel': np.float32([1.0, 7e4])}}, 'float16'
    )
  with pytest.raises(ValueError, match='storage dtype'):
    params_io.save_params(str(tmp_path / 'p.safetensors'), {'a': np.ones(2)}, 'bfloat16')
