"""Checkpoint integrity (damaged checkpoints are detected, reported and skipped) and the
files a run depends on (tokenizer, data). The loop's other guards: test_train_guards.py.

The tiny base stage of configs/digits.py, as in test_train_loop.py (whose helpers and
compiled steps these runs share): one reference run of 6 steps with checkpoints at 2,
4 and 6, copied per test and damaged there.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from imagen_video_jax import training
from imagen_video_jax.training import checkpointing
from test_train_loop import ROOT, XLA_CACHE, _env, assert_states_equal, tiny_config

STEPS, EVERY = 6, 2


def config(data_dir, **overrides):
  kw = dict(num_steps=STEPS, checkpoint_every_steps=EVERY, keep_checkpoints=3)
  return tiny_config(data_dir, **{**kw, **overrides})


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('integrity') / 'digits_data')


@pytest.fixture(scope='module')
def ref(data_dir, tmp_path_factory):
  """(workdir, result) of 6 uninterrupted steps."""
  workdir = str(tmp_path_factory.mktemp('ref'))
  return workdir, training.train_and_evaluate(config(data_dir), workdir)


def copy_run(ref, dest) -> str:
  shutil.copytree(ref[0], dest)
  return str(dest)


def files(step_dir):
  return sorted(
    os.path.relpath(os.path.join(r, f), step_dir) for r, _, fs in os.walk(step_dir) for f in fs
  )


def flip_byte(path, rng):
  data = bytearray(open(path, 'rb').read())
  i = int(rng.integers(len(data)))
  data[i] ^= int(rng.integers(1, 256))
  open(path, 'wb').write(bytes(data))


def truncate(path, rng):
  size = os.path.getsize(path)
  os.truncate(path, int(rng.integers(size)))


def damage_latest(workdir, how, rng):
  """Damages one random file of the newest checkpoint; returns its relative path."""
  step_dir = os.path.join(workdir, 'checkpoints', str(STEPS))
  rel = files(step_dir)[int(rng.integers(len(files(step_dir))))]
  how(os.path.join(step_dir, rel), rng)
  return rel


def steps_in_metrics(workdir):
  lines = open(os.path.join(workdir, 'metrics.jsonl')).read().splitlines()
  return [json.loads(line)['step'] for line in lines]


def test_sha256_file_is_the_digest_of_the_whole_file(tmp_path):
  import hashlib

  from imagen_video_jax.digests import sha256_file

  data = np.random.default_rng(0).bytes((1 << 20) * 2 + 3)  # across the 1 MiB blocks
  path = tmp_path / 'f'
  path.write_bytes(data)
  assert sha256_file(str(path)) == hashlib.sha256(data).hexdigest()
  path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # the last byte of the last block
  assert sha256_file(str(path)) != hashlib.sha256(data).hexdigest()
  path.write_bytes(b'')
  assert sha256_file(str(path)) == hashlib.sha256(b'').hexdigest()


def test_saved_checkpoints_carry_a_record_of_their_files(ref):
  workdir, _ = ref
  ckpt = checkpointing.Checkpointer(workdir)
  assert ckpt.all_steps() == [2, 4, 6]
  for step in ckpt.all_steps():
    assert ckpt.verify(step) == []
    record = json.load(open(os.path.join(ckpt.step_dir(step), checkpointing.INTEGRITY_FILE)))
    assert sorted(record['files']) == [
      f for f in files(ckpt.step_dir(step)) if f != checkpointing.INTEGRITY_FILE
    ]
  prints = ckpt.fingerprints(STEPS)
  assert sorted(prints) == ['data', 'tokenizer']
  assert prints['tokenizer']['path'].endswith('spiece.model')
  ckpt.close()


def _resume_cases(n):
  rng = np.random.default_rng(0)
  return [
    (how, np.random.default_rng(rng.integers(1 << 31)))
    for how in (flip_byte, truncate)
    for _ in range(n)
  ]


@pytest.mark.parametrize('how', [flip_byte, truncate])
def test_every_damaged_file_is_detected_and_reported(ref, tmp_path, capsys, how):
  """10 random byte flips and 10 random truncations, each in a fresh copy of the run."""
  rng = np.random.default_rng(1 if how is flip_byte else 2)
  for i in range(10):
    workdir = copy_run(ref, tmp_path / f'run{i}')
    rel = damage_latest(workdir, how, rng)
    ckpt = checkpointing.Checkpointer(workdir)
    assert ckpt.newest_good_step() == STEPS - EVERY, rel
    out = capsys.readouterr().out
    assert f'Checkpoint step {STEPS} in' in out and 'is damaged' in out, (rel, out)
    assert ckpt.all_steps() == [2, 4]  # moved aside: later saves of step 6 may happen
    assert os.path.isdir(os.path.join(workdir, checkpointing.DAMAGED_DIR, str(STEPS)))
    ckpt.close()


def _resume_after_damage(ref, data_dir, workdir, capsys):
  run = training.train_and_evaluate(config(data_dir), workdir)
  out = capsys.readouterr().out
  assert 'is damaged' in out and f'at step {STEPS - EVERY}.' in out, out
  assert_states_equal(run.state, ref[1].state)
  assert run.data_state == ref[1].data_state
  # The redone steps' old rows were dropped: one row per step.
  assert steps_in_metrics(workdir) == list(range(1, STEPS + 1))


@pytest.mark.parametrize('how', [flip_byte, truncate])
def test_a_damaged_latest_checkpoint_resumes_from_the_one_before_exactly(
  ref, data_dir, tmp_path, capsys, how
):
  workdir = copy_run(ref, tmp_path / 'run')
  damage_latest(workdir, how, np.random.default_rng(3))
  _resume_after_damage(ref, data_dir, workdir, capsys)


@pytest.mark.slow
@pytest.mark.parametrize('case', range(20))
def test_every_damaged_checkpoint_resumes_exactly(ref, data_dir, tmp_path, capsys, case):
  how, rng = _resume_cases(10)[case]
  workdir = copy_run(ref, tmp_path / 'run')
  damage_latest(workdir, how, rng)
  _resume_after_damage(ref, data_dir, workdir, capsys)


def test_a_deleted_manifest_falls_back_and_a_deleted_record_is_announced(ref, tmp_path, capsys):
  workdir = copy_run(ref, tmp_path / 'run0')
  os.remove(os.path.join(workdir, 'checkpoints', str(STEPS), 'state', 'manifest.ocdbt'))
  ckpt = checkpointing.Checkpointer(workdir)
  assert ckpt.newest_good_step() == STEPS - EVERY
  assert 'state/manifest.ocdbt is missing' in capsys.readouterr().out
  ckpt.close()
  # Without its record (a job killed between a save's commit and its record), a
  # checkpoint restores unverified, with a warning (a failed restore falls back: below).
  workdir = copy_run(ref, tmp_path / 'run1')
  os.remove(os.path.join(workdir, 'checkpoints', str(STEPS), checkpointing.INTEGRITY_FILE))
  ckpt = checkpointing.Checkpointer(workdir)
  assert ckpt.newest_good_step() == STEPS
  assert 'has no integrity record' in capsys.readouterr().out
  ckpt.close()


def test_a_legacy_checkpoint_that_does_not_restore_falls_back(ref, data_dir, tmp_path, capsys):
  """Checkpoints saved before records (no `run` item) resume unverified; one that fails
  to restore is reported and set aside like a damaged one."""
  workdir = copy_run(ref, tmp_path / 'run')
  for step in (4, 6):
    d = os.path.join(workdir, 'checkpoints', str(step))
    os.remove(os.path.join(d, checkpointing.INTEGRITY_FILE))
    shutil.rmtree(os.path.join(d, 'run'))
  os.remove(os.path.join(workdir, 'checkpoints', '6', 'state', 'manifest.ocdbt'))
  run = training.train_and_evaluate(config(data_dir), workdir)
  out = capsys.readouterr().out
  assert 'no integrity record' in out and 'did not restore' in out, out
  assert 'at step 4.' in out
  assert_states_equal(run.state, ref[1].state)


def test_no_intact_checkpoint_is_one_clear_error_from_the_command(ref, data_dir, tmp_path):
  workdir = copy_run(ref, tmp_path / 'run')
  for step in (2, 4, 6):
    os.remove(os.path.join(workdir, 'checkpoints', str(step), 'state', 'manifest.ocdbt'))
  cmd = [
    sys.executable,
    '-m',
    'imagen_video_jax.train',
    '--config=configs/digits.py:stage=base,tiny=True',
    f'--workdir={workdir}',
    f'--config.data.dir={data_dir}',
  ]
  done = subprocess.run(cmd, cwd=ROOT, env=_env(XLA_CACHE), capture_output=True, text=True)
  assert done.returncode == 1, done.stdout + done.stderr
  assert 'Traceback' not in done.stderr
  assert 'no checkpoint in' in done.stderr and 'is intact' in done.stderr, done.stderr
  for step in (2, 4, 6):
    assert f'Checkpoint step {step} in' in done.stdout


def test_resuming_with_another_tokenizer_is_refused(ref, data_dir, tmp_path):
  other = str(tmp_path / 'data')
  shutil.copytree(data_dir, other)
  with open(os.path.join(other, 'spiece.model'), 'ab') as f:
    f.write(b'\0')
  workdir = copy_run(ref, tmp_path / 'run')
  with pytest.raises(training.ConfigMismatchError) as e:
    training.train_and_evaluate(config(other, num_steps=8), workdir)
  msg = str(e.value)
  assert 'the tokenizer differs' in msg and 'data differs' not in msg
  assert os.path.join(data_dir, 'spiece.model') in msg
  assert os.path.join(other, 'spiece.model') in msg
  assert msg.count('sha256') == 2


def test_a_run_with_the_same_files_elsewhere_resumes(ref, data_dir, tmp_path):
  other = str(tmp_path / 'data')
  shutil.copytree(data_dir, other)
  run = training.train_and_evaluate(config(other), copy_run(ref, tmp_path / 'run'))
  assert run.step == STEPS
