r"""The shipped cascade's time per video, end to end and per stage, and the evaluation's time
per 100 prompts.

    .venv/bin/python benchmarks/sampling_throughput.py [--num_samples=1,4,8] [--repeats=1] \
        [--steps=0] [--eval_num_samples=4] [--eval_batch_size=8] [--label=...] \
        [--cascade=checkpoints/digits] [--teacher]

Loads the shipped Moving Digits cascade (or --cascade; its distilled students where it
holds them, the full stages with --teacher) and, for each num_samples
(one prompt, each stage's own steps unless --steps), makes a first call (it compiles that
batch bucket's three samplers) and then --repeats calls with other seeds (compiled, the
steady state); prints one JSON line per call with its wall time, the time of each stage
(its sampler, until its video is ready) and of the rest (text encoding, initial noise,
checks, the uint8 conversion), and the time per video (wall / num_samples).

Then the evaluation as `python -m imagen_video_jax.evaluate --mode=adherence` runs it
(`metrics.evaluate_cascade`: prompts in batches of --eval_batch_size, every stage's
output judged), on --eval_num_samples prompts per group (training and held-out
combinations: twice that many prompts) with the cascade already compiled, scaled
linearly to 100 prompts; the judge's Fréchet distance the command adds (200 real clips,
once per evaluation, not per prompt) is timed on its own. The command itself samples
100 prompts per group (200 prompts) and, started fresh, also loads and compiles.

Last, a Markdown table row of the steady-state figures (seconds).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = 'a red 3 moving left'


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--cascade', default=os.path.join(ROOT, 'checkpoints', 'digits'))
  p.add_argument('--num_samples', default='1,4,8', help='comma-separated')
  p.add_argument('--repeats', type=int, default=1, help='steady-state calls per num_samples')
  p.add_argument('--steps', type=int, default=0, help="steps of every stage (0: each stage's own)")
  p.add_argument('--eval_num_samples', type=int, default=4, help='prompts per group; 0: skip')
  p.add_argument('--eval_batch_size', type=int, default=8, help='as the command (its default)')
  p.add_argument('--label', default=None, help='first cell of the Markdown row')
  p.add_argument(
    '--teacher',
    action='store_true',
    help='the full stages where the cascade holds distilled students (default: the students)',
  )
  args = p.parse_args()

  import dataclasses

  import jax

  from imagen_video_jax import export

  start = time.perf_counter()
  pipe = export.load_cascade(args.cascade, students=not args.teacher)
  print(json.dumps({'load_s': round(time.perf_counter() - start, 2)}), flush=True)
  samplers = None
  if args.steps:
    samplers = {s.name: dataclasses.replace(s.sampler, steps=args.steps) for s in pipe.stages}
  names = [s.name for s in pipe.stages]
  steps = {s.name: (samplers or {}).get(s.name, s.sampler).steps for s in pipe.stages}

  # Each stage's time: the cascade waits for every stage's video before the next, so the
  # sampler call plus that wait is the stage's time.
  stage_s = {}
  real_sampler = pipe._sampler

  def timed_sampler(index, cfg, *rest):
    run = real_sampler(index, cfg, *rest)

    def timed(*a):
      t = time.perf_counter()
      out = jax.block_until_ready(run(*a))
      stage_s[names[index]] = stage_s.get(names[index], 0.0) + time.perf_counter() - t
      return out

    return timed

  pipe._sampler = timed_sampler

  def call(n, seed):
    stage_s.clear()
    t = time.perf_counter()
    pipe(PROMPT, num_samples=n, seed=seed, samplers_by_stage=samplers, progress=False)
    wall = time.perf_counter() - t
    return wall, dict(stage_s)

  steady = {}
  for n in [int(x) for x in args.num_samples.split(',')]:
    for i in range(1 + args.repeats):
      wall, per_stage = call(n, seed=i)
      row = {
        'call': 'first (compiles)' if i == 0 else 'steady',
        'num_samples': n,
        'wall_s': round(wall, 2),
        'per_video_s': round(wall / n, 2),
        'stages_s': {k: round(v, 2) for k, v in per_stage.items()},
        'rest_s': round(wall - sum(per_stage.values()), 2),
        'steps': steps,
      }
      print(json.dumps(row), flush=True)
      if i:
        steady.setdefault(n, []).append((wall, per_stage))

  eval_per_100 = fd_s = None
  if args.eval_num_samples:
    from imagen_video_jax.evaluation import judge as J, metrics

    judge = J.load_judge()
    k = args.eval_num_samples
    t = time.perf_counter()
    metrics.evaluate_cascade(
      pipe,
      judge,
      num_samples=k,
      seed=0,
      batch_size=args.eval_batch_size,
      samplers_by_stage=samplers,
      progress=False,
      real_fd_clips=0,
    )
    wall = time.perf_counter() - t
    eval_per_100 = wall / (2 * k) * 100
    t = time.perf_counter()  # the fixed part: the judge's features of 200 real clips
    real, _ = J.real_clips(judge.config, 200, 1, held_out=False)
    judge.features(real)
    fd_s = time.perf_counter() - t
    row = {
      'call': 'evaluation (compiled cascade)',
      'prompts': 2 * k,
      'batch_size': args.eval_batch_size,
      'wall_s': round(wall, 2),
      'per_100_prompts_s': round(eval_per_100, 1),
      'fd_judge_200_real_clips_s': round(fd_s, 2),
    }
    print(json.dumps(row), flush=True)

  med = {n: statistics.median(w for w, _ in runs) for n, runs in steady.items()}
  label = args.label or f'{datetime.date.today()}, {platform.node() or "this machine"}'
  cells = [label] + [f'{med[n] / n:.2f}' for n in sorted(med)]
  top = max(med)
  split = statistics.median_low([tuple(s[k] for k in names) for _, s in steady[top]])
  cells.append(' / '.join(f'{x:.2f}' for x in split))
  cells.append('-' if eval_per_100 is None else f'{eval_per_100:.0f} (+{fd_s:.1f})')
  print()
  print(
    '| run | '
    + ' | '.join(f's/video at {n}' for n in sorted(med))
    + f' | {" / ".join(names)} s at {top} | evaluation s/100 prompts (+FD once) |'
  )
  print('| --- |' + ' ---: |' * (len(cells) - 1))
  print('| ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  main()
