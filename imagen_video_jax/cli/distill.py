r"""Distils one stage for few-step sampling; re-running the same command resumes it.

  # 1. Guidance: a student that reads the guidance weight w, one forward instead of two.
  python -m imagen_video_jax.distill --config=configs/digits.py:stage=base \
      --phase=guidance --teacher=checkpoints/digits --workdir=runs/distill/base_w
  # 2. Halving: each phase a student of half its teacher's steps (32 -> 16 -> 8).
  python -m imagen_video_jax.distill --config=configs/digits.py:stage=base \
      --phase=halving --student_steps=16 --teacher=runs/distill/base_w \
      --workdir=runs/distill/base_16
  python -m imagen_video_jax.distill --config=configs/digits.py:stage=base \
      --phase=halving --student_steps=8 --teacher=runs/distill/base_16 \
      --workdir=runs/distill/base_8

A distillation job is a training job (`train`): the same checkpoints, resuming, SIGTERM,
time budget (--config.stop_after_secs), TensorBoard and sample videos; its loss is the
phase's (imagen_video_jax/diffusion/distill.py) against the teacher, and the student
starts from the teacher's weights (the guidance embedding fresh, so it starts as the
teacher). --teacher: an exported cascade or stage, or a training (or distillation)
workdir, whose EMA weights are read. Guidance weights are drawn from
[--config.distill.w_min, --config.distill.w_max]. Export the student with `export_cascade`
like any run; its stage.json records that it reads the guidance weight, and its sampler
takes the student's steps.
"""

import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'The stage config, e.g. configs/digits.py:stage=base.', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, "The student's checkpoints and logs go here.")
_TEACHER = flags.DEFINE_string(
  'teacher', None, 'The teacher: an exported cascade or stage, or a training workdir.'
)
_PHASE = flags.DEFINE_enum(
  'phase',
  None,
  ['guidance', 'halving'],
  'guidance: fold classifier-free guidance into a student that reads w; halving: a '
  "student of --student_steps DDIM steps learns two of its teacher's steps in one.",
)
_STUDENT_STEPS = flags.DEFINE_integer(
  'student_steps',
  None,
  "halving: the student's sampling steps (its teacher takes twice as many); default: "
  "the config's distill.student_steps.",
)
_DATA_ROOT = flags.DEFINE_string(
  'data_root', None, 'As for train: the Moving Digits world in DATA_ROOT/digits-<settings>.'
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None or not _WORKDIR.value or not _PHASE.value or not _TEACHER.value:
    raise app.UsageError('--config, --workdir, --phase and --teacher are required.')
  from imagen_video_jax.cli import _checks as checks
  from imagen_video_jax.cli._jobs import configure_distill, run_job

  try:
    configure_distill(_CONFIG.value, _TEACHER.value, _PHASE.value, _STUDENT_STEPS.value)
  except checks.Refusal as e:
    raise SystemExit(f'distill: {e}') from None
  run_job(_CONFIG.value, _WORKDIR.value, data_root=_DATA_ROOT.value, prog='distill')


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  app.run(main)
