"""Exported cascades round-trip; the sample CLI writes videos that read back right."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from cli_util import run_module
from PIL import Image

from imagen_video_jax import export, io
from imagen_video_jax.models.t5 import T5Config
from imagen_video_jax.models.t5 import init_params as t5_init
from imagen_video_jax.text import checkpoints as t5_checkpoints
from imagen_video_jax.text.tokenizer import train_sentencepiece
from test_cascade import _pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CAPTIONS = [
  f'a {c} {d} moving {m}'
  for c in ('red', 'blue', 'green')
  for d in range(10)
  for m in ('left', 'right', 'up', 'down')
]


def export_test_cascade(root, stages, names=('digits',), vocabularies=(None,)) -> list[str]:
  """The test cascade exported under root/<name> for each name, with a tiny real T5
  (d_model 8, one SentencePiece vocabulary of CAPTIONS) and the given caption vocabulary."""
  vocab = train_sentencepiece(CAPTIONS, str(root / 'sp.model'), vocab_size=64)
  t5 = T5Config(vocab_size=64, d_model=8, num_layers=1, num_heads=2, d_kv=4, d_ff=16)
  for name, vocabulary in zip(names, vocabularies):
    t5_checkpoints.save_t5(str(root / name / 'text'), t5, t5_init(t5, 0), vocab=vocab)
    export.save_cascade(str(root / name), stages, max_length=8, vocabulary=vocabulary)
  return [str(root / name) for name in names]


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """The test cascade (text width 8) exported with a tiny real T5 (d_model 8)."""
  stages = _pipeline().stages
  (path,) = export_test_cascade(tmp_path_factory.mktemp('cascade'), stages)
  return path, stages


def test_export_round_trips_params_and_configs(exported):
  path, stages = exported
  pipe = export.load_cascade(path)
  for a, b in zip(stages, pipe.stages):
    assert a.spec == b.spec and a.unet == b.unet and a.diffusion == b.diffusion
    assert a.sampler == b.sampler and a.fps == b.fps and a.sample_cond_t == b.sample_cond_t
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  assert json.load(open(os.path.join(path, 'cascade.json')))['stages'] == ['base', 'tsr', 'ssr']


def test_missing_or_foreign_directories_are_refused(tmp_path):
  with pytest.raises(export.ExportError, match='not an exported cascade'):
    export.load_cascade(str(tmp_path))
  (tmp_path / 'cascade.json').write_text('{"format": "other/9", "stages": []}')
  with pytest.raises(export.ExportError, match="format 'other/9'"):
    export.load_cascade(str(tmp_path))
  (tmp_path / 'stage.json').write_text('{}')
  with pytest.raises(export.ExportError, match='params.safetensors is missing'):
    export.load_stage(str(tmp_path))


def test_sample_cli_writes_what_the_library_samples(exported, tmp_path):
  """Every sampling flag reaches the cascade: the files equal the library's videos."""
  path, stages = exported
  out = tmp_path / 'out' / 'demo.mp4'
  config = tmp_path / 'my_cascade.py'  # --config: a config file that ships a cascade
  config.write_text(f'CASCADE_DIR = {str(path)!r}\n')
  prompts = ['a red 3 moving left', 'a blue 7']
  cmd = [
    sys.executable,
    '-m',
    'imagen_video_jax.sample',
    f'--config={config}',
    *(f'--prompt={p}' for p in prompts),
    '--negative_prompt=a green 1',
    '--seed=3',
    '--num_samples=2',
    '--sampler=ancestral',
    '--steps=2',
    '--guidance=2.5',
    f'--output={out}',
    '--scale=2',
    '--noprogress',
  ]
  res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  # Only the command's own lines: no absl/orbax/jax INFO logs unless --verbosity asks.
  assert not re.search(r'^I\d{4} |INFO|Unable to initialize backend', res.stderr, re.M), res.stderr

  pipe = export.load_cascade(path)
  want = pipe(
    prompts,
    negative_prompt='a green 1',
    num_samples=2,
    seed=3,
    progress=False,
    samplers_by_stage={
      s.name: dataclasses.replace(s.sampler, sampler='ancestral', steps=2, guidance=2.5)
      for s in pipe.stages
    },
  )
  assert len(want.videos) == 4
  last = stages[-1].spec
  for i, video in enumerate(want.videos):  # prompt-major: stem_0, stem_1 are prompt 0's
    stem = tmp_path / 'out' / f'demo_{i}'
    assert f'demo_{i}.mp4' in res.stdout and repr(want.prompts[i]) in res.stdout
    # The PNG contact sheet is lossless: every frame, pixel for pixel.
    sheet = np.asarray(Image.open(f'{stem}.png').convert('RGB'))
    np.testing.assert_array_equal(sheet, io.contact_sheet(io.upscale(video, 2)))
    frames, fps = io.read_mp4(f'{stem}.mp4')  # H.264: close, not exact
    assert frames.shape == (last.frames, 2 * last.height, 2 * last.width, 3)
    # (random-weight videos are pixel noise, which yuv420p blurs: compare with another)
    err = np.abs(frames.astype(float) - io.upscale(video, 2)).mean()
    assert err < 0.5 * np.abs(frames.astype(float) - io.upscale(want.videos[i - 1], 2)).mean()
    assert fps == pytest.approx(stages[-1].fps)
    assert io.read_gif(f'{stem}.gif').shape == frames.shape
  assert np.abs(want.videos[0].astype(int) - want.videos[1]).max() > 0  # two samples differ


def test_sample_cli_errors_are_one_line(tmp_path):
  res = run_module(
    'sample', '--prompt=x', f'--checkpoints={tmp_path}', f'--output={tmp_path}/a.mp4'
  )
  assert res.returncode != 0 and 'not an exported cascade' in res.stderr
  assert 'Traceback' not in res.stderr
  res = subprocess.run(
    [sys.executable, '-m', 'imagen_video_jax.sample', '--prompt=x', '--output=a.gif'],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode != 0 and 'must end in .mp4' in res.stderr
  res = run_module(
    'sample',
    '--prompt=x',
    '--config=configs/imagen_video.py',
    f'--output={tmp_path}/a.mp4',
    cwd=ROOT,
  )
  assert res.returncode != 0 and 'ships no trained cascade' in res.stderr, res.stderr[-2000:]
  assert 'Traceback' not in res.stderr
  # The shipped students take no negative prompt: refused before sampling, with the way out.
  res = run_module(
    'sample',
    '--prompt=a red 3 moving left',
    '--negative_prompt=a blue 7 moving up',
    '--config=configs/digits.py',
    f'--output={tmp_path}/n.mp4',
    cwd=ROOT,
  )
  assert res.returncode != 0 and 'add --teacher' in res.stderr, res.stderr[-2000:]
  assert 'Traceback' not in res.stderr and not (tmp_path / 'n.mp4').exists()


def test_a_long_video_s_length_is_refused_in_the_video_s_frames(exported, tmp_path):
  """--length counts the videos' frames; a TSR cascade's base makes fewer, which the
  refusal must not name in their place (a user asking for 12 frames is told 16 to 256)."""
  path, stages = exported
  made = stages[0].spec.frames * export.load_cascade(path).frames_per_base_frame()
  assert made > stages[0].spec.frames  # the test cascade has a TSR stage
  out = tmp_path / 'o' / 'v.mp4'
  for flags, msg in (
    ([f'--length={made - 1}'], f'give {made} to {16 * made} frames (the cascade makes {made}'),
    ([f'--length={2 * made}', f'--overlap={stages[0].spec.frames}'], 'overlap must be 1 to'),
  ):
    res = run_module(
      'sample', '--prompt=a red 3', f'--checkpoints={path}', f'--output={out}', *flags
    )
    assert res.returncode == 1 and msg in res.stderr, res.stderr[-2000:]
    assert 'Traceback' not in res.stderr and not out.parent.exists()


def test_the_digits_config_names_the_shipped_cascade():
  from imagen_video_jax.cli.sample import cascade_dir_from_config

  want = os.path.join(ROOT, 'checkpoints', 'digits')
  assert cascade_dir_from_config(os.path.join(ROOT, 'configs', 'digits.py')) == want
  assert cascade_dir_from_config(os.path.join(ROOT, 'configs', 'digits.py:stage=ssr')) == want


def test_evaluate_cli_scores_a_cascade_prefix_per_stage(exported, tmp_path):
  path, stages = exported
  report_path = tmp_path / 'adherence.json'
  cmd = [
    sys.executable,
    '-m',
    'imagen_video_jax.evaluate',
    '--mode=adherence',
    f'--checkpoints={path}',
    '--num_samples=3',
    '--batch_size=3',
    '--steps=2',
    '--noprogress',
    f'--output={report_path}',
  ]
  res = subprocess.run(cmd + ['--stages=1'], capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  report = json.load(open(report_path))
  assert report['stages'] == [stages[0].name] and report['fps'] == stages[0].fps
  assert report['train_combinations']['num'] == 3
  assert report['held_out_combinations']['num'] == 3
  assert report['by_stage'][stages[0].name]['train_combinations'] == report['train_combinations']
  assert report['samplers'][stages[0].name]['steps'] == 2
  # Sampling settings to compare on the base alone: recorded in the report.
  res = subprocess.run(
    cmd + ['--stages=1', '--guidance=1.5', '--sampler=ancestral'],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  used = json.load(open(report_path))['samplers'][stages[0].name]
  assert (used['guidance'], used['sampler'], used['steps']) == (1.5, 'ancestral', 2)
  res = subprocess.run(cmd + ['--guidance=nan'], capture_output=True, text=True, timeout=300)
  assert res.returncode == 1 and '--guidance=nan' in res.stderr
  assert 'Traceback' not in res.stderr and 'train_judge:' not in res.stderr  # no usage text
  res = subprocess.run(
    cmd + [f'--stages={len(stages) + 1}'], capture_output=True, text=True, timeout=300
  )
  assert res.returncode != 0 and f'has {len(stages)} stages' in res.stderr
  assert 'Traceback' not in res.stderr
  # One sample per group cannot give the judge's Fréchet distance: refused up front.
  res = subprocess.run(
    [c for c in cmd if not c.startswith('--num_samples')] + ['--num_samples=1'],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode != 0 and '--num_samples=1: give at least 2' in res.stderr
  assert 'Traceback' not in res.stderr
  # Long videos: each piece of the cascade's length read by the judge (a report and a line).
  long = [c for c in cmd if not c.startswith('--num_samples')]
  res = subprocess.run(
    long
    + ['--stages=1', '--num_samples=2', '--length_factor=2', '--extend=replacement']
    + [f'--overlap={stages[0].spec.frames // 2}'],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  report = json.load(open(report_path))
  assert report['length_factor'] == 2 and report['num'] == 2 and len(report['pieces']) == 2
  assert report['extend']['method'] == 'replacement'
  assert set(report['consistent_by_attribute']) == {'digit', 'colour', 'direction'}
  assert 'videos 2x long (replacement)' in res.stdout and 'later pieces moving' in res.stdout
