r"""Trains one stage of a cascade; re-running the same command resumes it.

  python -m imagen_video_jax.train --config=configs/digits.py:stage=base --workdir=runs/base
  python -m imagen_video_jax.train --config=configs/digits.py:stage=base,tiny=True \
      --workdir=/tmp/tiny --config.num_steps=20 --config.log_every=5

The Moving Digits world (configs/digits.py) is made inside the workdir
(<workdir>/data/digits-...) unless --config.data.dir=DIR names it, or --data_root=DIR
names the folder it goes in (DIR/digits-...): the stages of one cascade share one world
by passing the same --data_root. --config.x=y overrides any field. SIGTERM (or a multi-host preemption notice) saves at
the next step boundary and exits 0. A workdir holding a run with a different config,
a bad config value or too many non-finite steps in a row exit 1 with one line saying why.
TensorBoard: `tensorboard --logdir=<workdir>/tensorboard`.
"""

import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'A config file, e.g. configs/digits.py:stage=base.', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Checkpoints, TensorBoard logs and samples go here.'
)
_DATA_ONLY = flags.DEFINE_bool(
  'data_only',
  False,
  'Only make the Moving Digits world and its vocabulary '
  '(what the stages of one cascade share), then exit.',
)
_DATA_ROOT = flags.DEFINE_string(
  'data_root',
  None,
  'Moving Digits runs: make (or reuse) the world in DATA_ROOT/digits-<settings> instead '
  'of <workdir>/data/; give several stages the same DATA_ROOT to share one world.',
)
_DISTRIBUTED = flags.DEFINE_bool(
  'distributed',
  False,
  'Join a multi-host job first (TPU pods, SLURM, or '
  'IVJ_COORDINATOR/IVJ_NUM_PROCESSES/IVJ_PROCESS_ID; see parallel.py).',
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError('--config and --workdir are required.')
  from imagen_video_jax.cli._jobs import run_job

  run_job(
    _CONFIG.value,
    _WORKDIR.value,
    data_root=_DATA_ROOT.value,
    distributed=_DISTRIBUTED.value,
    data_only=_DATA_ONLY.value,
  )


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  app.run(main)
