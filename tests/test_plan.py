"""imagen_video_jax.plan: memory plans from abstract arrays on fake CPU devices."""

import json
import os
import subprocess
import sys

import pytest

from imagen_video_jax import planning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs the plan CLI as __main__ and reports the process's peak RSS (kB) on exit: VmHWM,
# the peak of this program's own memory map. Not getrusage's ru_maxrss: Linux carries
# that over from the forking parent (a pytest worker already holding GBs).
_RUN = (
  'import atexit, runpy, sys; '
  'atexit.register(lambda: print("MAXRSS_KB", [l.split()[1] for l in '
  'open("/proc/self/status") if l.startswith("VmHWM")][0], flush=True)); '
  'sys.argv = ["plan"] + sys.argv[1:]; '
  'runpy.run_module("imagen_video_jax.plan", run_name="__main__")'
)


def run_plan(*args, timeout=600):
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  out = subprocess.run(
    [sys.executable, '-c', _RUN, *args, '--json'],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert out.returncode == 0, out.stdout + out.stderr
  plans = [json.loads(line[5:]) for line in out.stdout.splitlines() if line.startswith('JSON ')]
  rss = [int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith('MAXRSS_KB')]
  return out.stdout, plans, rss[0] * 1024


def test_parse_mesh_and_device_flags():
  from imagen_video_jax import parallel

  assert planning._AXES == parallel.AXES  # one list of mesh axes, kept in two modules
  assert planning.parse_mesh('data:16,fsdp:16') == {
    'data': 16,
    'fsdp': 16,
    'time': 1,
    'space': 1,
    'tensor': 1,
  }
  assert planning.num_devices(planning.parse_mesh('data:2,fsdp:4,tensor:2')) == 16
  # A plan compiles one data-parallel group: every axis but data.
  mesh = planning.parse_mesh('data:8,fsdp:32,time:4,space:2')
  assert planning.num_devices(mesh) == 2048 and planning.compiled_devices(mesh) == 256
  assert planning.devices_from_argv(['--search=data:8,fsdp:4,time:4;fsdp:2']) == 16
  assert planning.parse_search('4,8') == [
    planning.parse_mesh('fsdp:4'),
    planning.parse_mesh('fsdp:8'),
  ]
  assert planning.parse_search('fsdp:2;fsdp:2,space:2')[1]['space'] == 2
  with pytest.raises(ValueError, match='neither device counts'):
    planning.parse_search('4,x')
  assert planning.parse_crop('config') is None
  assert planning.parse_crop('full') == {'frames': 0, 'height': 0, 'width': 0}
  assert planning.parse_crop('0x192x320') == {'frames': 0, 'height': 192, 'width': 320}
  with pytest.raises(ValueError, match='FRAMESxHEIGHTxWIDTH'):
    planning.parse_crop('192x320')
  for bad in ('batch:4', 'fsdp:0', 'fsdp'):
    with pytest.raises(ValueError):
      planning.parse_mesh(bad)
  assert planning.devices_from_argv(['--mesh=data:16,fsdp:16']) == 16  # one data group
  assert planning.devices_from_argv(['--mesh=fsdp:64,time:2']) == 128
  assert planning.devices_from_argv(['--mesh', 'fsdp:4']) == 8  # at least the default's 8
  assert planning.devices_from_argv(['--search=8,16,64']) == 64
  env = planning.ensure_fake_devices(
    32, {'XLA_FLAGS': '--xla_force_host_platform_device_count=2 --xla_foo=1'}
  )
  assert env['XLA_FLAGS'].count('device_count') == 1
  assert '--xla_force_host_platform_device_count=32' in env['XLA_FLAGS']
  assert '--xla_foo=1' in env['XLA_FLAGS'] and env['JAX_PLATFORMS'] == 'cpu'


def test_fake_devices_drop_the_packages_cpu_default(monkeypatch):
  """The package's YNN setting is not for fake-device meshes; a user's own is kept."""
  from imagen_video_jax import _xla_cpu

  ours = f'--{_xla_cpu.OPTION}={_xla_cpu.VALUE}'
  monkeypatch.setattr(_xla_cpu, 'applied', True)
  env = planning.ensure_fake_devices(8, {'XLA_FLAGS': f'--xla_foo=1 {ours}'})
  assert _xla_cpu.OPTION not in env['XLA_FLAGS'] and '--xla_foo=1' in env['XLA_FLAGS']
  monkeypatch.setattr(_xla_cpu, 'applied', False)
  env = planning.ensure_fake_devices(8, {'XLA_FLAGS': ours})
  assert ours in env['XLA_FLAGS']


def test_peak_arithmetic():
  p = planning.MemoryPlan(
    stage='x',
    mesh={'data': 1, 'fsdp': 4, 'tensor': 1},
    devices=4,
    batch_size=8,
    param_count=10,
    param_bytes=40,
    params_per_device=10,
    opt_state_per_device=20,
    ema_per_device=10,
    batch_per_device=5,
  )
  assert p.state_per_device == 40 and p.peak_bytes == 45  # not compiled: state + batch
  p.compiled = True
  p.argument_bytes, p.output_bytes, p.alias_bytes, p.temp_bytes, p.code_bytes = 50, 45, 40, 7, 1
  assert p.peak_bytes == 50 + 45 - 40 + 7 + 1
  assert p.fits(63) and not p.fits(62)
  assert 'DOES NOT FIT in 6e-08 GB' in planning.report(p, 60)


def test_base_stage_without_allocating_it():
  """The 5.8B base stage on 64 fake devices (pure FSDP): shapes only, RSS far below it."""
  stdout, (p,), rss = run_plan(
    '--config=configs/imagen_video.py:stage=base',
    '--mesh=fsdp:64',
    '--nocompile',
    '--device_memory_gb=95',
  )
  assert p['param_count'] > 5.5e9 and p['param_bytes'] == 4 * p['param_count']
  state_bytes = 4 * p['param_bytes']  # params + EMA + Adam mu, nu: ~92 GB
  assert rss < 2e9 and rss < state_bytes / 40, rss
  # pure FSDP: every device holds ~1/64 of everything (small leaves stay replicated)
  per = p['params_per_device']
  assert p['param_bytes'] / 64 <= per < 1.05 * p['param_bytes'] / 64
  assert p['ema_per_device'] == per
  assert 2 * per <= p['opt_state_per_device'] < 2 * per + 1024  # Adam mu, nu (+ counts)
  assert 'parameters            5,' in stdout and 'FITS in 95 GB' in stdout


@pytest.mark.slow  # a longer end-to-end run: make test-all
def test_compiled_memory_analysis_tiny_stage():
  """The compiled path end to end on the tiny Moving Digits stage (frozen T5 in the step).

  Checked as relations between XLA's numbers for this one program and the plan's own
  arithmetic, with room for a buffer XLA lays out or aliases differently from one version
  to the next; no byte count, no fraction of the state fitted to one XLA.
  """
  stdout, (p,), _ = run_plan(
    '--config=configs/digits.py:stage=tsr,tiny=True',
    '--mesh=data:2,fsdp:2',
    '--config.data.batch_size=4',
  )
  assert p['compiled'] and p['devices'] == 4 and p['fits']
  assert p['temp_bytes'] > 0 and p['t5_per_device'] > 0
  # The step's arguments hold at least the state, the batch and the frozen T5.
  state, batch, t5 = p['state_per_device'], p['batch_per_device'], p['t5_per_device']
  assert p['argument_bytes'] >= state + batch + t5, p
  # The donated state aliases its outputs: the outputs are the new state plus a few scalar
  # metrics, and all but those reuse an argument's buffer (without donation nothing would).
  assert p['alias_bytes'] <= min(p['argument_bytes'], p['output_bytes'])
  assert p['output_bytes'] - p['alias_bytes'] < 0.05 * p['output_bytes'], p
  assert 'XLA compiled memory analysis' in stdout and 'CPU backend' in stdout


def test_search_stops_at_first_fit():
  stdout, plans, _ = run_plan(
    '--config=configs/digits.py:stage=base,tiny=True',
    '--search=2,4',
    '--config.data.batch_size=4',
    '--nocompile',
  )
  assert len(plans) == 1 and plans[0]['devices'] == 2
  assert 'first plan that fits: mesh fsdp:2, clips 8x16x16' in stdout


@pytest.mark.slow  # the same split is measured in tests/test_activation_sharding.py
def test_splitting_frames_and_rows_divides_the_activations():
  """Compiled plans of one SR step: the same data-parallel group with each clip's frames
  and rows split over 2 x 2 devices holds far less per device (activations split)."""
  _, plans, _ = run_plan(
    '--config=configs/digits.py:stage=ssr,tiny=True',
    '--search=data:2;data:2,time:2,space:2',
    '--config.data.batch_size=4',
    '--device_memory_gb=1e-9',  # fits nowhere: both meshes are compiled
  )
  whole, split = plans
  assert (whole['devices'], split['devices']) == (2, 8)
  assert split['params_per_device'] == whole['params_per_device']  # replicated on time, space
  assert split['temp_bytes'] < 0.5 * whole['temp_bytes'], (split, whole)


def test_search_moves_to_a_crop_when_no_mesh_fits_the_full_clip():
  config = ('--config=configs/digits.py:stage=ssr,tiny=True', '--config.data.batch_size=64')
  _, (full,), _ = run_plan(*config, '--mesh=fsdp:2', '--crops=full', '--nocompile')
  _, (crop,), _ = run_plan(*config, '--mesh=fsdp:2', '--crops=0x16x16', '--nocompile')
  assert crop['clip'] == [16, 16, 16] and crop['crop'] and not full['crop']
  assert crop['batch_per_device'] < 0.3 * full['batch_per_device']  # a quarter of the pixels
  gb = (full['peak_bytes'] + crop['peak_bytes']) / 2 / 1e9  # between the two
  stdout, plans, _ = run_plan(
    *config, '--search=1,2', '--crops=full,0x16x16', '--nocompile', f'--device_memory_gb={gb}'
  )
  assert [(p['devices'], p['crop']) for p in plans] == [(1, False), (2, False), (1, True)]
  assert 'first plan that fits: mesh one device, clips 16x16x16 (crop)' in stdout


def test_the_paper_ssr3_plan_splits_frames_and_trains_on_crops():
  """The configured ssr3 mesh (2048 devices) is planned on one data-parallel group."""
  stdout, (p,), _ = run_plan(
    '--config=configs/imagen_video.py:stage=ssr3', '--mesh=data:8,fsdp:32,time:8', '--nocompile'
  )
  assert p['devices'] == 2048 and p['clip'] == [128, 192, 320] and p['crop']
  assert 'each split over 8 devices' in stdout and '(a crop; sampling is full size)' in stdout
  # The whole-clip batch would hold 16x the pixels: the planned batch is the crop's.
  pixels = 2 * 128 * 192 * 320 * 3 * 4  # video + cond, float32, one example
  assert pixels <= p['batch_per_device'] < 2 * pixels


def test_sampling_plan_is_full_size_and_split_by_the_mesh():
  """--sample plans the stage's sampler at full size (a training crop does not apply);
  splitting each clip over time x space shrinks what one device holds."""
  stdout, (one, split), _ = run_plan(
    '--config=configs/digits.py:stage=ssr,tiny=True',
    '--config.data.crop.height=16',
    '--config.data.crop.width=16',
    '--sample',
    '--search=data:1;time:2,space:2',
  )
  for p in (one, split):
    assert p['kind'] == 'sample' and p['clip'] == [16, 32, 32] and not p['crop']
    assert p['opt_state_per_device'] == p['ema_per_device'] == 0 and p['compiled']
  assert (one['devices'], split['devices']) == (1, 4)
  assert split['temp_bytes'] < 0.5 * one['temp_bytes'], (split, one)
  assert 'XLA compiled memory analysis of the sampler' in stdout
  assert 'sampling 1 clip(s)' in stdout


def test_bad_mesh_is_one_line():
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'imagen_video_jax.plan',
      '--config=configs/digits.py:stage=base,tiny=True',
      '--mesh=fsdp:3',
      '--nocompile',
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode != 0 and 'plan: data.batch_size' in out.stderr, out.stderr
