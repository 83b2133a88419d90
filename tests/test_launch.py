"""launch/: the TPU pod launcher's and the SLURM script's --dry-run commands."""
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ['--config=configs/imagen_video.py:stage=base', '--workdir=gs://bucket/base']


def run(cmd, env=None):
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, **(env or {})))
  assert out.returncode == 0, out.stdout + out.stderr
  return [l for l in out.stdout.splitlines() if l and not l.startswith('#')]


def test_tpu_pod_dry_run():
  lines = run([sys.executable, 'launch/tpu_pod.py', '--name=ivj', '--zone=us-east5-a',
               '--accelerator=v5p-256', '--project=proj', '--spot', '--dry-run', '--', *TRAIN])
  cmds = [shlex.split(l) for l in lines]
  describe, create, pack, copy, install, start = cmds
  assert describe[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', 'ivj']
  assert create[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'ivj']
  for flag in ('--zone=us-east5-a', '--project=proj', '--accelerator-type=v5p-256',
               '--version=v2-alpha-tpuv5', '--spot'):
    assert flag in create
  assert 'git ls-files' in pack[-1] and 'tar czf' in pack[-1]
  assert copy[4] == 'scp' and '--worker=all' in copy and copy[-4].startswith('ivj:')
  for c in (install, start):
    assert c[4:6] == ['ssh', 'ivj'] and '--worker=all' in c
  assert 'pip install' in install[-1] and 'jax[tpu]' in install[-1]
  assert start[-1].startswith('--command=')
  remote = shlex.split(start[-1][len('--command='):].split('nohup ')[1].split(' >')[0])
  assert remote == ['python3', '-m', 'imagen_video_jax.train', '--distributed', *TRAIN]


def test_tpu_pod_needs_train_args():
  out = subprocess.run([sys.executable, 'launch/tpu_pod.py', '--name=x', '--zone=z',
                        '--dry-run'], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert out.returncode == 2 and '--config' in out.stderr


def test_slurm_submit_dry_run():
  env = {k: '' for k in ('SLURM_JOB_ID',)}
  (line,) = run(['bash', 'launch/slurm_gpu.sh', '--dry-run', '--nodes=4', '--gpus-per-node=8',
                 '--partition=gpu', '--time=48:00:00', '--', *TRAIN], env=env)
  cmd = shlex.split(line)
  assert cmd[0] == 'sbatch'
  for flag in ('--nodes=4', '--ntasks-per-node=1', '--gpus-per-node=8', '--partition=gpu',
               '--time=48:00:00'):
    assert flag in cmd
  script = next(c for c in cmd if c.endswith('slurm_gpu.sh'))
  assert cmd[cmd.index(script) + 1:] == ['--venv=.venv', '--', *TRAIN]


def test_slurm_in_job_dry_run_runs_srun_with_ivj_env():
  env = dict(SLURM_JOB_ID='42', SLURM_JOB_NODELIST='gpu-a,gpu-b,gpu-c', SLURM_NNODES='3',
             SLURM_NTASKS='3', SLURM_GPUS_PER_NODE='8', IVJ_PORT='23456',
             PATH='/usr/bin:/bin')  # no scontrol: the node list is read as a comma list
  (line,) = run(['bash', 'launch/slurm_gpu.sh', '--dry-run', '--', *TRAIN], env=env)
  cmd = shlex.split(line)
  assert cmd[0] == 'srun'
  for flag in ('--nodes=3', '--ntasks=3', '--ntasks-per-node=1', '--gpus-per-node=8'):
    assert flag in cmd
  assert cmd[-3:-1] == ['bash', '-c']
  task = cmd[-1]
  assert ('export IVJ_COORDINATOR=gpu-a:23456 IVJ_NUM_PROCESSES=3 '
          'IVJ_PROCESS_ID=$SLURM_PROCID;') in task
  assert shlex.split(task.split('exec ')[1])[1:] == [
      '-m', 'imagen_video_jax.train', '--distributed', *TRAIN]


def test_slurm_task_env_is_what_initialize_distributed_reads():
  """The per-task environment the script exports makes parallel plan an explicit start."""
  from imagen_video_jax import parallel
  p = parallel.plan_distributed(env={'IVJ_COORDINATOR': 'gpu-a:23456',
                                     'IVJ_NUM_PROCESSES': '3', 'IVJ_PROCESS_ID': '1',
                                     'SLURM_JOB_ID': '42', 'SLURM_NTASKS': '3'})
  assert p.mode == 'explicit' and p.kwargs == dict(
      coordinator_address='gpu-a:23456', num_processes=3, process_id=1)
