"""configs/digits.py and the training job's config checks (no training here)."""

import os
import subprocess
import sys

import pytest

from imagen_video_jax.models import unet
from imagen_video_jax.training import checkpointing, loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import digits as digits_config  # noqa: E402


@pytest.mark.parametrize('stage', digits_config.STAGES)
def test_every_digits_stage_is_valid_and_small(stage):
  full = digits_config.get_config(f'stage={stage}')
  tiny = digits_config.get_config(f'stage={stage},tiny=True')
  for c in (full, tiny):
    described = loop.validate(c)
    model, spec = described.unet, described.spec
    assert described.name == stage
    assert spec.kind == stage and model.text_dim == c.text.d_model
    assert bool(model.cond_channels) == (stage != 'base')
  count = lambda c: unet.count_params(
    unet.UNetConfig.from_dict(c.model.to_dict()),
    frames=c.spec.frames,
    height=c.spec.height,
    width=c.spec.width,
  )
  assert 1_000_000 < count(full) < 3_300_000  # all three ship in < 40 MB (float32)
  assert count(tiny) < 200_000


def test_bad_stage_argument_is_named():
  with pytest.raises(ValueError, match='stage=.*sr3.*base'):
    digits_config.get_config('stage=sr3')
  with pytest.raises(ValueError, match="unknown argument 'size'"):
    digits_config.get_config('stage=base,size=3')


def test_bad_values_give_config_errors():
  c = digits_config.get_config('stage=tsr,tiny=True')
  c.model.cond_channels = 0
  with pytest.raises(loop.ConfigError, match='cond_channels=3'):
    loop.validate(c)
  c = digits_config.get_config('stage=base,tiny=True')
  c.model.levels = ({'channels': 16, 'temporal': 'lstm'},)
  with pytest.raises(loop.ConfigError, match="temporal is 'lstm'"):
    loop.validate(c)


def test_a_mesh_that_cannot_split_the_clips_is_a_config_error():
  c = digits_config.get_config('stage=ssr,tiny=True')  # 16 frames of 32x32
  c.mesh.time, c.mesh.space = 4, 8
  loop.validate(c)  # divisors: fine
  c.mesh.time = 3
  with pytest.raises(loop.ConfigError, match=r'mesh.time=3 does not divide .* 16 frames'):
    loop.validate(c)
  c.mesh.time, c.mesh.space, c.data.crop.height, c.data.crop.width = 1, 8, 16, 16
  loop.validate(c)
  c.mesh.space = 32  # divides the stage's 32 rows, not the 16 of its crop
  with pytest.raises(loop.ConfigError, match=r'mesh.space=32 .* 16 rows'):
    loop.validate(c)


def test_config_differences_allow_resumable_fields():
  a = digits_config.get_config('stage=base,tiny=True')
  b = digits_config.get_config('stage=base,tiny=True')
  b.num_steps, b.log_every, b.sample.steps, b.data.dir = 7, 3, 2, '/elsewhere'
  assert checkpointing.config_differences(a, b) == []
  b.optim.warmup_steps = 99
  b.model.levels = b.model.levels[:1]
  diffs = checkpointing.config_differences(a, b)
  assert [d.split(':')[0] for d in diffs] == ['model.levels', 'optim.warmup_steps']
  assert 'optim.warmup_steps: checkpoint 10, now 99' in diffs


def test_cli_user_error_is_one_line_without_traceback(tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'imagen_video_jax.train',
      '--config=configs/digits.py:stage=base,tiny=True',
      f'--workdir={tmp_path}',
      '--config.num_steps=0',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert out.returncode == 1
  assert 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
    'train: invalid config: num_steps must be >= 1, got 0'
  )


def test_data_only_makes_the_world_or_says_why_not(tmp_path):
  """`train --data_only` makes the Moving Digits world (what launch/digits_cascade.sh runs
  first); a data.dir that holds something else is refused in one line, untouched."""
  from cli_util import run_module

  flags = ['--config=configs/digits.py:stage=base,tiny=True', f'--workdir={tmp_path / "run"}']
  res = run_module('train', *flags, '--data_only', f'--config.data.dir={tmp_path / "w"}', cwd=ROOT)
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.strip().splitlines()[-1] == f'Moving Digits world: {tmp_path / "w"}'
  assert {'dataset_info.json', 'spiece.model'} <= set(os.listdir(tmp_path / 'w'))
  other = tmp_path / 'other'
  other.mkdir()
  (other / 'notes.txt').write_text('mine')
  res = run_module('train', *flags, '--data_only', f'--config.data.dir={other}', cwd=ROOT)
  assert res.returncode == 1 and 'Traceback' not in res.stderr
  assert 'holds no Moving Digits shards' in res.stderr.strip().splitlines()[-1]
  assert os.listdir(other) == ['notes.txt'] and (other / 'notes.txt').read_text() == 'mine'


def test_skipping_bad_records_may_change_on_resume():
  """`data.skip_bad_records` says how to treat bad records, not what the data is: a run
  may switch it on when it resumes, and a run saved before the field existed resumes."""
  c = digits_config.get_config('stage=base,tiny=True')
  saved = c.to_dict()
  del saved['data']['skip_bad_records']
  for value in (False, True):
    c.data.skip_bad_records = value
    assert checkpointing.config_differences(saved, c) == []
  c.data.clip_size = 16  # what the data is may not change
  assert checkpointing.config_differences(saved, c) == ['data.clip_size: checkpoint 32, now 16']
