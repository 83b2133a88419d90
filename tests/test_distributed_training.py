"""Scale-out changes where the numbers are computed, not the numbers.

One short training job (the tiny TSR digits stage, 5 steps, checkpoints at steps 3 and
5, a sample video at step 3) runs three ways and must end in the same state:
  * on one CPU device (the reference);
  * on 8 fake CPU devices: steps 1-3 on a 2x2x2 (data, fsdp, tensor) mesh, params really
    sharded, with the models' activation constraints applied and a sample video written;
    then steps 4-5 resumed on a 1x4x2 mesh (orbax re-shards the checkpoint);
  * as two real processes on localhost (the `train` entry point, jax.distributed, gloo
    CPU collectives), 2 devices each, a 2x2 mesh, each reading half of every global
    batch. A SIGTERM to one process stops both at one step; the same command resumes.
And when one process of a job dies, the other exits with an error within seconds.

The work is shared: the reference, the 8-device run and the two-process job are made
once per session, by whichever pytest-xdist worker asks first (distributed_util.once);
the two-process job's second run is also the one whose worker is killed. Process 0 of a
job writes a persistent compilation cache that the later jobs' process 0 loads (process
1 cannot: on CPU a cache entry is keyed by its process's devices).
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import distributed_util

# Several processes that must meet within JAX's 30 s timeouts: run alone, not next to
# another xdist worker's compile (`make test` runs them after the rest, serially).
pytestmark = pytest.mark.multiprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, 'tests')
FAST_COMPILE = '--xla_backend_optimization_level=0'
STEPS, MID = 5, 3
STAGE = 'stage=tsr,tiny=True'
# Batch 4: it splits over every mesh here (data x fsdp = 4).
OVERRIDES = {
  'num_steps': STEPS,
  'log_every': 1,
  'data.batch_size': 4,
  'checkpoint_every_steps': MID,
  'data.num_threads': 1,
}
SAMPLES = {'sample_every': MID, 'sample.num': 2, 'sample.steps': 2}
# The 8-device run: (mesh data, fsdp, tensor; constrain activations; steps; sample_every).
LEGS = [((2, 2, 2), True, MID, MID), ((1, 4, 2), False, STEPS, 0)]


def _flags(overrides):
  return [f'--config=configs/digits.py:{STAGE}'] + [
    f'--config.{k}={v}' for k, v in overrides.items()
  ]


def _env(devices=1, **extra):
  # Every run here compiles with LLVM's optimisations off: that cuts the compile times
  # which dominate these tests by about half (steps run slower; there are few), and
  # changes no numbers (no fast-math); sharding, partitioning and collectives are as ever.
  return dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} {FAST_COMPILE}',
    **extra,
  )


def _losses(workdir):
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return np.array([json.loads(l)['loss'] for l in lines])


def _state(workdir, step=STEPS):
  from imagen_video_jax.training import checkpointing

  ckpt = checkpointing.Checkpointer(str(workdir), async_save=False)
  try:
    assert step in ckpt.all_steps(), ckpt.all_steps()
    return ckpt.restore_to_host(step)
  finally:
    ckpt.close()


def _assert_same_state(workdir, reference, step=STEPS):
  got, want = _state(workdir, step), _state(reference, step)
  assert int(got['step']) == int(want['step']) == step
  for part in ('params', 'ema_params', 'opt_state'):
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5), got[part], want[part]
    )
  # Not vacuous: the runs trained (Adam's moments hold real gradients).
  assert (
    max(
      float(np.abs(m).max())
      for m in jax.tree.leaves(want['opt_state'])
      if np.issubdtype(np.asarray(m).dtype, np.floating)
    )
    > 1e-3
  )


def _assert_same_run(workdir, reference):
  np.testing.assert_allclose(_losses(workdir), _losses(reference), rtol=1e-5, atol=1e-6)
  _assert_same_state(workdir, reference)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  """Where this module's runs live; they share one Moving Digits world (root/data)."""
  return distributed_util.shared_dir(tmp_path_factory, 'scaleout')


_TRAIN_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv.pop(1))
import jax
from absl import flags
from ml_collections import config_flags
config_flags.DEFINE_config_file('config', None)
flags.DEFINE_string('workdir', None, '')
flags.DEFINE_string('legs', None, '')
flags.FLAGS(sys.argv)
import distributed_util
from imagen_video_jax import training
config = flags.FLAGS.config
constraints = distributed_util.counting(jax.lax, 'with_sharding_constraint')
with distributed_util.recording_samples():
  for mesh, constrain, steps, sample_every in json.loads(flags.FLAGS.legs):
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
    config.mesh.constrain_activations = constrain
    config.num_steps, config.sample_every = steps, sample_every
    constraints.calls = 0
    result = training.train_and_evaluate(config, flags.FLAGS.workdir)
    kernel = result.state.params['down0_block0']['res']['conv1']['kernel']
    print('LEG', json.dumps({
        'devices': jax.device_count(), 'step': result.step,
        'spec': [str(s) for s in kernel.sharding.spec], 'global': list(kernel.shape),
        'local': sorted({tuple(s.data.shape) for s in kernel.addressable_shards}),
        'constraints': constraints.calls}), flush=True)
"""


def _train(root, name, devices, legs):
  """Runs _TRAIN_SCRIPT's legs in root/name once per session: (workdir, output, legs)."""

  def make(workdir):
    out = subprocess.run(
      [
        sys.executable,
        '-c',
        _TRAIN_SCRIPT,
        TESTS,
        *_flags({**OVERRIDES, **SAMPLES}),
        f'--workdir={workdir}',
        f'--legs={json.dumps(legs)}',
      ],
      cwd=ROOT,
      env=_env(devices=devices),
      capture_output=True,
      text=True,
      timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (workdir / 'stdout.txt').write_text(out.stdout)

  workdir = distributed_util.once(root / name, make)
  out = (workdir / 'stdout.txt').read_text()
  done = [json.loads(l.split(' ', 1)[1]) for l in out.splitlines() if l.startswith('LEG ')]
  assert len(done) == len(legs), out[-3000:]
  return workdir, out, done


@pytest.fixture(scope='module')
def reference(root):
  """The 1-device run's workdir: losses, checkpoints at MID and STEPS, a sample at MID."""
  return _train(root, 'one', 1, [((1, 1, 1), False, STEPS, MID)])[0]


@pytest.fixture(scope='module')
def mesh_run(root):
  """The 8-device run (see the module doc): its workdir, its output, one dict per leg."""
  return _train(root, 'mesh', 8, LEGS)


def test_a_2x2x2_mesh_with_activation_constraints_trains_exactly_like_one_device(
  reference, mesh_run
):
  workdir, _, (leg, _) = mesh_run
  assert leg['devices'] == 8 and leg['step'] == MID
  # A [1, 3, 3, 16, 16] conv kernel: input channels over fsdp, output over tensor.
  assert leg['spec'][-2:] == ['fsdp', 'tensor']
  g = leg['global']
  assert leg['local'] == [[1, 3, 3, g[3] // 2, g[4] // 2]]
  # The models' activation constraints were in the traced programs (not no-ops).
  assert leg['constraints'] > 0
  np.testing.assert_allclose(_losses(workdir)[:MID], _losses(reference)[:MID], rtol=1e-5, atol=1e-6)
  _assert_same_state(workdir, reference, MID)


def test_resuming_on_another_mesh_ends_exactly_like_a_straight_run(reference, mesh_run):
  workdir, out, (_, leg) = mesh_run
  assert f'at step {MID}.' in out  # resumed, not started again
  g = leg['global']
  assert leg['step'] == STEPS and leg['spec'][-2:] == ['fsdp', 'tensor']
  assert leg['local'] == [[1, 3, 3, g[3] // 4, g[4] // 2]]  # re-sharded: fsdp 2 -> 4
  assert leg['constraints'] == 0  # this leg: XLA propagates the shardings itself
  _assert_same_run(workdir, reference)


def test_sampling_on_a_mesh_writes_the_video_one_device_samples(reference, mesh_run):
  from PIL import Image, ImageSequence

  gif = mesh_run[0] / 'samples' / f'step_{MID:08d}.gif'
  videos = np.load(f'{gif}.npy')
  n, frames, size = SAMPLES['sample.num'], 16, 16  # the TSR stage: 16 frames of 16x16
  assert videos.shape == (n, frames, size, size, 3)
  assert np.isfinite(videos).all() and videos.std() > 0.1  # not blank, not NaN
  assert np.abs(np.diff(videos, axis=1)).mean() > 1e-2  # frames differ: a video, not a still
  want = np.load(reference / 'samples' / f'step_{MID:08d}.gif.npy')
  np.testing.assert_allclose(videos, want, rtol=0, atol=1e-4)
  # The GIF file: the samples side by side, their conditioning below, x4 upscaled.
  image = Image.open(gif)
  assert image.n_frames == frames and image.size == (4 * (2 * size + 1), 4 * (2 * size + 1))
  decoded = np.stack([np.asarray(f.convert('RGB')) for f in ImageSequence.Iterator(image)])
  for i in range(n):  # sample i, back to 16x16 (GIF palettes are lossy: near, not equal)
    left = i * 4 * (size + 1)
    got = decoded[:, : 4 * size : 4, left : left + 4 * size : 4].astype(float)
    assert np.corrcoef(got.ravel(), videos[i].ravel())[0, 1] > 0.9


def _cache_env(root):
  return dict(
    JAX_COMPILATION_CACHE_DIR=str(root / 'xla_cache'),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
  )


def _two_processes(root, workdir, extra_args=(), heartbeat=None):
  """The train job as processes 0 and 1 of one jax.distributed job (a context manager)."""

  def env(i, coordinator):
    e = _env(
      devices=2,
      IVJ_COORDINATOR=coordinator,
      IVJ_NUM_PROCESSES='2',
      IVJ_PROCESS_ID=str(i),
      **_cache_env(root),
    )
    if heartbeat:
      e['IVJ_HEARTBEAT_TIMEOUT'] = str(heartbeat)
    return e

  command = [
    sys.executable,
    '-m',
    'imagen_video_jax.train',
    '--distributed',
    *_flags(OVERRIDES),
    '--config.mesh.data=2',
    '--config.mesh.fsdp=2',
    *extra_args,
    f'--workdir={workdir}',
  ]
  return distributed_util.local_job(command, env, workdir.parent / workdir.name, cwd=ROOT)


def _preempted_at(out):
  return int(out.split('Preempted: saved step ', 1)[1].split(';')[0])


def _kill(job, victim, wait_s):
  """Kills process `victim` of a training job: (the survivor's exit code, how long it took
  to exit, its output)."""
  job.procs[victim].send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  survivor = job.procs[1 - victim]
  try:
    code = survivor.wait(timeout=wait_s)
  except subprocess.TimeoutExpired:
    code = None
  return code, time.monotonic() - killed_at, job.output(1 - victim)


def _assert_stopped_within(died, seconds):
  code, took, out = died
  assert code is not None and code != 0, (code, out[-3000:])
  assert took < seconds, took
  assert 'Another process probably died' in out or 'another task died' in out, out[-3000:]


@pytest.fixture(scope='module')
def two_processes(root):
  """The two-process job, once per session: (its workdir, what happened).

  1. From scratch, steps slowed: after step 1, a SIGTERM to process 1 only.
  2. The same command resumes it, with a 5 s heartbeat (jax's default: 100 s). Once it
     has saved step STEPS and logged the next, process 1 is killed.
  """

  def make(workdir):
    events = {}
    # (debug_sleep_secs, a resumable setting, gives the SIGTERM time to land mid-run.)
    with _two_processes(root, workdir, ['--config.debug_sleep_secs=1.5']) as job:
      job.wait_for('step 1/', timeout=600)
      job.procs[1].send_signal(signal.SIGTERM)
      events['preempt_codes'] = job.wait(timeout=120)
      events['preempt_out'] = job.output(0)
    if events['preempt_codes'] == [0, 0]:
      with _two_processes(
        root,
        workdir,
        ['--config.num_steps=100000', f'--config.checkpoint_every_steps={STEPS}'],
        heartbeat=5,
      ) as job:
        job.wait_for(f'step {STEPS + 1}/', timeout=600)
        events['resume_out'] = job.output(0)
        commit = workdir / 'checkpoints' / str(STEPS) / 'commit_success.txt'
        deadline = time.monotonic() + 120
        while not commit.exists() and time.monotonic() < deadline:  # (saves are async)
          time.sleep(0.2)
        events['died'] = _kill(job, victim=1, wait_s=90)
    (workdir / 'events.json').write_text(json.dumps(events))

  workdir = distributed_util.once(root / 'two', make)
  return workdir, json.loads((workdir / 'events.json').read_text())


def test_a_sigterm_to_one_of_two_processes_stops_both_at_one_step(two_processes):
  workdir, events = two_processes
  # Both saved and exited 0 (process 0 learnt of the SIGTERM by agreement; neither
  # process waits on the other).
  assert events['preempt_codes'] == [0, 0], events['preempt_out'][-3000:]
  saved = _preempted_at(events['preempt_out'])
  assert 1 <= saved < STEPS and (workdir / 'checkpoints' / str(saved)).is_dir()


def test_two_processes_resume_and_train_exactly_like_one_device(two_processes, reference):
  workdir, events = two_processes
  assert 'resume_out' in events, 'the SIGTERM phase failed'
  assert f'at step {_preempted_at(events["preempt_out"])}.' in events['resume_out']
  np.testing.assert_allclose(_losses(workdir)[:STEPS], _losses(reference), rtol=1e-5, atol=1e-6)
  _assert_same_state(workdir, reference)


def test_when_a_worker_dies_the_coordinator_exits_within_seconds(two_processes):
  assert 'died' in two_processes[1], 'the SIGTERM phase failed'
  _assert_stopped_within(two_processes[1]['died'], 30)  # the heartbeat: 5 s


def _dead_process(root, name, victim, heartbeat, num_steps):
  with _two_processes(
    root, root / name, [f'--config.num_steps={num_steps}'], heartbeat=heartbeat
  ) as job:
    job.wait_for('step 1/', timeout=600)  # both are inside the training loop
    return _kill(job, victim, wait_s=120)


def test_when_the_coordinator_dies_the_worker_exits_within_seconds(root):
  # (At once, usually: the coordination service's connection closes.)
  _assert_stopped_within(_dead_process(root, 'dies0', 0, heartbeat=5, num_steps=1000), 30)


@pytest.mark.slow  # ~1 min each: make test-all
@pytest.mark.parametrize('victim', [1, 0])  # a worker; the coordinator itself
def test_a_dead_process_stops_the_job_within_seconds(root, victim):
  # bounded: gloo sees the reset, the heartbeat (10 s) times out
  died = _dead_process(root, f'kill{victim}', victim, heartbeat=10, num_steps=100000)
  _assert_stopped_within(died, 40)  # (54 s when IVJ_HEARTBEAT_TIMEOUT was ignored)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_and_both_resume(root):
  """Preemption is agreed: a SIGTERM that reaches one host saves one checkpoint for all."""
  workdir = root / 'preempt'
  with _two_processes(root, workdir, ['--config.num_steps=100000']) as job:
    job.wait_for('step 3/', timeout=600)
    job.procs[1].send_signal(signal.SIGTERM)  # the worker only, not the coordinator
    out = job.finish(timeout=120)[0]
  saved = _preempted_at(out)
  assert (workdir / 'checkpoints' / str(saved)).is_dir()

  with _two_processes(root, workdir, [f'--config.num_steps={saved + 2}']) as job:
    out = job.finish()[0]  # every process restores the checkpoint
  assert f'at step {saved}.' in out and f'step {saved + 2}/{saved + 2}' in out
