"""Where a Moving Digits job keeps its world: inside its workdir unless told otherwise,
and where it was for a run that began when the default was `<workdir>/../data`."""

import os

import pytest

from cli_util import run_module
from test_train_loop import ROOT, tiny_config

from imagen_video_jax import training
from imagen_video_jax.data import prepare

NAME = 'digits-v2-16v-16i-16x32-seed0'  # the tiny config's world (Moving Digits v2)


def fake_world(d):
  os.makedirs(d)
  for f in ('dataset_info.json', prepare.VOCAB_FILE):
    open(os.path.join(d, f), 'w').close()


def test_the_default_world_is_inside_the_workdir_and_older_runs_keep_theirs(tmp_path):
  data = tiny_config('').data
  work = str(tmp_path / 'runs' / 'base')
  inside = os.path.join(work, 'data', NAME)
  legacy = str(tmp_path / 'runs' / 'data' / NAME)
  assert prepare.digits_data_dir(data, work) == inside
  fake_world(legacy)  # a world where the old default put it ...
  assert prepare.digits_data_dir(data, work) == inside  # ... is not a fresh run's
  os.makedirs(os.path.join(work, 'checkpoints', '2'))  # a run that began beside it
  assert prepare.digits_data_dir(data, work) == legacy
  fake_world(inside)  # a world of its own wins
  assert prepare.digits_data_dir(data, work) == inside
  assert prepare.digits_data_dir({**data, 'dir': '/elsewhere'}, work) == '/elsewhere'


def test_data_only_writes_inside_the_workdir_or_under_data_root(tmp_path):
  flags = ['--config=configs/digits.py:stage=base,tiny=True', '--data_only']
  res = run_module('train', *flags, f'--workdir={tmp_path / "run"}', cwd=ROOT)
  assert res.returncode == 0, res.stderr[-2000:]
  want = tmp_path / 'run' / 'data' / NAME
  assert res.stdout.strip().splitlines()[-1] == f'Moving Digits world: {want}'
  assert os.listdir(tmp_path) == ['run'] and (want / 'spiece.model').is_file()
  res = run_module(
    'train', *flags, f'--workdir={tmp_path / "b"}', f'--data_root={tmp_path / "shared"}', cwd=ROOT
  )
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.strip().splitlines()[-1].endswith(f'{tmp_path / "shared" / NAME}')
  both = [f'--data_root={tmp_path / "x"}', f'--config.data.dir={tmp_path / "y"}']
  res = run_module('train', *flags, f'--workdir={tmp_path / "c"}', *both, cwd=ROOT)
  assert res.returncode == 1 and 'Traceback' not in res.stderr
  assert res.stderr.strip().splitlines() == [
    f"error: give --data_root or --config.data.dir, not both (data.dir='{tmp_path / 'y'}')"
  ]
  assert not (tmp_path / 'x').exists() and not (tmp_path / 'y').exists()


@pytest.mark.slow  # a longer end-to-end run: make test-all
def test_a_run_begun_with_its_world_beside_the_workdir_resumes_there(tmp_path, capsys):
  work = str(tmp_path / 'runs' / 'base')
  legacy = str(tmp_path / 'runs' / 'data' / NAME)  # the old default, <workdir>/../data
  kw = dict(checkpoint_every_steps=2, keep_checkpoints=3, log_every=1)
  first = training.train_and_evaluate(tiny_config(legacy, num_steps=2, **kw), work)
  assert first.step == 2
  capsys.readouterr()
  run = training.train_and_evaluate(tiny_config('', num_steps=4, **kw), work)
  assert run.step == 4 and 'Resumed from' in capsys.readouterr().out
  assert not os.path.exists(os.path.join(work, 'data'))  # no second world was made
