"""make_dataset CLI end to end, and the TFDS builder read back with tfds.data_source."""

import json
import subprocess
import sys

import grain
import numpy as np
import pytest

from imagen_video_jax.data import digits, pipeline, records

# Other test files may have imported JAX in this process; its fork warning does not apply
# to subprocess.run, which execs at once.
pytestmark = pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')


def _cli(*args):
  return subprocess.run(
    [sys.executable, '-m', 'imagen_video_jax.make_dataset', *args],
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_make_dataset_cli_writes_the_same_bytes(tmp_path):
  out = tmp_path / 'digits'
  proc = _cli(
    '--world=digits',
    f'--output={out}',
    '--num_videos=12',
    '--num_images=9',
    '--num_eval_videos=3',
    '--seed=4',
    '--per_shard=5',
  )
  assert proc.returncode == 0, proc.stderr
  info = json.loads((out / 'dataset_info.json').read_text())
  assert info['num_videos'] == 12 and len(info['shards']['videos']) == 3
  config = digits.DigitsConfig()
  for prefix, kind, n in [
    ('videos', 'video', 12),
    ('images', 'image', 9),
    ('eval_videos', 'eval_video', 3),
  ]:
    source = grain.sources.ArrayRecordDataSource(records.shard_paths(str(out), prefix))
    assert len(source) == n
    want = [records.encode(e) for e in digits.generate(config, 4, kind, n)]
    assert [source[i] for i in range(n)] == want  # same seed, same bytes, new process
  # The written shards feed the pipeline directly.
  stage = pipeline.DIGITS_STAGES['base']
  batch = next(
    iter(
      pipeline.make_pipeline(
        stage,
        pipeline.PipelineConfig(batch_size=2, image_fraction=0.5, shard_index=0, shard_count=1),
        str(out),
        str(out),
      )
    )
  )
  assert batch['video'].shape == (2, 8, 16, 16, 3)

  again = _cli(f'--output={out}', '--num_videos=1', '--num_images=1')
  assert again.returncode == 1 and 'empty --output' in again.stderr
  bad = _cli(f'--output={tmp_path / "x"}', '--held_out=3:purple:left')
  assert bad.returncode == 1 and 'held-out' in bad.stderr
  assert 'Traceback' not in bad.stderr + again.stderr


def test_tfds_builder_via_cli_and_data_source(tmp_path):
  import tensorflow_datasets as tfds

  proc = _cli(
    '--format=tfds',
    f'--output={tmp_path}',
    '--tfds_config=small',
    '--num_videos=6',
    '--num_images=16',
    '--num_eval_videos=2',
    '--seed=1',
  )
  assert proc.returncode == 0, proc.stderr
  splits = tfds.data_source('moving_digits/small', data_dir=str(tmp_path), download=False)
  assert {k: len(v) for k, v in splits.items()} == {'videos': 6, 'images': 16, 'eval_videos': 2}
  # The same examples as the generator (TFDS stores them in its own shuffled order).
  want = {e.video.tobytes(): e for e in digits.generate(digits.DigitsConfig(), 1, 'video', 6)}
  for i in range(6):
    got = splits['videos'][i]
    ref = want[got['video'].tobytes()]
    assert got['caption'].decode() == ref.caption
    np.testing.assert_array_equal(got['positions'], ref.arrays['positions'])
    assert got['direction'].decode() == ref.meta['direction']
  # A TFDS split is a random-access source the pipeline takes as is.
  stage = pipeline.DIGITS_STAGES['ssr']
  batch = next(
    iter(
      pipeline.make_pipeline(
        stage,
        pipeline.PipelineConfig(batch_size=2, image_fraction=0.5, shard_index=0, shard_count=1),
        splits['videos'],
        splits['images'],
      )
    )
  )
  assert batch['cond'].shape == (2, 16, 32, 32, 3)
  assert sorted(len(set(ids)) for ids in batch['frame_ids']) == [1, 16]
