r"""What a second cascade call costs when the user changes steps, num_samples, guidance or seed.

    .venv/bin/python benchmarks/recompile.py [--steps=4 --other_steps=6] \
        [--num_samples=3 --other_num_samples=4] [--save=out.npz] [--compare_to=before.npz]

Samples the shipped Moving Digits cascade (checkpoints/digits), two prompts, in one
process: a first call (compiles), the same shapes with another seed, then other steps
(twice), other num_samples (in the same power-of-two batch bucket), other (oscillating)
guidance, the ancestral sampler (another program) and num_samples=1 (another bucket),
and prints one JSON line per call with its wall time and its ratio to the same-shape
call. `--save` writes every stage's float output of every call (before the uint8
conversion); `--compare_to` checks them bit for bit against a file an earlier version
of the code saved.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ['a red 3 moving left', 'a green 7 moving up']


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--cascade', default=os.path.join(ROOT, 'checkpoints', 'digits'))
  p.add_argument('--steps', type=int, default=4)
  p.add_argument('--other_steps', type=int, default=6)
  p.add_argument('--num_samples', type=int, default=3)
  p.add_argument('--other_num_samples', type=int, default=4)
  p.add_argument('--save', default=None)
  p.add_argument('--compare_to', default=None)
  args = p.parse_args()

  from imagen_video_jax import export, io

  floats = []  # every stage's float video, in call order (the cascade converts each once)
  to_uint8 = io.to_uint8

  def recording_to_uint8(x):
    floats.append(np.array(x))
    return to_uint8(x)

  io.to_uint8 = recording_to_uint8
  pipe = export.load_cascade(args.cascade)

  def samplers(**changes):
    return {s.name: dataclasses.replace(s.sampler, **changes) for s in pipe.stages}

  s, s2, n, n2 = args.steps, args.other_steps, args.num_samples, args.other_num_samples
  calls = [
    ('first call', dict(num_samples=n, seed=0, samplers_by_stage=samplers(steps=s))),
    ('same shape, other seed', dict(num_samples=n, seed=1, samplers_by_stage=samplers(steps=s))),
    ('other steps', dict(num_samples=n, seed=0, samplers_by_stage=samplers(steps=s2))),
    # The same again: what those steps cost without compiling, in either version.
    ('other steps, again', dict(num_samples=n, seed=1, samplers_by_stage=samplers(steps=s2))),
    ('other num_samples', dict(num_samples=n2, seed=0, samplers_by_stage=samplers(steps=s))),
    (
      'other guidance (oscillating)',
      dict(
        num_samples=n,
        seed=2,
        samplers_by_stage=samplers(steps=s, guidance=5.0, guidance_low=1.5, oscillate_from=0.5),
      ),
    ),
    (
      'ancestral sampler',
      dict(num_samples=n, seed=0, samplers_by_stage=samplers(steps=s, sampler='ancestral')),
    ),
    ('num_samples=1', dict(num_samples=1, seed=0, samplers_by_stage=samplers(steps=s))),
  ]
  saved = {}
  same_shape = None
  for i, (name, kw) in enumerate(calls):
    floats.clear()
    start = time.perf_counter()
    pipe(PROMPTS, progress=False, return_intermediates=True, **kw)
    wall = time.perf_counter() - start
    if name.startswith('same shape'):
      same_shape = wall
    for stage, x in zip(pipe.stages, floats):
      saved[f'{i}:{stage.name}'] = x
    row = {'call': name, 'wall_s': round(wall, 2), 'batch': len(PROMPTS) * kw['num_samples']}
    if same_shape is not None:
      row['x_same_shape'] = round(wall / same_shape, 2)
    print(json.dumps(row), flush=True)
  if args.save:
    np.savez_compressed(args.save, **saved)
  if args.compare_to:
    with np.load(args.compare_to) as before:
      assert sorted(before) == sorted(saved), (sorted(before), sorted(saved))
      unequal = {
        k: float(np.abs(before[k] - saved[k]).max()) if before[k].shape == saved[k].shape else -1
        for k in sorted(saved)
        if not np.array_equal(before[k], saved[k])
      }
    print(json.dumps({'compared': len(saved), 'bit_equal': not unequal, 'max_abs_diff': unequal}))
    if unequal:
      sys.exit(1)


if __name__ == '__main__':
  main()
