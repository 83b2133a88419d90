"""Prompts are checked against what the cascade was trained on: unknown words are
warned about by name, or refused with strict=True / sample --strict."""

import json
import os
import warnings

import pytest
from cli_util import run_module
from test_cascade import _pipeline
from test_sample_cli import export_test_cascade

from imagen_video_jax import export
from imagen_video_jax.cascade import UnknownPromptError, UnknownPromptWarning
from imagen_video_jax.data import digits, prepare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD = 'a purple cat dancing'


@pytest.fixture(scope='module')
def cascades(tmp_path_factory):
  """The test cascade exported twice with a tiny T5: with the digits words, and without."""
  words = export.caption_words(prepare.digits_captions())
  names = ('closed', 'open')
  paths = export_test_cascade(
    tmp_path_factory.mktemp('prompts'), _pipeline().stages, names, (words, None)
  )
  return dict(zip(names, paths))


class Sampled(Exception):
  """Raised in place of sampling: the prompt check has run by then."""


def no_sampling(pipe):
  def refuse(*a, **k):
    raise Sampled

  pipe._sampler = refuse
  return pipe


def test_unknown_words_are_named_with_what_the_cascade_knows(cascades):
  pipe = no_sampling(export.load_cascade(cascades['closed']))
  with pytest.warns(UnknownPromptWarning) as got, pytest.raises(Sampled):
    pipe(['a red 3 moving left', BAD], progress=False)
  (msg,) = [str(w.message) for w in got]
  assert "'cat', 'dancing', 'purple'" in msg and repr(BAD) in msg
  assert "'red'" not in msg and 'a red 3' not in msg  # the known prompt is not blamed
  assert 'these 23 words: 0 1 2 3 4 5 6 7 8 9 a blue cyan down green left magenta' in msg
  with pytest.warns(UnknownPromptWarning, match="'happy'"), pytest.raises(Sampled):
    pipe('a red 3', negative_prompt='a happy 3', progress=False)  # negative prompts too


def test_strict_refuses_before_sampling(cascades):
  pipe = no_sampling(export.load_cascade(cascades['closed']))
  with pytest.raises(UnknownPromptError, match="'purple'"):
    pipe(BAD, strict=True, progress=False)


def test_known_prompts_pass_without_a_warning(cascades):
  pipe = no_sampling(export.load_cascade(cascades['closed']))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    with pytest.raises(Sampled):
      pipe(['a red 3 moving left', 'a white 0'], strict=True, progress=False)
  assert pipe.check_prompts(prepare.digits_captions()) is None


def test_open_vocabularies_report_words_the_tokenizer_spells_out(cascades):
  pipe = no_sampling(export.load_cascade(cascades['open']))
  assert pipe.vocabulary is None
  msg = pipe.check_prompts(BAD)
  assert msg and "(3 of 4: 'purple', 'cat', 'dancing')" in msg
  assert pipe.check_prompts(['a red 3 moving left', 'a blue 7']) is None
  assert pipe.check_prompts('a red 3 moving sideways') is None  # 1 of 5: under the rate
  with pytest.raises(UnknownPromptError):
    pipe(BAD, strict=True, progress=False)


def test_sample_strict_refuses_in_one_line_and_writes_nothing(cascades, tmp_path):
  out = tmp_path / 'o' / 'v.mp4'
  res = run_module(
    'sample',
    f'--checkpoints={cascades["closed"]}',
    f'--prompt={BAD}',
    f'--output={out}',
    '--strict',
  )
  assert res.returncode == 1, res.stderr[-2000:]
  assert 'Traceback' not in res.stderr
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: this cascade was never trained on')
  assert "'purple'" in lines[0] and 'Nothing was written' in lines[0]
  assert not (tmp_path / 'o').exists() or not os.listdir(tmp_path / 'o')


def test_the_shipped_vocabulary_covers_every_caption_of_the_world():
  meta = json.load(open(os.path.join(ROOT, 'checkpoints', 'digits', 'cascade.json')))
  known = set(meta['text']['vocabulary'])
  world = digits.DigitsConfig()
  captions = {digits.caption_for(d, c, m) for d, c, m in world.train_combinations}
  captions |= {digits.caption_for(d, c, m) for d, c, m in world.held_out}
  captions |= {digits.caption_for(d, c) for d in range(10) for c in digits.COLOURS}
  captions |= set(prepare.digits_captions())
  for c in captions:
    assert set(c.split()) <= known, c
  assert known == set(export.caption_words(captions))  # and nothing else


def test_digits_runs_export_the_world_words():
  shipped = json.load(open(os.path.join(ROOT, 'checkpoints', 'digits', 'cascade.json')))
  assert export.training_vocabulary({'data': {'world': 'digits'}}) == shipped['text']['vocabulary']
  assert export.training_vocabulary({'data': {'world': 'videos'}}) is None
