"""Scale-out changes where the numbers are computed, not the numbers.

The same 5-step training job (the tiny TSR digits stage, the real `train` entry point)
runs three ways and must end in the same state:
  * one CPU device (the reference);
  * 8 fake CPU devices on a 2x2x2 (data, fsdp, tensor) mesh, params really sharded;
  * two real processes on localhost (`jax.distributed`, gloo CPU collectives), 2 devices
    each, a 2x2 mesh, each process reading only its half of every global batch.
And when one process of a job dies, the other exits with an error within seconds.
"""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 5
ARGS = ['--config=configs/digits.py:stage=tsr,tiny=True', f'--config.num_steps={STEPS}',
        '--config.log_every=1', '--config.data.batch_size=8',
        f'--config.checkpoint_every_steps={STEPS}', '--config.data.num_threads=1']


def _env(devices=1, **extra):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), **extra)
  env.pop('XLA_FLAGS', None)
  if devices > 1:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _losses(workdir):
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return np.array([json.loads(l)['loss'] for l in lines])


def _state(workdir):
  from imagen_video_jax.training import checkpointing
  ckpt = checkpointing.Checkpointer(str(workdir), async_save=False)
  try:
    assert ckpt.latest_step() == STEPS
    return ckpt.restore_to_host(STEPS)
  finally:
    ckpt.close()


def _assert_same_run(workdir, reference):
  np.testing.assert_allclose(_losses(workdir), _losses(reference), rtol=1e-5, atol=1e-6)
  got, want = _state(workdir), _state(reference)
  for part in ('params', 'ema_params', 'opt_state'):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5),
                 got[part], want[part])
  # Not vacuous: the runs trained (Adam's moments hold real gradients).
  assert max(float(np.abs(m).max()) for m in jax.tree.leaves(want['opt_state'])
             if np.issubdtype(np.asarray(m).dtype, np.floating)) > 1e-3


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A directory whose runs share one Moving Digits world; the 1-device reference in it."""
  root = tmp_path_factory.mktemp('scaleout')
  out = subprocess.run([sys.executable, '-m', 'imagen_video_jax.train', *ARGS,
                        f'--workdir={root / "one"}'],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return root


_MESH_SCRIPT = r'''
import json, sys
import jax
from absl import flags
from ml_collections import config_flags
config_flags.DEFINE_config_file('config', None)
flags.DEFINE_string('workdir', None, '')
flags.FLAGS(sys.argv)
from imagen_video_jax import training
config = flags.FLAGS.config
config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
result = training.train_and_evaluate(config, flags.FLAGS.workdir)
kernel = result.state.params['down0_block0']['res']['conv1']['kernel']
print('SHARDS', json.dumps({
    'devices': jax.device_count(), 'spec': [str(s) for s in kernel.sharding.spec],
    'global': list(kernel.shape),
    'local': sorted({tuple(s.data.shape) for s in kernel.addressable_shards})}), flush=True)
'''


def test_a_2x2x2_mesh_trains_exactly_like_one_device(runs, tmp_path):
  script = tmp_path / 'mesh_train.py'
  script.write_text(_MESH_SCRIPT)
  out = subprocess.run([sys.executable, str(script), *ARGS, f'--workdir={runs / "mesh"}'],
                       cwd=ROOT, env=_env(devices=8), capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  shards = json.loads(out.stdout.split('SHARDS ', 1)[1].splitlines()[0])
  assert shards['devices'] == 8
  # A [1, 3, 3, 16, 16] conv kernel: input channels over fsdp, output over tensor.
  assert shards['spec'][-2:] == ['fsdp', 'tensor']
  g = shards['global']
  assert shards['local'] == [[1, 3, 3, g[3] // 2, g[4] // 2]]
  _assert_same_run(runs / 'mesh', runs / 'one')


@contextlib.contextmanager
def _two_processes(workdir, extra_args=(), heartbeat=None):
  """Starts the train job as process 0 and 1 of one jax.distributed job; kills leftovers."""
  port = _free_port()
  procs, logs = [], []
  try:
    for i in range(2):
      env = _env(devices=2, IVJ_COORDINATOR=f'localhost:{port}', IVJ_NUM_PROCESSES='2',
                 IVJ_PROCESS_ID=str(i))
      if heartbeat:
        env['IVJ_HEARTBEAT_TIMEOUT'] = str(heartbeat)
      log = open(workdir.parent / f'{workdir.name}.{i}.log', 'w+')
      logs.append(log)
      procs.append(subprocess.Popen(
          [sys.executable, '-m', 'imagen_video_jax.train', '--distributed', *ARGS,
           '--config.mesh.data=2', '--config.mesh.fsdp=2', *extra_args,
           f'--workdir={workdir}'],
          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
    yield procs, logs
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def _read(log):
  log.flush()
  log.seek(0)
  return log.read()


def _wait_until_training(procs, logs, step=3):
  """Until process 0 has logged `step` (so both are inside the training loop)."""
  deadline = time.monotonic() + 300
  while f'step {step}/' not in _read(logs[0]):
    assert time.monotonic() < deadline and all(p.poll() is None for p in procs), (
        _read(logs[0])[-3000:] + _read(logs[1])[-3000:])
    time.sleep(0.5)


def _finish(procs, logs, timeout=600) -> str:
  """Waits for both; asserts both exited 0; returns process 0's output."""
  for p in procs:
    p.wait(timeout=timeout)
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f'process {i}:\n' + _read(log)[-4000:]
  return _read(logs[0])


def test_two_processes_train_exactly_like_one(runs):
  with _two_processes(runs / 'two') as (procs, logs):
    out = _finish(procs, logs)
  assert f'step {STEPS}/{STEPS}' in out
  _assert_same_run(runs / 'two', runs / 'one')


@pytest.mark.slow  # ~1 min each: make test-all
@pytest.mark.parametrize('victim', [1, 0])  # a worker; the coordinator itself
def test_a_dead_process_stops_the_job_within_seconds(runs, victim):
  workdir = runs / f'kill{victim}'
  with _two_processes(workdir, ['--config.num_steps=100000'], heartbeat=10) as (procs, logs):
    _wait_until_training(procs, logs)
    procs[victim].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    survivor = procs[1 - victim]
    survivor.wait(timeout=120)  # bounded: gloo sees the reset, the heartbeat (10 s) times out
    took = time.monotonic() - killed_at
  out = _read(logs[1 - victim])
  assert survivor.returncode != 0, out[-3000:]
  assert took < 60, took
  assert 'Another process probably died' in out or 'another task died' in out, out[-3000:]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_and_both_resume(runs):
  """Preemption is agreed: a SIGTERM that reaches one host saves one checkpoint for all."""
  workdir = runs / 'preempt'
  with _two_processes(workdir, ['--config.num_steps=100000']) as (procs, logs):
    _wait_until_training(procs, logs)
    procs[1].send_signal(signal.SIGTERM)  # the worker only, not the coordinator
    out = _finish(procs, logs, timeout=120)
  saved = int(out.split('Preempted: saved step ', 1)[1].split(';')[0])
  assert (workdir / 'checkpoints' / str(saved)).is_dir()

  with _two_processes(workdir, [f'--config.num_steps={saved + 2}']) as (procs, logs):
    out = _finish(procs, logs)  # every process restores the checkpoint
  assert f'at step {saved}.' in out and f'step {saved + 2}/{saved + 2}' in out
