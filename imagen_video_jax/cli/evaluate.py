r"""Evaluate videos: prompt adherence (the digits judge), FVD and the judge's FD.

    python -m imagen_video_jax.evaluate --mode=adherence --checkpoints=checkpoints/digits \
        --num_samples=100 [--output=outputs/adherence.json] [--stages=1] [--steps=16]
    python -m imagen_video_jax.evaluate --mode=fvd --real=data/digits --generated=outputs/gen
    python -m imagen_video_jax.evaluate --stages=1 --guidance=5 --sampler=ancestral  # base alone
    python -m imagen_video_jax.evaluate --checkpoints=DIR --given=animate  # from real first frames
    python -m imagen_video_jax.evaluate --mode=judge_accuracy     # the shipped judge, fresh clips
    python -m imagen_video_jax.evaluate --mode=train_judge --judge=outputs/judge
    python -m imagen_video_jax.evaluate --mode=train_judge --overwrite  # replace checkpoints/judge

--real/--generated: a folder of .mp4/.gif files or of ArrayRecord shards, a glob or a file.
"""

from absl import app, flags

_MODE = flags.DEFINE_enum(
  'mode', 'adherence', ['adherence', 'fvd', 'judge_accuracy', 'train_judge'], 'What to evaluate.'
)
_CHECKPOINTS = flags.DEFINE_string(
  'checkpoints', None, 'Exported cascade (adherence); default the shipped checkpoints/digits.'
)
_NUM_SAMPLES = flags.DEFINE_integer(
  'num_samples', 100, 'adherence: samples per group (training, held-out).'
)
_STAGES = flags.DEFINE_integer(
  'stages',
  0,
  'adherence: score the first N stages only (1: the base '
  'alone; 0: all). Every stage run is scored either way.',
)
_STEPS = flags.DEFINE_integer(
  'steps', 0, "adherence: sampling steps for every stage (0: each stage's own)."
)
_GUIDANCE = flags.DEFINE_float(
  'guidance', None, "adherence: guidance weight for every stage (default: each stage's own)."
)
_SAMPLER = flags.DEFINE_enum(
  'sampler',
  None,
  ['ddim', 'ancestral', 'stepback'],
  "adherence: sampler for every stage (default: each stage's own).",
)
_TEACHER = flags.DEFINE_bool(
  'teacher',
  False,
  "adherence: score each stage's teacher even where the cascade holds a distilled student.",
)
_GIVEN = flags.DEFINE_enum(
  'given',
  None,
  ['animate', 'extend', 'interpolate'],
  'adherence: sample from given frames (a cascade trained with frame conditioning): the '
  "prompts are real clips' captions and each sample gets its clip's frames (animate: the "
  'first; extend: the first --num_given; interpolate: the first and last, or every other).',
)
_NUM_GIVEN = flags.DEFINE_integer(
  'num_given',
  None,
  "adherence with --given: frames given (default 1, half the base's frames, 2).",
)
_FPS = flags.DEFINE_float(
  'fps',
  None,
  'adherence: sample at this frame rate (a cascade trained with fps conditioning); the '
  "report's speed is the judge's pixels per frame.",
)
_LENGTH_FACTOR = flags.DEFINE_integer(
  'length_factor',
  None,
  "adherence: score videos this many times the cascade's length instead (training "
  "prompts, --num_samples of them): the judge reads each piece of the cascade's length.",
)
_EXTEND = flags.DEFINE_enum(
  'extend',
  'reconstruction',
  ['reconstruction', 'replacement'],
  'adherence with --length_factor: how each new window is held to the video so far.',
)
_EXTEND_WEIGHT = flags.DEFINE_float(
  'extend_weight', 2.0, 'adherence with --length_factor: reconstruction guidance weight.'
)
_OVERLAP = flags.DEFINE_integer(
  'overlap', 4, 'adherence with --length_factor: base frames each window shares.'
)
_HELD_OUT = flags.DEFINE_string(
  'held_out',
  None,
  "Held-out combinations, e.g. 0:red:left,3:green:up (default: the world's default list).",
)
_REAL = flags.DEFINE_string('real', None, 'fvd: the reference set.')
_GENERATED = flags.DEFINE_string('generated', None, 'fvd: the set to score.')
_MAX_VIDEOS = flags.DEFINE_integer(
  'max_videos', None, 'fvd: use at most this many clips of each set.'
)
_FRAMES = flags.DEFINE_integer('frames', 16, 'fvd: clips are cut to their first N frames (>= 9).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Clips (fvd) or prompts (adherence) per batch.')
_JUDGE = flags.DEFINE_string(
  'judge', None, 'Judge directory; default the shipped checkpoints/judge.'
)
_OVERWRITE = flags.DEFINE_bool(
  'overwrite', False, 'train_judge: replace a judge already in --judge.'
)
_JUDGE_STEPS = flags.DEFINE_integer(
  'judge_steps', None, 'train_judge: optimiser steps (default: JudgeConfig().steps).'
)
_JUDGE_FRAMES = flags.DEFINE_integer(
  'judge_frames', 20_000, 'train_judge: still frames to train on.'
)
_NUM_CLIPS = flags.DEFINE_integer(
  'num_clips',
  500,
  'judge_accuracy, train_judge: fresh clips per group '
  '(training and held-out combinations) the accuracy is measured on.',
)
# Default seeds of the fresh clips a judge's accuracy is measured on: train_judge's are those
# of the report the shipped judge carries; judge_accuracy's are other clips (and --seed moves).
TRAIN_JUDGE_CLIP_SEED = 12_345
JUDGE_ACCURACY_CLIP_SEED = 54_321
_SEED = flags.DEFINE_integer(
  'seed',
  0,
  'Seed of prompts and samples (judge_accuracy: of the clips, '
  f'{JUDGE_ACCURACY_CLIP_SEED} + seed, unless --clip_seed).',
)
_CLIP_SEED = flags.DEFINE_integer(
  'clip_seed',
  None,
  'judge_accuracy, train_judge: seed of the fresh clips the accuracy '
  f'is measured on (default: {TRAIN_JUDGE_CLIP_SEED} in train_judge, '
  f'{JUDGE_ACCURACY_CLIP_SEED} + --seed in judge_accuracy).',
)
_JUDGE_SEED = flags.DEFINE_integer(
  'judge_seed',
  None,
  "train_judge: seed of the judge's initialisation and of its own "
  'training frames (default: JudgeConfig().seed).',
)
_JUDGE_BOUNCE = flags.DEFINE_bool(
  'judge_bounce',
  False,
  'train_judge: judge the bouncing Moving Digits world v1 (direction read by fitting '
  'the bounce) instead of world v2 (the default: direction read as where the digit goes).',
)
_OUTPUT = flags.DEFINE_string('output', None, 'Also write the report here as JSON.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Progress bars.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from imagen_video_jax.cli import _checks

  _checks.quiet_logs()  # library INFO logs only with --verbosity
  import dataclasses
  import os
  from imagen_video_jax.data import digits
  from imagen_video_jax.evaluation import fvd, judge as J, metrics

  try:
    if (
      _GIVEN.value or _NUM_GIVEN.value is not None or _FPS.value is not None
    ) and _MODE.value != 'adherence':
      raise ValueError('--given, --num_given and --fps belong to --mode=adherence')
    if _NUM_GIVEN.value is not None and not _GIVEN.value:
      raise ValueError('--num_given needs --given=animate|extend|interpolate')
    held = digits.parse_held_out(_HELD_OUT.value) if _HELD_OUT.value is not None else None
    world = digits.DigitsConfig(**({} if held is None else {'held_out': held}))
    if _NUM_CLIPS.value < 1:
      raise ValueError(f'--num_clips must be >= 1; got {_NUM_CLIPS.value}')
    if _MODE.value == 'train_judge':
      directory = _JUDGE.value or J.DEFAULT_DIR
      # Refused before training: a forgotten --judge must not cost the shipped judge.
      existing = [
        f for f in (J.CONFIG_FILE, J.PARAMS_FILE) if os.path.exists(os.path.join(directory, f))
      ]
      if existing and not _OVERWRITE.value:
        raise ValueError(
          f'{directory} already holds a judge ({", ".join(existing)}); pass '
          '--judge=<a new directory>, or --overwrite to replace it'
        )
      config = J.JudgeConfig(bounce=_JUDGE_BOUNCE.value)
      if _JUDGE_STEPS.value is not None:
        config = dataclasses.replace(config, steps=_JUDGE_STEPS.value)
      if _JUDGE_SEED.value is not None:
        config = dataclasses.replace(config, seed=_JUDGE_SEED.value)
      jd = J.train_judge(config, num_frames=_JUDGE_FRAMES.value, progress=_PROGRESS.value)
      n = _NUM_CLIPS.value
      seed = TRAIN_JUDGE_CLIP_SEED if _CLIP_SEED.value is None else _CLIP_SEED.value
      jd.report = {
        'clean': J.accuracy(jd, n, seed),
        'clips_per_group': n,
        'degraded': J.accuracy(jd, n, seed, True),
        'clip_seed': seed,
      }
      report = jd.report
      jd.save(directory)
    elif _MODE.value == 'judge_accuracy':
      jd = J.load_judge(_JUDGE.value)
      seed = (
        JUDGE_ACCURACY_CLIP_SEED + _SEED.value if _CLIP_SEED.value is None else _CLIP_SEED.value
      )
      report = {
        k: J.accuracy(jd, _NUM_CLIPS.value, seed, degrade=k == 'degraded')
        for k in ('clean', 'degraded')
      }
    elif _MODE.value == 'fvd':
      if not _REAL.value or not _GENERATED.value:
        raise ValueError('--mode=fvd needs --real and --generated')
      sets = [fvd.load_videos(s, _MAX_VIDEOS.value) for s in (_REAL.value, _GENERATED.value)]
      cfg = fvd.FVDConfig(
        frames=_FRAMES.value, batch_size=_BATCH_SIZE.value, progress=_PROGRESS.value
      )
      jd = J.load_judge(_JUDGE.value)
      report = {
        'fvd': metrics.frechet_distance(*(fvd.i3d_features(s, cfg) for s in sets)),
        'fd_judge': metrics.frechet_distance(
          *(jd.features([v[: _FRAMES.value] for v in s]) for s in sets)
        ),
        'num_real': len(sets[0]),
        'num_generated': len(sets[1]),
      }
    else:
      if _NUM_SAMPLES.value < 2:
        raise ValueError(
          f"--num_samples={_NUM_SAMPLES.value}: give at least 2 (the judge's Fréchet "
          'distance compares the features of at least two samples per group)'
        )
      from imagen_video_jax import export, shipped  # default: the shipped digits cascade
      from imagen_video_jax.cascade import CascadePipeline

      pipe = export.load_cascade(
        _CHECKPOINTS.value or shipped.pretrained_dir('digits'), students=not _TEACHER.value
      )
      if not 0 <= _STAGES.value <= len(pipe.stages) or _STEPS.value < 0:
        raise ValueError(
          f'--stages={_STAGES.value} --steps={_STEPS.value}: the cascade has '
          f'{len(pipe.stages)} stages; use 1..{len(pipe.stages)} (0: all) and '
          "steps >= 1 (0: each stage's own)"
        )
      if _STAGES.value:
        pipe = CascadePipeline(
          pipe.stages[: _STAGES.value],
          pipe.text_encoder,
          vocabulary=pipe.vocabulary,
          world=pipe.world,
        )
      from imagen_video_jax.diffusion.samplers import SamplerConfig

      overrides = {
        k: v
        for k, v in (
          ('steps', _STEPS.value or None),
          ('guidance', _GUIDANCE.value),
          ('sampler', _SAMPLER.value),
        )
        if v is not None
      }
      for k, v in overrides.items():
        try:
          SamplerConfig(**{k: v})  # the sampler's own validation, before sampling
        except ValueError as e:
          raise ValueError(f'--{k}={v}: {e}') from None
      samplers = (
        {s.name: dataclasses.replace(s.sampler, **overrides) for s in pipe.stages}
        if overrides
        else None
      )
      if _LENGTH_FACTOR.value is not None:
        from imagen_video_jax.diffusion.extend import ExtendConfig

        if not 2 <= _LENGTH_FACTOR.value <= 16:
          raise ValueError(f'--length_factor must be 2 to 16; got {_LENGTH_FACTOR.value}')
        ext = ExtendConfig(_EXTEND.value, _EXTEND_WEIGHT.value, _OVERLAP.value)
        pipe.windows(pipe.stages[0].spec.frames * _LENGTH_FACTOR.value, ext.overlap)
        report = metrics.evaluate_long_videos(
          pipe,
          J.load_judge(_JUDGE.value),
          length_factor=_LENGTH_FACTOR.value,
          extend=ext,
          num_samples=_NUM_SAMPLES.value,
          seed=_SEED.value,
          world=world,
          batch_size=_BATCH_SIZE.value,
          samplers_by_stage=samplers,
          progress=_PROGRESS.value,
        )
        print(
          f'{report["num"]} videos {report["length_factor"]}x long ({_EXTEND.value}): every '
          f'piece right in {100 * report["all_pieces_right"]:.1f}% (95% '
          f'{100 * report["all_pieces_right_ci95"][0]:.0f}-'
          f'{100 * report["all_pieces_right_ci95"][1]:.0f}%), pieces read alike in '
          f'{100 * report["consistent"]:.1f}% ('
          + ', '.join(f'{a} {100 * v:.0f}%' for a, v in report['consistent_by_attribute'].items())
          + '); all three right per piece: '
          + ', '.join(f'{100 * p["all"]:.0f}%' for p in report['pieces'])
          + f'; later pieces moving {100 * report["moving"]:.0f}%, of those direction kept '
          + (
            'n/a'
            if report['direction_kept_when_moving'] is None
            else f'{100 * report["direction_kept_when_moving"]:.0f}%'
          )
        )
        if _OUTPUT.value:
          print(f'report: {metrics.write_report(_OUTPUT.value, report)}')
        return
      report = metrics.evaluate_cascade(
        pipe,
        J.load_judge(_JUDGE.value),
        num_samples=_NUM_SAMPLES.value,
        seed=_SEED.value,
        world=world,
        batch_size=_BATCH_SIZE.value,
        progress=_PROGRESS.value,
        real_fd_clips=200,
        samplers_by_stage=samplers,
        given=_GIVEN.value,
        num_given=_NUM_GIVEN.value,
        fps=_FPS.value,
      )
  except (ValueError, FileNotFoundError, ImportError) as e:  # ExportError is a ValueError
    # One line and exit 1 (app.UsageError would print every flag's help after it).
    raise _checks.Refusal(str(e)) from None
  for name, value in report.items():
    if name in ('clean', 'degraded'):
      print(f'{name} clips:\n{metrics.format_table(value)}')
  if _MODE.value == 'adherence':
    for name in report['stages'][:-1]:  # where along the cascade adherence is lost
      print(f'after {name}:\n{metrics.format_table(report["by_stage"][name])}')
    print(f"after {report['stages'][-1]} (the cascade's output):")
  if _MODE.value in ('adherence', 'fvd'):
    print(metrics.format_table(report))
  if report.get('speed'):
    sp = report['speed']
    print(
      f'speed: {sp["mean"]:.2f} px/frame (95% {sp["ci95"][0]:.2f}-{sp["ci95"][1]:.2f}) '
      f'at {report["fps"]:g} fps'
    )
  if report.get('given'):
    g = report['given']
    errors = ', '.join(f'{k} {v:.1f}' for k, v in g['mean_abs_error_by_stage'].items())
    print(
      f'given frames ({g["mode"]}, clip frames {g["clip_frames"]}): mean absolute '
      f'difference from them (0-255) {errors}; successive base frames differ by '
      f'{g["successive_base_frames"]:.1f}'
    )
  if _OUTPUT.value:
    print(f'report: {metrics.write_report(_OUTPUT.value, report)}')


if __name__ == '__main__':
  app.run(main)
