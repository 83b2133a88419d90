"""A super-resolution stage on a 2x2 (data x fsdp) mesh of fake CPU devices, with samples,
then resumed on a different mesh (orbax restores into the new shardings).

The fast suite checks the same, numerically and more cheaply, in
test_distributed_training.py (a constrained mesh run with a sample; a resume on another
mesh that ends exactly like a straight run)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_tsr_trains_sharded_and_writes_sample_videos(tmp_path):
  from PIL import Image

  workdir = tmp_path / 'tsr'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=4')
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'imagen_video_jax.train',
      '--config=configs/digits.py:stage=tsr,tiny=True',
      f'--workdir={workdir}',
      '--config.num_steps=4',
      '--config.log_every=2',
      '--config.data.batch_size=4',
      '--config.mesh.data=2',
      '--config.mesh.fsdp=2',
      '--config.mesh.constrain_activations=True',
      '--config.sample_every=4',
      '--config.sample.num=2',
      '--config.sample.steps=2',
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stdout + out.stderr
  assert 'step 4/4' in out.stdout
  gif = workdir / 'samples' / 'step_00000004.gif'
  image = Image.open(gif)
  assert image.n_frames == 16  # the TSR stage's frames
  # two samples side by side (plus a 1-pixel gap), their conditioning below; x4 upscaled
  assert image.size == (4 * 33, 4 * 33)
  events = list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  assert events and events[0].stat().st_size > 10_000  # scalars + the animated GIF
  assert (workdir / 'checkpoints' / '4').is_dir()
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == 2 and np.isfinite(float(json.loads(lines[-1])['loss']))

  more = subprocess.run(
    [
      sys.executable,
      '-m',
      'imagen_video_jax.train',
      '--config=configs/digits.py:stage=tsr,tiny=True',
      f'--workdir={workdir}',
      '--config.num_steps=6',
      '--config.log_every=2',
      '--config.data.batch_size=4',
      '--config.mesh.data=1',
      '--config.mesh.fsdp=4',
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert more.returncode == 0, more.stdout + more.stderr
  assert 'at step 4.' in more.stdout and 'step 6/6' in more.stdout
