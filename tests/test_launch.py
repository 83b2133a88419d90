"""launch/: the TPU pod launcher's and the SLURM script's --dry-run commands, and the
digits cascade script (its dry run, and the real chain on the tiny configs: slow)."""

import json
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ['--config=configs/imagen_video.py:stage=base', '--workdir=gs://bucket/base']


def run(cmd, env=None):
  out = subprocess.run(
    cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ, **(env or {}))
  )
  assert out.returncode == 0, out.stdout + out.stderr
  return [l for l in out.stdout.splitlines() if l and not l.startswith('#')]


def test_tpu_pod_dry_run():
  lines = run(
    [
      sys.executable,
      'launch/tpu_pod.py',
      '--name=ivj',
      '--zone=us-east5-a',
      '--accelerator=v5p-256',
      '--project=proj',
      '--spot',
      '--dry-run',
      '--',
      *TRAIN,
    ]
  )
  cmds = [shlex.split(l) for l in lines]
  describe, create, pack, copy, install, start = cmds
  assert describe[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', 'ivj']
  assert create[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'ivj']
  for flag in (
    '--zone=us-east5-a',
    '--project=proj',
    '--accelerator-type=v5p-256',
    '--version=v2-alpha-tpuv5',
    '--spot',
  ):
    assert flag in create
  assert 'git ls-files' in pack[-1] and 'tar czf' in pack[-1]
  assert copy[4] == 'scp' and '--worker=all' in copy and copy[-4].startswith('ivj:')
  for c in (install, start):
    assert c[4:6] == ['ssh', 'ivj'] and '--worker=all' in c
  assert 'pip install' in install[-1] and 'jax[tpu]' in install[-1]
  assert start[-1].startswith('--command=')
  remote = shlex.split(start[-1][len('--command=') :].split('nohup ')[1].split(' >')[0])
  assert remote == ['python3', '-m', 'imagen_video_jax.train', '--distributed', *TRAIN]


def test_tpu_pod_needs_train_args():
  out = subprocess.run(
    [sys.executable, 'launch/tpu_pod.py', '--name=x', '--zone=z', '--dry-run'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert out.returncode == 2 and '--config' in out.stderr


def test_slurm_submit_dry_run():
  env = {k: '' for k in ('SLURM_JOB_ID',)}
  (line,) = run(
    [
      'bash',
      'launch/slurm_gpu.sh',
      '--dry-run',
      '--nodes=4',
      '--gpus-per-node=8',
      '--partition=gpu',
      '--time=48:00:00',
      '--',
      *TRAIN,
    ],
    env=env,
  )
  cmd = shlex.split(line)
  assert cmd[0] == 'sbatch'
  for flag in (
    '--nodes=4',
    '--ntasks-per-node=1',
    '--gpus-per-node=8',
    '--partition=gpu',
    '--time=48:00:00',
  ):
    assert flag in cmd
  script = next(c for c in cmd if c.endswith('slurm_gpu.sh'))
  assert cmd[cmd.index(script) + 1 :] == ['--venv=.venv', '--', *TRAIN]


def test_slurm_in_job_dry_run_runs_srun_with_ivj_env():
  # No scontrol: the node list is read as a comma list.
  env = dict(
    SLURM_JOB_ID='42',
    SLURM_JOB_NODELIST='gpu-a,gpu-b,gpu-c',
    SLURM_NNODES='3',
    SLURM_NTASKS='3',
    SLURM_GPUS_PER_NODE='8',
    IVJ_PORT='23456',
    PATH='/usr/bin:/bin',
  )
  (line,) = run(['bash', 'launch/slurm_gpu.sh', '--dry-run', '--', *TRAIN], env=env)
  cmd = shlex.split(line)
  assert cmd[0] == 'srun'
  for flag in ('--nodes=3', '--ntasks=3', '--ntasks-per-node=1', '--gpus-per-node=8'):
    assert flag in cmd
  assert cmd[-3:-1] == ['bash', '-c']
  task = cmd[-1]
  assert (
    'export IVJ_COORDINATOR=gpu-a:23456 IVJ_NUM_PROCESSES=3 IVJ_PROCESS_ID=$SLURM_PROCID;'
  ) in task
  assert shlex.split(task.split('exec ')[1])[1:] == [
    '-m',
    'imagen_video_jax.train',
    '--distributed',
    *TRAIN,
  ]


def test_slurm_task_env_is_what_initialize_distributed_reads():
  """The per-task environment the script exports makes parallel plan an explicit start."""
  from imagen_video_jax import parallel

  p = parallel.plan_distributed(
    env={
      'IVJ_COORDINATOR': 'gpu-a:23456',
      'IVJ_NUM_PROCESSES': '3',
      'IVJ_PROCESS_ID': '1',
      'SLURM_JOB_ID': '42',
      'SLURM_NTASKS': '3',
    }
  )
  assert p.mode == 'explicit' and p.kwargs == dict(
    coordinator_address='gpu-a:23456', num_processes=3, process_id=1
  )


# ------------------------------------------------------------- launch/digits_cascade.sh
def test_digits_cascade_dry_run():
  lines = run(
    [
      'bash',
      'launch/digits_cascade.sh',
      '--dry-run',
      '--budget_secs=300',
      '--runs=/r',
      '--output=/o',
      '--eval_samples=50',
      '--',
      '--config.data.batch_size=128',
    ]
  )
  data, base, tsr, ssr, wait, export, evaluate = lines
  assert shlex.split(data)[1:] == [
    '-m',
    'imagen_video_jax.train',
    '--config=configs/digits.py:stage=base',
    '--workdir=/r/base',
    '--data_root=/r/data',  # the stages share one world, outside their workdirs
    '--data_only',
    '--config.data.batch_size=128',
  ]
  for line, stage in ((base, 'base'), (tsr, 'tsr'), (ssr, 'ssr')):
    assert line.endswith(' &')  # the three stages train at once
    assert shlex.split(line[:-2])[1:] == [
      '-m',
      'imagen_video_jax.train',
      f'--config=configs/digits.py:stage={stage}',
      f'--workdir=/r/{stage}',
      '--data_root=/r/data',
      '--config.stop_after_secs=300',
      '--config.data.batch_size=128',
    ]
  assert wait == 'wait'
  assert shlex.split(export)[1:] == [
    '-m',
    'imagen_video_jax.export_cascade',
    '--output=/o',
    '--run=/r/base',
    '--run=/r/tsr',
    '--run=/r/ssr',
  ]
  assert shlex.split(evaluate)[1:] == [
    '-m',
    'imagen_video_jax.evaluate',
    '--mode=adherence',
    '--checkpoints=/o',
    '--num_samples=50',
    '--output=/o/adherence.json',
    '--noprogress',
  ]
  seq = run(
    ['bash', 'launch/digits_cascade.sh', '--dry-run', '--sequential', '--tiny', '--eval_samples=0']
  )
  assert len(seq) == 5 and not any(l.endswith('&') or l == 'wait' for l in seq)
  assert '--config=configs/digits.py:stage=tsr,tiny=True' in shlex.split(seq[2])
  assert 'evaluate' not in ' '.join(seq)
  own = run(['bash', 'launch/digits_cascade.sh', '--dry-run', '--', '--config.data.dir=/w'])
  assert not any('--data_root' in l for l in own)  # an explicit world replaces the shared one
  assert all('--config.data.dir=/w' in l for l in own[:4])


def _refused(script, *args):
  """The stderr of a launch script that must refuse its arguments (exit status 2)."""
  out = subprocess.run(
    ['bash', script, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
  )
  assert out.returncode == 2, out.stdout + out.stderr
  return out.stderr


def test_digits_cascade_refuses_bad_arguments_and_an_existing_cascade(tmp_path):
  def fails(*args):
    return _refused('launch/digits_cascade.sh', *args)

  assert 'whole numbers' in fails('--budget_secs=ten')
  assert 'unknown argument' in fails('--nope')
  (tmp_path / 'cascade.json').write_text('{}')
  assert 'already holds a cascade' in fails(f'--output={tmp_path}')


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_digits_cascade_trains_exports_and_scores_the_tiny_cascade(tmp_path):
  """The real chain on the tiny configs: world, three stages at once, export, judge."""
  out = subprocess.run(
    [
      'bash',
      'launch/digits_cascade.sh',
      f'--python={sys.executable}',
      f'--runs={tmp_path}/runs',
      f'--output={tmp_path}/cascade',
      '--tiny',
      '--budget_secs=900',
      '--eval_samples=2',
      '--',
      '--config.num_steps=3',
      '--config.data.num_videos=16',
      '--config.data.num_images=16',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=1500,
    env=dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'xla')),
  )
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  for stage in ('base', 'tsr', 'ssr'):
    assert f'[digits_cascade] {stage}: step 3/3' in out.stdout, out.stdout
  report = json.loads((tmp_path / 'cascade' / 'adherence.json').read_text())
  from imagen_video_jax import export
  from imagen_video_jax.evaluation import judge, metrics

  pipe = export.load_cascade(str(tmp_path / 'cascade'))
  assert [s.name for s in pipe.stages] == ['base', 'tsr', 'ssr']
  # The judge scored 2 samples of the exported cascade in each group: the report is the
  # library's evaluation of that cascade with the script's arguments.
  want = metrics.evaluate_cascade(
    pipe, judge.load_judge(), num_samples=2, seed=0, batch_size=8, progress=False, real_fd_clips=200
  )
  want = json.loads(json.dumps(want))
  assert report.pop('fd_judge') == pytest.approx(want.pop('fd_judge'), rel=1e-4)
  assert report == want
  for group in ('train_combinations', 'held_out_combinations'):
    assert report[group]['num'] == 2


def test_offline_wheels_dry_run_fetches_the_pinned_versions():
  (line,) = run(['bash', 'launch/offline_wheels.sh', '--dry-run', '--dest=/w'])
  cmd = shlex.split(line)
  assert cmd[:4] == ['python3', '-m', 'pip', 'download'] and '--no-deps' in cmd
  assert cmd[cmd.index('--python-version') + 1] == '3.12'
  pins = dict(
    l.strip().lower().split('==')
    for l in open(os.path.join(ROOT, 'requirements', 'requirements.txt'))
    if '==' in l
  )
  wanted = [c for c in cmd[cmd.index('/w') + 1 :]]
  assert {'flax', 'grain', 'array_record', 'ml_collections', 'orbax-checkpoint'} <= {
    w.split('==')[0].lower() for w in wanted
  }
  for w in wanted:  # exactly the versions the tests here run with
    name, version = w.lower().split('==')
    assert pins[name] == version, w


# ------------------------------------------------------------- launch/distill_digits.sh
def test_distill_digits_dry_run():
  lines = run(
    [
      'bash',
      'launch/distill_digits.sh',
      '--dry-run',
      '--runs=/r',
      '--budget_secs=300',
      '--eval_samples=50',
      '--student_sampler=base:stepback',
      '--',
      '--config.data.batch_size=8',
    ]
  )
  data, base, tsr, ssr, wait, export, students, teachers, fast, full = lines
  assert shlex.split(data)[1:] == [
    '-m',
    'imagen_video_jax.train',
    '--config=configs/digits.py:stage=base',
    '--workdir=/r/world',
    '--data_root=/r/data',
    '--data_only',
    '--config.data.batch_size=8',
  ]
  for line, stage in ((base, 'base'), (tsr, 'tsr'), (ssr, 'ssr')):
    # Each stage's phases in order (guidance, then 32 -> 16 -> 8), the stages at once.
    assert line.startswith('( ') and line.endswith(' ) &')
    phases = [shlex.split(c)[1:] for c in line[2:-4].split(' && ')]
    common = ['--data_root=/r/data', '--config.stop_after_secs=300', '--config.data.batch_size=8']
    config = f'--config=configs/digits.py:stage={stage}'
    assert phases == [
      ['-m', 'imagen_video_jax.distill', config, '--phase=guidance',
       '--teacher=checkpoints/digits', f'--workdir=/r/{stage}/guidance', *common],
      ['-m', 'imagen_video_jax.distill', config, '--phase=halving', '--student_steps=16',
       f'--teacher=/r/{stage}/guidance', f'--workdir=/r/{stage}/steps_16', *common],
      ['-m', 'imagen_video_jax.distill', config, '--phase=halving', '--student_steps=8',
       f'--teacher=/r/{stage}/steps_16', f'--workdir=/r/{stage}/steps_8', *common],
    ]  # fmt: skip
  assert wait == 'wait'
  assert shlex.split(export)[1:] == [
    '-m',
    'imagen_video_jax.export_cascade',
    '--cascade=checkpoints/digits',
    '--output=/r/cascade',
    '--student_dtype=float16',
    '--student=/r/base/steps_8',
    '--student=/r/tsr/steps_8',
    '--student=/r/ssr/steps_8',
    '--student_sampler=base:stepback',
  ]
  for line, extra in ((students, []), (teachers, ['--teacher'])):
    out = 'adherence_teachers' if extra else 'adherence'
    assert shlex.split(line)[3:] == [
      '--mode=adherence',
      '--checkpoints=/r/cascade',
      '--num_samples=50',
      '--noprogress',
      *extra,
      f'--output=/r/cascade/{out}.json',
    ]
  # One video end to end, students then teachers, in the same run.
  for line, extra, name in ((fast, [], 'students'), (full, ['--teacher'], 'teachers')):
    cmd, dest = line.split(' > ')
    assert shlex.split(cmd)[1:] == [
      'benchmarks/sampling_throughput.py',
      '--cascade=/r/cascade',
      '--num_samples=1',
      '--repeats=2',
      '--eval_num_samples=0',
      *extra,
      f'--label={name}',
    ]
    assert dest == f'/r/cascade/speed_{name}.txt'
  seq = run(
    ['bash', 'launch/distill_digits.sh', '--dry-run', '--sequential', '--steps=2',
     '--phase_steps=40', '--eval_samples=0', '--speed_repeats=0', '--tiny', '--teacher_steps=8']
  )  # fmt: skip
  # guidance, 8 -> 4 -> 2, per stage, one after the other; steps instead of a time budget
  assert len(seq) == 1 + 3 * 3 + 1 and not any(l.endswith('&') or l == 'wait' for l in seq)
  assert '--student_steps=2' in seq[3] and '--config.num_steps=40' in shlex.split(seq[3])
  assert '--config=configs/digits.py:stage=ssr,tiny=True' in shlex.split(seq[9])
  assert 'evaluate' not in ' '.join(seq) and 'sampling_throughput' not in ' '.join(seq)


def test_distill_digits_refuses_bad_arguments(tmp_path):
  def fails(*args):
    return _refused('launch/distill_digits.sh', *args)

  assert 'whole numbers' in fails('--budget_secs=ten')
  assert 'whole numbers' in fails('--speed_repeats=-1')
  assert 'unknown argument' in fails('--nope')
  assert 'halved' in fails('--steps=6')  # 32 -> 16 -> 8: 6 is never reached
  assert 'float16 or float32' in fails('--student_dtype=bfloat16')
  assert 'halved' in fails('--steps=0')
  assert 'holds no cascade.json' in fails(f'--teacher={tmp_path}')
  (tmp_path / 'cascade.json').write_text('{}')
  assert 'already holds a cascade' in fails(f'--teacher={tmp_path}', f'--output={tmp_path}')


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_distill_digits_distils_exports_and_scores_a_tiny_cascade(tmp_path):
  """The real chain on the tiny configs: a tiny cascade trained by digits_cascade.sh, then
  every stage distilled (guidance, 8 -> 4 steps), exported beside its teacher, scored."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'xla'))
  world = ['--config.data.num_videos=16', '--config.data.num_images=16']

  def script(*args):
    out = subprocess.run(
      ['bash', *args], cwd=ROOT, capture_output=True, text=True, timeout=1100, env=env
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout

  teacher = tmp_path / 'teacher'
  script('launch/digits_cascade.sh', f'--python={sys.executable}', f'--runs={tmp_path}/runs',
         f'--output={teacher}', '--tiny', '--eval_samples=0', '--', '--config.num_steps=3',
         *world)  # fmt: skip
  out = tmp_path / 'distilled'
  log = script('launch/distill_digits.sh', f'--python={sys.executable}', f'--teacher={teacher}',
               f'--runs={tmp_path}/distill', f'--output={out}', '--tiny', '--teacher_steps=8',
               '--steps=4', '--phase_steps=2', '--eval_samples=2', '--speed_repeats=1', '--',
               *world)  # fmt: skip
  for stage in ('base', 'tsr', 'ssr'):
    assert f'[distill_digits] {stage}: step 2/2' in log, log
  from imagen_video_jax import export

  fast, full = export.load_cascade(str(out)), export.load_cascade(str(out), students=False)
  for s, t in zip(fast.stages, full.stages):
    assert s.distilled['phase'] == 'halving' and s.sampler.steps == 4, s.name
    assert t.distilled is None and t.sampler.steps == 8, t.name
  students = json.loads((out / 'adherence.json').read_text())
  teachers = json.loads((out / 'adherence_teachers.json').read_text())
  assert [students['samplers'][n]['steps'] for n in ('base', 'tsr', 'ssr')] == [4, 4, 4]
  assert [teachers['samplers'][n]['steps'] for n in ('base', 'tsr', 'ssr')] == [8, 8, 8]
  # Timed in the same run: students at 4 steps per stage, teachers at 8.
  for name, steps in (('students', 4), ('teachers', 8)):
    rows = (out / f'speed_{name}.txt').read_text().splitlines()
    steady = [json.loads(r) for r in rows if r.startswith('{') and '"steady"' in r]
    assert steady and steady[0]['steps'] == {'base': steps, 'tsr': steps, 'ssr': steps}, rows
    assert rows[-1].startswith(f'| {name} |'), rows[-1]
