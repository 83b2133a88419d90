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

from absl import app, flags, logging
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


def set_data_root(config, root: str) -> None:
  """config.data.dir = ROOT/<world name> (refused with one line unless a digits run
  without its own data.dir)."""
  from imagen_video_jax.cli import _checks as checks
  from imagen_video_jax.data import prepare

  if config.data.world != 'digits':
    raise checks.Refusal(
      f'--data_root is for Moving Digits runs; this config reads data.dir={config.data.dir!r}'
    )
  if config.data.dir:
    raise checks.Refusal(
      f'give --data_root or --config.data.dir, not both (data.dir={config.data.dir!r})'
    )
  config.data.dir = os.path.join(os.path.abspath(root), prepare.digits_world_name(config.data))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError('--config and --workdir are required.')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # keep orbax/grain INFO chatter out
  if _DATA_ROOT.value:
    set_data_root(_CONFIG.value, _DATA_ROOT.value)
  if _DISTRIBUTED.value:
    from imagen_video_jax import parallel

    parallel.initialize_distributed()
  from imagen_video_jax import training

  try:
    if _DATA_ONLY.value:
      from imagen_video_jax.training import loop

      if _CONFIG.value.data.world != 'digits':
        raise training.ConfigError(
          '--data_only makes the Moving Digits world; this config '
          f'reads data.dir={_CONFIG.value.data.dir!r}'
        )
      print(f'Moving Digits world: {loop.prepare_data(_CONFIG.value, _WORKDIR.value)}')
      return
    training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (
    training.ConfigError,
    training.ConfigMismatchError,
    training.NonFiniteError,
    training.NonFiniteCheckpointError,
    training.DataError,
    training.CheckpointError,
    FileNotFoundError,
  ) as e:
    raise SystemExit(f'train: {e}') from None


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  app.run(main)
