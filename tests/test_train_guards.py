"""Guards of the train loop: an update to non-finite weights is skipped, metrics.jsonl
holds each step once after a resume, and frame ids outside a row are refused."""

import json

import jax
import numpy as np
import pytest

from imagen_video_jax import training
from imagen_video_jax.training import loop as loop_lib
from imagen_video_jax.training import metrics as metrics_lib
from imagen_video_jax.training import state as state_lib
from test_train_loop import tiny_config


def test_an_update_to_non_finite_weights_is_skipped_and_counted(tmp_path):
  """An infinite learning rate: loss and gradients are finite, the new weights are not."""
  config = tiny_config(
    str(tmp_path / 'data'), num_steps=2, **{'optim.lr': float('inf'), 'optim.warmup_steps': 0}
  )
  run = training.train_and_evaluate(config, str(tmp_path / 'run'))
  by_step = {h['step']: h for h in run.history}
  assert np.isfinite(by_step[1]['loss']) and np.isfinite(by_step[1]['grad_norm'])
  assert by_step[1]['nonfinite'] == 1 and by_step[2]['nonfinite_total'] == 2
  assert bool(state_lib.all_finite(run.state))
  # Nothing was applied: Adam's count is still 0.
  assert max(int(x) for x in jax.tree.leaves(run.state.opt_state) if np.ndim(x) == 0) == 0


def test_metrics_rows_after_the_resumed_step_are_dropped(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  rows = [json.dumps({'step': s, 'loss': 1.0}) + '\n' for s in (1, 2, 3, 4, 5)]
  path.write_text(''.join(rows) + '{"step": 6, "lo')  # killed mid-write
  writer = metrics_lib.MetricWriter(str(tmp_path), from_step=3)
  writer.scalars(4, {'loss': 2.0})
  writer.close()
  assert [json.loads(line)['step'] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
  assert path.read_text().startswith(''.join(rows[:3]))


def test_frame_ids_out_of_range_are_refused():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  video = np.zeros((2, 4, 8, 8, 3), np.float32)
  good = np.array([[0, 1, 2, 3], [0, 0, 1, -1]], np.int32)
  loop_lib._place({'video': video, 'frame_ids': good}, sharding)
  for bad, named in ((4, '[4]'), (-2, '[-2]'), (9, '[9]')):
    fids = good.copy()
    fids[1, 2] = bad
    with pytest.raises(training.DataError, match=r'frame_ids \S+ outside \[-1, 3\]') as e:
      loop_lib._place({'video': video, 'frame_ids': fids}, sharding)
    assert named in str(e.value) and 'rows [1]' in str(e.value)
