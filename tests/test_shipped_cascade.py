"""The shipped Moving Digits cascade (checkpoints/digits): fits the budget, matches
configs/digits.py, samples what the prompt says (by the judge); `make demo` writes a video
that reads back."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import linen as nn

from imagen_video_jax import export, io
from imagen_video_jax import stage as stage_lib
from imagen_video_jax.data import digits
from imagen_video_jax.models import unet as unet_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import digits as digits_config  # noqa: E402

SHIPPED = digits_config.CASCADE_DIR
MAX_BYTES = 40 * 1024 * 1024  # issue #7: the three stages together at most 40 MB
# Their distilled students, stored in float16 (`export_cascade --student_dtype=float16`).
MAX_STUDENT_BYTES = 20 * 1024 * 1024
# Each stage's student: (sampling steps, sampler), as the model card's "Distilled students".
STUDENTS = {'base': (4, 'stepback'), 'tsr': (4, 'stepback'), 'ssr': (4, 'stepback')}


def _size(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_shipped_cascade_fits_the_budget_and_matches_the_config():
  assert os.path.isfile(os.path.join(SHIPPED, 'cascade.json')), 'checkpoints/digits is missing'
  with open(os.path.join(SHIPPED, 'cascade.json')) as f:
    student_dirs = list(json.load(f).get('students', {}).values())
  students = sum(_size(os.path.join(SHIPPED, d)) for d in student_dirs)
  assert _size(SHIPPED) - students <= MAX_BYTES, f'checkpoints/digits is {_size(SHIPPED)} bytes'
  assert students <= MAX_STUDENT_BYTES, f'the students take {students} bytes'
  teachers = export.load_cascade(SHIPPED, students=False)
  pipe = export.load_cascade(SHIPPED)
  assert [s.name for s in pipe.stages] == list(digits_config.STAGES)
  # Every stage has a student with guidance folded in (`distill`), of the steps and
  # sampler the model card gives: sampling takes it by default.
  assert len(student_dirs) == len(pipe.stages)
  for stage in pipe.stages:
    steps, sampler = STUDENTS[stage.name]
    assert stage.unet.guidance_embed and stage.distilled['steps'] == stage.sampler.steps == steps
    assert stage.sampler.sampler == sampler, stage.name
  for stage in teachers.stages + pipe.stages:
    # The weights a user warm-starts or distils from (`init_from=checkpoints/digits`)
    # must fit the config they train with: same spec, same U-Net, same parameter shapes.
    c = digits_config.get_config(f'stage={stage.name}')
    c.model.guidance_embed = stage.unet.guidance_embed
    want = stage_lib.from_config(c)
    assert stage.spec == want.spec and stage.unet == want.unet, stage.name
    assert stage.diffusion == want.diffusion and stage.fps == want.fps, stage.name
    boxed = jax.eval_shape(
      lambda: unet_lib.init_fn(
        want.unet,
        frames=want.spec.frames,
        height=want.spec.height,
        width=want.spec.width,
        text_len=int(c.text.max_length),
      )(jax.random.key(0))
    )
    shapes = jax.tree.map(lambda a: tuple(a.shape), nn.unbox(boxed))
    assert jax.tree.map(np.shape, stage.params) == shapes, stage.name
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(stage.params)), stage.name


# Few steps, 16 prompts: ~30 s on two cores. The full evaluation (100 prompts per group,
# each stage's own steps; README) is `python -m imagen_video_jax.evaluate`.
STEPS, NUM_TRAIN, NUM_HELD_OUT = 4, 12, 4
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')


def _samples_keep_the_prompt(pipe, pinned, steps=None):
  """Samples 16 prompts (12 training and 4 held-out combinations) through `pipe` (each
  stage at `steps`, or its own), checks the first four of every stage against the samples
  recorded in `pinned`, and the judge's digit, colour and direction at every stage."""
  from imagen_video_jax.evaluation import judge as judge_lib, metrics

  prompts = metrics.sample_prompts(NUM_TRAIN, 0, False) + metrics.sample_prompts(
    NUM_HELD_OUT, 0, True
  )
  fewer = None
  if steps is not None:
    fewer = {s.name: dataclasses.replace(s.sampler, steps=steps) for s in pipe.stages}
  out = pipe(prompts, seed=0, samplers_by_stage=fewer, progress=False, return_intermediates=True)
  # Read with the motion of the world the cascade records (cascade.json "world").
  judge = metrics.judge_for_cascade(pipe, judge_lib.load_judge())
  # The first four samples of every stage as recorded (this seed and these prompts):
  # refactoring the sampling path must keep them. Recorded with XLA's default CPU
  # optimisation level; at level 0 they differ by at most 1 in 1 of ~16000 values.
  # (A deliberate change of the samples: IVJ_REGENERATE=1 pytest -k prompted_digit.)
  if os.environ.get('IVJ_REGENERATE') == '1':
    np.savez_compressed(pinned, **{k: v[:4] for k, v in out.intermediates.items()})
  with np.load(pinned) as recorded:
    for name, want in recorded.items():
      diff = np.abs(out.intermediates[name][: len(want)].astype(int) - want)
      assert diff.mean() < 0.05 and (diff > 8).mean() < 1e-3, (name, diff.mean(), diff.max())
  for stage in pipe.stages:
    videos = out.intermediates[stage.name]
    assert videos.shape[1:4] == (stage.spec.frames, stage.spec.height, stage.spec.width)
    truth = [digits.parse_caption(p) for p in prompts]
    got = judge.predict(videos, fps=stage.fps).as_tuples()
    right = np.mean([[g[k] == t[k] for k in range(3)] for g, t in zip(got, truth)], axis=0)
    assert (right >= 0.85).all(), (stage.name, 'digit, colour, direction', right)


@pytest.mark.slow  # the teachers' pinned samples (the students' below stay in make test)
def test_the_shipped_cascade_draws_the_prompted_digit_and_colour():
  """Correctly shaped random weights pass the checks above; these need trained ones.

  The judge (checkpoints/judge, 98-100% right on real clips) reads every stage's output
  with the motion of the cascade's world (v2). At their own 32 steps the shipped stages
  draw all three attributes right in 98-100% of samples; at 4 steps they stay close
  (measured here: digit, colour and direction right in 16 of the 16 samples at every
  stage). Random weights would be right ~10%, ~14% and ~25% of the time.
  """
  teachers = export.load_cascade(SHIPPED, students=False)
  _samples_keep_the_prompt(teachers, os.path.join(DATA, 'shipped_cascade_samples.npz'), STEPS)


def test_the_shipped_students_draw_the_prompted_digit_and_colour_in_few_steps():
  """The distilled students, what `sample`, `make demo` and the notebook use, at their
  own steps of one forward each (`STUDENTS`: 4 each with the step-back sampler; the
  teachers take 32 steps of two)."""
  _samples_keep_the_prompt(
    export.load_cascade(SHIPPED), os.path.join(DATA, 'shipped_students_samples.npz')
  )


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_make_demo_writes_a_video_from_the_shipped_cascade(tmp_path):
  make = shutil.which('make')
  if make is None:
    pytest.skip('make is not installed')
  # `make demo` as a user runs it, but with this interpreter (VENV's stamp already made)
  # and the output under tmp_path.
  venv = tmp_path / 'venv'
  venv.mkdir()
  (venv / '.installed-run').touch()
  out = tmp_path / 'demo' / 'demo.mp4'
  res = subprocess.run(
    [
      make,
      '-C',
      ROOT,
      'demo',
      f'VENV={venv}',
      f'PY={sys.executable}',
      'PROMPT=a green 5 moving up',
      f'DEMO_OUTPUT={out}',
    ],
    capture_output=True,
    text=True,
    timeout=1200,
  )
  assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
  frames, fps = io.read_mp4(str(out))
  ssr = export.load_cascade(SHIPPED).stages[-1]
  assert frames.shape[0] == ssr.spec.frames and fps == pytest.approx(ssr.fps)
  assert frames.shape[1:3] == (4 * ssr.spec.height, 4 * ssr.spec.width)  # --scale default 4
  assert (out.parent / 'demo.gif').is_file() and (out.parent / 'demo.png').is_file()
  assert frames.std() > 1.0  # a picture, not a blank


def _sheet_frames(png, frames, size, columns=8, gap=1):
  """The frames of a contact sheet (io.contact_sheet's layout) read back from its PNG."""
  from PIL import Image

  sheet = np.asarray(Image.open(png).convert('RGB'))
  out = []
  for i in range(frames):
    r, c = divmod(i, columns)
    y, x = r * (size + gap), c * (size + gap)
    out.append(sheet[y : y + size, x : x + size])
  return np.stack(out)


@pytest.mark.slow  # a longer end-to-end run: make test-all
def test_the_demo_contact_sheets_end_on_the_prompted_side(tmp_path):
  """`make demo`'s prompt in each of the four directions, sampled as `sample` does (its
  default seed, each stage's own steps): on the contact sheet the digit ends on the side
  the prompt names, read from its centroid (as a person reads it, not by the judge)."""
  from imagen_video_jax.evaluation.judge import centroids

  pipe = export.load_cascade(SHIPPED)
  assert pipe.world == {'name': 'digits', 'version': 2}  # the shipped cascade is world v2
  prompts = [f'a red 3 moving {d}' for d in digits.DIRECTIONS]
  out = pipe(prompts, seed=0, progress=False)
  paths = out.save(str(tmp_path / 'demo'))
  ssr = pipe.stages[-1].spec
  for prompt, p in zip(prompts, paths):
    video = _sheet_frames(p['png'], ssr.frames, ssr.width).astype(np.float32) / 255.0
    c = centroids(video[None])[0]  # [T, 2] (x, y)
    dx, dy = digits.DIRECTIONS[digits.parse_caption(prompt)[2]]
    axis, sign = (0, dx) if dx else (1, dy)
    moved = c[-1] - c[0]
    # Ends at least an eighth of the frame further the prompt's way than it began, and
    # moves less across that axis than along it.
    assert moved[axis] * sign >= ssr.width / 8, (prompt, c[0], c[-1])
    assert abs(moved[1 - axis]) < abs(moved[axis]), (prompt, c[0], c[-1])
