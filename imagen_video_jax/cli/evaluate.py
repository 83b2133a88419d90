r"""Evaluate videos: prompt adherence (the digits judge), FVD and the judge's FD.

    python -m imagen_video_jax.evaluate --mode=adherence --checkpoints=checkpoints/digits \
        --num_samples=100 [--output=outputs/adherence.json] [--stages=1] [--steps=16]
    python -m imagen_video_jax.evaluate --mode=fvd --real=data/digits --generated=outputs/gen
    python -m imagen_video_jax.evaluate --mode=judge_accuracy     # the shipped judge, fresh clips
    python -m imagen_video_jax.evaluate --mode=train_judge --judge=outputs/judge
    python -m imagen_video_jax.evaluate --mode=train_judge --overwrite  # replace checkpoints/judge

--real/--generated: a folder of .mp4/.gif files or of ArrayRecord shards, a glob or a file.
"""
from absl import app, flags

flags.DEFINE_enum('mode', 'adherence', ['adherence', 'fvd', 'judge_accuracy', 'train_judge'],
                  'What to evaluate.')
flags.DEFINE_string('checkpoints', None,
                    'Exported cascade (adherence); default checkpoints/digits.')
flags.DEFINE_integer('num_samples', 100, 'adherence: samples per group (training, held-out).')
flags.DEFINE_integer('stages', 0, 'adherence: score the first N stages only (1: the base '
                     'alone; 0: all). Every stage run is scored either way.')
flags.DEFINE_integer('steps', 0, 'adherence: sampling steps for every stage (0: each '
                     "stage's own).")
flags.DEFINE_string('held_out', None, 'Held-out combinations, e.g. 0:red:left,3:green:up '
                    '(default: the world\'s default list).')
flags.DEFINE_string('real', None, 'fvd: the reference set.')
flags.DEFINE_string('generated', None, 'fvd: the set to score.')
flags.DEFINE_integer('max_videos', None, 'fvd: use at most this many clips of each set.')
flags.DEFINE_integer('frames', 16, 'fvd: clips are cut to their first N frames (>= 9).')
flags.DEFINE_integer('batch_size', 8, 'Clips (fvd) or prompts (adherence) per batch.')
flags.DEFINE_string('judge', None, 'Judge directory; default the shipped checkpoints/judge.')
flags.DEFINE_bool('overwrite', False, 'train_judge: replace a judge already in --judge.')
flags.DEFINE_integer('judge_steps', None, 'train_judge: optimiser steps (default: '
                     'JudgeConfig().steps).')
flags.DEFINE_integer('judge_frames', 20_000, 'train_judge: still frames to train on.')
flags.DEFINE_integer('num_clips', 500, 'judge_accuracy, train_judge: fresh clips per group '
                     '(training and held-out combinations) the accuracy is measured on.')
flags.DEFINE_integer('seed', 0, 'Seed of prompts and samples (judge_accuracy: of the clips).')
flags.DEFINE_string('output', None, 'Also write the report here as JSON.')
flags.DEFINE_bool('progress', True, 'Progress bars.')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import dataclasses
  import os
  from imagen_video_jax.data import digits
  from imagen_video_jax.evaluation import fvd, judge as J, metrics
  try:
    held = digits.parse_held_out(FLAGS.held_out) if FLAGS.held_out is not None else None
    world = digits.DigitsConfig(**({} if held is None else {'held_out': held}))
    if FLAGS.num_clips < 1:
      raise ValueError(f'--num_clips must be >= 1; got {FLAGS.num_clips}')
    if FLAGS.mode == 'train_judge':
      directory = FLAGS.judge or J.DEFAULT_DIR
      # Refused before training: a forgotten --judge must not cost the shipped judge.
      existing = [f for f in (J.CONFIG_FILE, J.PARAMS_FILE)
                  if os.path.exists(os.path.join(directory, f))]
      if existing and not FLAGS.overwrite:
        raise ValueError(f'{directory} already holds a judge ({", ".join(existing)}); pass '
                         '--judge=<a new directory>, or --overwrite to replace it')
      config = J.JudgeConfig()
      if FLAGS.judge_steps is not None:
        config = dataclasses.replace(config, steps=FLAGS.judge_steps)
      jd = J.train_judge(config, num_frames=FLAGS.judge_frames, progress=FLAGS.progress)
      n, seed = FLAGS.num_clips, 12_345
      jd.report = {'clean': J.accuracy(jd, n, seed), 'clips_per_group': n,
                   'degraded': J.accuracy(jd, n, seed, True), 'clip_seed': seed}
      report = jd.report
      jd.save(directory)
    elif FLAGS.mode == 'judge_accuracy':
      jd = J.load_judge(FLAGS.judge)
      report = {k: J.accuracy(jd, FLAGS.num_clips, 54_321 + FLAGS.seed, degrade=k == 'degraded')
                for k in ('clean', 'degraded')}
    elif FLAGS.mode == 'fvd':
      if not FLAGS.real or not FLAGS.generated:
        raise app.UsageError('--mode=fvd needs --real and --generated')
      sets = [fvd.load_videos(s, FLAGS.max_videos) for s in (FLAGS.real, FLAGS.generated)]
      cfg = fvd.FVDConfig(frames=FLAGS.frames, batch_size=FLAGS.batch_size, progress=FLAGS.progress)
      jd = J.load_judge(FLAGS.judge)
      report = {'fvd': metrics.frechet_distance(*(fvd.i3d_features(s, cfg) for s in sets)),
                'fd_judge': metrics.frechet_distance(*(jd.features([v[:FLAGS.frames] for v in s])
                                                       for s in sets)),
                'num_real': len(sets[0]), 'num_generated': len(sets[1])}
    else:
      from imagen_video_jax import export  # default: checkpoints/digits, beside the judge
      from imagen_video_jax.cascade import CascadePipeline
      pipe = export.load_cascade(FLAGS.checkpoints or os.path.join(J.DEFAULT_DIR, '..', 'digits'))
      if not 0 <= FLAGS.stages <= len(pipe.stages) or FLAGS.steps < 0:
        raise ValueError(f'--stages={FLAGS.stages} --steps={FLAGS.steps}: the cascade has '
                         f'{len(pipe.stages)} stages; use 1..{len(pipe.stages)} (0: all) and '
                         'steps >= 1 (0: each stage\'s own)')
      if FLAGS.stages:
        pipe = CascadePipeline(pipe.stages[:FLAGS.stages], pipe.text_encoder)
      samplers = ({s.name: dataclasses.replace(s.sampler, steps=FLAGS.steps) for s in pipe.stages}
                  if FLAGS.steps else None)
      report = metrics.evaluate_cascade(
          pipe, J.load_judge(FLAGS.judge), num_samples=FLAGS.num_samples, seed=FLAGS.seed,
          world=world, batch_size=FLAGS.batch_size, progress=FLAGS.progress, real_fd_clips=200,
          samplers_by_stage=samplers)
  except (ValueError, FileNotFoundError, ImportError) as e:  # ExportError is a ValueError
    raise app.UsageError(str(e)) from None
  for name, value in report.items():
    if name in ('clean', 'degraded'):
      print(f'{name} clips:\n{metrics.format_table(value)}')
  if FLAGS.mode == 'adherence':
    for name in report['stages'][:-1]:  # where along the cascade adherence is lost
      print(f'after {name}:\n{metrics.format_table(report["by_stage"][name])}')
    print(f'after {report["stages"][-1]} (the cascade\'s output):')
  if FLAGS.mode in ('adherence', 'fvd'):
    print(metrics.format_table(report))
  if FLAGS.output:
    print(f'report: {metrics.write_report(FLAGS.output, report)}')


if __name__ == '__main__':
  app.run(main)
