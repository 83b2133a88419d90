#!/usr/bin/env python3
r"""Runs a training job on every worker of a Cloud TPU VM pod slice.

  python launch/tpu_pod.py --name=ivj-base --zone=us-east5-a --accelerator=v5p-512 \
      --project=MY_PROJECT -- --config=configs/imagen_video.py:stage=base \
      --workdir=gs://BUCKET/imagen_video/base --config.data.dir=gs://BUCKET/videos
  python launch/tpu_pod.py ... --dry-run      # prints the exact commands, runs nothing

Steps: (1) reuse the TPU if `gcloud compute tpus tpu-vm describe` finds it, else
`create` it; (2) pack this checkout (git-tracked and untracked-but-not-ignored files),
`scp` it to every worker and install it (`pip install jax[tpu]` + the package); (3) start
`python -m imagen_video_jax.train --distributed ARGS` on all workers at once over
`ssh --worker=all`, under nohup, logging to ~/ivj_train.log on each worker. Every worker
runs the same command; jax.distributed finds the pod by itself. Re-running the launcher
resumes the job from --workdir (use a gs:// bucket: every worker must see it).
Only the standard library: runs wherever gcloud does.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR = 'imagen_video_jax'
ARCHIVE = '/tmp/ivj_code.tar.gz'


def parse_args(argv):
  p = argparse.ArgumentParser(
    description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument('--name', required=True, help='TPU VM name')
  p.add_argument('--zone', required=True, help='e.g. us-east5-a')
  p.add_argument('--accelerator', default='v5p-512', help='accelerator type, e.g. v5p-512')
  p.add_argument('--version', default='v2-alpha-tpuv5', help='TPU VM runtime version')
  p.add_argument('--project', default=None, help='GCP project (default: gcloud config)')
  p.add_argument('--spot', action='store_true', help='create a Spot TPU')
  p.add_argument('--no-install', action='store_true', help='skip pip install on workers')
  p.add_argument('--dry-run', action='store_true', help='print the commands, run nothing')
  p.add_argument(
    'train_args',
    nargs=argparse.REMAINDER,
    help='after --: arguments for python -m imagen_video_jax.train',
  )
  a = p.parse_args(argv)
  if a.train_args and a.train_args[0] == '--':
    a.train_args = a.train_args[1:]
  if not any(x.startswith('--config') for x in a.train_args) or not any(
    x.startswith('--workdir') for x in a.train_args
  ):
    p.error('pass the train arguments after --: at least --config=... --workdir=...')
  return a


def _common(a) -> list[str]:
  out = [f'--zone={a.zone}']
  if a.project:
    out.append(f'--project={a.project}')
  return out


def commands(a) -> dict[str, list[str]]:
  """The gcloud/tar commands, by step: describe, create, pack, copy, install, run."""
  tpu = ['gcloud', 'compute', 'tpus', 'tpu-vm']
  create = tpu + [
    'create',
    a.name,
    *_common(a),
    f'--accelerator-type={a.accelerator}',
    f'--version={a.version}',
  ]
  if a.spot:
    create.append('--spot')
  ssh = lambda cmd: tpu + ['ssh', a.name, *_common(a), '--worker=all', f'--command={cmd}']
  install = (
    f'mkdir -p ~/{REMOTE_DIR} && tar xzf ~/{os.path.basename(ARCHIVE)} -C '
    f'~/{REMOTE_DIR} && cd ~/{REMOTE_DIR} && pip install -q -U "jax[tpu]" '
    '-r requirements/requirements.txt && pip install -q --no-deps -e .'
  )
  train = ' '.join(
    shlex.quote(x)
    for x in ['python3', '-m', 'imagen_video_jax.train', '--distributed', *a.train_args]
  )
  run = (
    f'cd ~/{REMOTE_DIR} && nohup {train} > ~/ivj_train.log 2>&1 < /dev/null & '
    'echo started on $(hostname)'
  )
  # git ls-files: tracked + untracked-not-ignored (no .venv, no outputs)
  pack = [
    'bash',
    '-c',
    f'cd {shlex.quote(ROOT)} && git ls-files -co --exclude-standard -z '
    f'| xargs -0 tar czf {ARCHIVE}',
  ]
  out = {
    'describe': tpu + ['describe', a.name, *_common(a)],
    'create': create,
    'pack': pack,
    'copy': tpu + ['scp', ARCHIVE, f'{a.name}:~/', *_common(a), '--worker=all'],
    'install': ssh(install),
    'run': ssh(run),
  }
  if a.no_install:
    del out['install']
  return out


def main(argv=None) -> int:
  a = parse_args(sys.argv[1:] if argv is None else argv)
  cmds = commands(a)
  show = lambda c: ' '.join(shlex.quote(x) for x in c)
  if a.dry_run:
    print(f'# 1. reuse the TPU if this succeeds:\n{show(cmds["describe"])}')
    print(f'# ... otherwise create it:\n{show(cmds["create"])}')
    print(
      f'# 2. copy the code to every worker and install it:\n{show(cmds["pack"])}\n'
      f'{show(cmds["copy"])}'
    )
    if 'install' in cmds:
      print(show(cmds['install']))
    print(f'# 3. run the job on all workers:\n{show(cmds["run"])}')
    return 0
  exists = subprocess.run(cmds['describe'], capture_output=True).returncode == 0
  print(f'TPU {a.name}: ' + ('exists, reusing it' if exists else 'creating it'), flush=True)
  steps = (
    ([] if exists else ['create'])
    + ['pack', 'copy']
    + (['install'] if 'install' in cmds else [])
    + ['run']
  )
  for step in steps:
    print(f'+ {show(cmds[step])}', flush=True)
    subprocess.run(cmds[step], check=True)
  print(
    f'Logs: gcloud compute tpus tpu-vm ssh {a.name} --zone={a.zone} --worker=0 '
    '--command="tail -f ~/ivj_train.log"'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
