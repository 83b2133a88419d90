"""What the training-job commands share (`train`, `distill`): no flags of their own."""

import os

from absl import flags, logging


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


def run_job(
  config,
  workdir: str,
  *,
  data_root: str | None = None,
  distributed: bool = False,
  data_only: bool = False,
  prog: str = 'train',
) -> None:
  """What `train` (and `distill`) run: the job, its known failures one line, exit 1."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # keep orbax/grain INFO chatter out
  if data_root:
    set_data_root(config, data_root)
  if distributed:
    from imagen_video_jax import parallel

    parallel.initialize_distributed()
  from imagen_video_jax import training

  try:
    if data_only:
      from imagen_video_jax.training import loop

      if config.data.world != 'digits':
        raise training.ConfigError(
          '--data_only makes the Moving Digits world; this config '
          f'reads data.dir={config.data.dir!r}'
        )
      print(f'Moving Digits world: {loop.prepare_data(config, workdir)}')
      return
    training.train_and_evaluate(config, workdir)
  except (
    training.ConfigError,
    training.ConfigMismatchError,
    training.NonFiniteError,
    training.NonFiniteCheckpointError,
    training.DataError,
    training.CheckpointError,
    FileNotFoundError,
  ) as e:
    raise SystemExit(f'{prog}: {e}') from None


def configure_distill(config, teacher: str, phase: str, student_steps: int | None) -> None:
  """Sets `config` up as a distillation phase's student (in place)."""
  from imagen_video_jax.cli import _checks as checks

  if not teacher or not os.path.exists(teacher):
    raise checks.Refusal(f'--teacher={teacher!r}: no such cascade, stage or workdir')
  config.distill.phase = phase
  config.distill.teacher = os.path.abspath(teacher)
  config.init_from = os.path.abspath(teacher)  # the student starts as its teacher
  config.model.guidance_embed = True
  if student_steps is not None:
    if student_steps < 1:
      raise checks.Refusal(f'--student_steps must be >= 1; got {student_steps}')
    config.distill.student_steps = student_steps
  if phase == 'halving':
    config.sample.steps = int(config.distill.student_steps)
