"""Parameter trees round-trip through safetensors exactly."""

import numpy as np

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
