r"""Export trained stages as one sampling cascade (EMA weights by default, safetensors + JSON).

    python -m imagen_video_jax.export_cascade --output=checkpoints/digits \
        --run=runs/digits/base --run=runs/digits/tsr --run=runs/digits/ssr

--student=RUN adds a distilled student of one of the stages (sampled by default;
`sample --teacher` samples the teachers). --cascade=DIR adds students to a copy of an
exported cascade instead (e.g. the shipped one, whose training runs are not at hand):

    python -m imagen_video_jax.export_cascade --cascade=checkpoints/digits \
        --student=runs/distill/base_8 --student=runs/distill/tsr_8 \
        --student=runs/distill/ssr_8 --output=runs/distill/cascade

A student samples with its run's `sample.sampler` (DDIM unless the run set another);
--student_sampler=STAGE:SAMPLER sets it at export, for a --student or for a student the
--cascade already holds (e.g. `--student_sampler=base:stepback`, the stochastic sampler
few-step students often do better with).

Runs are given base first, then each SR stage
in sampling order; each is a training
workdir of `python -m imagen_video_jax.train`, read at its latest checkpoint. Runs trained
on cached T5 embeddings (`text.source='cache'`, the paper configs' default) also need
`--t5=DIR`: the converted T5 that `encode_text` made the cache with (it is checked
against the cache and shipped as the cascade's text encoder).

The cascade records the words of its training captions when they come from a closed set
(Moving Digits runs: the world's grammar), and sampling reports prompts with other words.
--vocabulary=FILE records the words of FILE (captions or words, split on whitespace)
instead.
"""

import os

from absl import app, flags, logging

from imagen_video_jax import params_io
from imagen_video_jax.cli import _checks as checks

_RUN = flags.DEFINE_multi_string('run', None, 'A training workdir; repeat, base first.')
_STUDENT = flags.DEFINE_multi_string(
  'student',
  None,
  'A distillation workdir (python -m imagen_video_jax.distill) of one of the --run stages: '
  'stored beside it, and sampled instead of it unless sampling asks for --teacher.',
)
_CASCADE = flags.DEFINE_string(
  'cascade',
  None,
  'An exported cascade to copy to --output with the --student runs added (instead of --run).',
)
_STUDENT_DTYPE = flags.DEFINE_enum(
  'student_dtype',
  'float32',
  list(params_io.STORAGE_DTYPES),
  'How the --student parameters are stored: float16 halves their bytes (loading gives '
  'float32; the stages themselves are always float32).',
)
_STUDENT_SAMPLER = flags.DEFINE_multi_string(
  'student_sampler',
  None,
  "STAGE:SAMPLER, e.g. ssr:stepback: the default sampler of that stage's student (ddim, "
  'ancestral or stepback; repeat per stage), a --student or one the --cascade holds.',
)
_OUTPUT = flags.DEFINE_string('output', None, 'The cascade directory to write.')
_T5 = flags.DEFINE_string(
  't5',
  None,
  "Runs trained on cached embeddings (text.source='cache'): "
  'the converted T5 that made the cache, shipped as the text encoder.',
)

_WEIGHTS = flags.DEFINE_enum(
  'weights',
  'ema',
  ['ema', 'trained'],
  "ema: each run's EMA weights (what sampling wants); trained: the optimiser's own, e.g. "
  'of a run that has just moved to new data, before its EMA has caught up.',
)
_VOCABULARY = flags.DEFINE_string(
  'vocabulary',
  None,
  'A UTF-8 text file of the training captions (or their words): every word in it is '
  'recorded as what the cascade knows (default: the Moving Digits words for digits runs).',
)


def read_vocabulary(path: str) -> list[str]:
  from imagen_video_jax.export import caption_words

  try:
    with open(path, encoding='utf-8') as f:
      words = caption_words(f.read().splitlines())
  except (OSError, UnicodeDecodeError) as e:
    raise checks.Refusal(f'--vocabulary={path}: cannot read it as UTF-8 text ({e})') from None
  if not words:
    raise checks.Refusal(f'--vocabulary={path} holds no words')
  return words


def read_student_samplers(values: list[str]) -> dict[str, str]:
  """--student_sampler's STAGE:SAMPLER values as {stage: sampler}, each stage once."""
  from imagen_video_jax.diffusion.samplers import SAMPLERS

  out: dict[str, str] = {}
  for v in values:
    stage, sep, sampler = v.partition(':')
    if not sep or not stage or sampler not in SAMPLERS:
      raise app.UsageError(
        f'--student_sampler={v}: give STAGE:SAMPLER, the sampler one of {", ".join(SAMPLERS)} '
        '(e.g. --student_sampler=ssr:stepback)'
      )
    if stage in out:
      raise app.UsageError(f'--student_sampler names the stage {stage!r} twice: give it once')
    out[stage] = sampler
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _CASCADE.value and _RUN.value:
    raise app.UsageError('give --cascade (add students to an export) or --run, not both')
  if _CASCADE.value and (_T5.value or _VOCABULARY.value):
    raise app.UsageError(
      '--cascade keeps the text encoder and vocabulary it has: drop --t5/--vocabulary'
    )
  if _CASCADE.value and not (_STUDENT.value or _STUDENT_SAMPLER.value):
    raise app.UsageError(
      '--cascade needs at least one --student (a distillation workdir) or --student_sampler'
    )
  student_samplers = read_student_samplers(_STUDENT_SAMPLER.value or [])
  if not (_RUN.value or _CASCADE.value) or not _OUTPUT.value:
    raise app.UsageError('give --output and at least one --run (base first)')
  # Before anything is read: the output must be a new or empty folder we can write.
  if os.path.exists(_OUTPUT.value) and not os.path.isdir(_OUTPUT.value):
    raise checks.Refusal(f'--output={_OUTPUT.value} is a file, not a directory')
  checks.check_writable_parent('output', os.path.join(_OUTPUT.value, 'cascade.json'))
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # keep orbax's INFO chatter out
  vocabulary = read_vocabulary(_VOCABULARY.value) if _VOCABULARY.value else None
  from imagen_video_jax import export

  try:
    if _CASCADE.value:
      path = export.add_students(
        _CASCADE.value,
        _STUDENT.value,
        _OUTPUT.value,
        weights=_WEIGHTS.value,
        student_dtype=_STUDENT_DTYPE.value,
        student_samplers=student_samplers,
      )
    else:
      path = export.export_training_runs(
        _RUN.value,
        _OUTPUT.value,
        t5_dir=_T5.value,
        vocabulary=vocabulary,
        weights=_WEIGHTS.value,
        student_runs=_STUDENT.value,
        student_dtype=_STUDENT_DTYPE.value,
        student_samplers=student_samplers,
      )
    pipe = export.load_cascade(path)  # proves the export loads
  except (export.ExportError, ValueError, FileNotFoundError) as e:
    raise checks.Refusal(str(e)) from None
  stages = ', '.join(
    f'{s.name} {s.spec.frames}x{s.spec.height}x{s.spec.width}@{s.fps:g}fps' for s in pipe.stages
  )
  students = [f'{s.name} ({s.sampler.sampler})' for s in pipe.stages if s.distilled]
  with_students = f' (students: {", ".join(students)})' if students else ''
  print(f'Exported {stages}{with_students} to {path}')


if __name__ == '__main__':
  app.run(main)
