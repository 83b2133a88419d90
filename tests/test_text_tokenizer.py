"""SentencePiece tokenizer: T5 conventions, truncation, empty and non-ASCII prompts."""

import logging

import numpy as np
import pytest

from imagen_video_jax.text.tokenizer import EOS_ID, PAD_ID, Tokenizer, train_sentencepiece

COLOURS = ['red', 'green', 'blue', 'yellow', 'cyan', 'magenta', 'white']
DIRECTIONS = ['left', 'right', 'up', 'down']
CAPTIONS = [f'a {c} {d} moving {m}' for c in COLOURS for d in range(10) for m in DIRECTIONS] + [
  f'a {c} {d}' for c in COLOURS for d in range(10)
]


@pytest.fixture(scope='module')
def tok(tmp_path_factory):
  path = tmp_path_factory.mktemp('sp') / 'digits.model'
  return Tokenizer(train_sentencepiece(CAPTIONS, str(path)))


def test_digits_vocabulary_is_whole_words(tok):
  assert tok.vocab_size <= 128
  t = tok(['a magenta 9 moving down', 'a red 3'], max_length=8)
  assert t.ids.shape == t.mask.shape == (2, 8)
  assert t.ids.dtype == np.int32 and t.mask.dtype == bool
  assert t.num_tokens.tolist() == [6, 4]  # a / magenta / 9 / moving / down / EOS
  assert t.ids[0, 5] == EOS_ID and t.ids[1, 3] == EOS_ID
  assert (t.ids[~t.mask] == PAD_ID).all() and t.mask.sum(1).tolist() == [6, 4]
  assert tok.decode(t.ids[0]) == 'a magenta 9 moving down'


def test_training_is_deterministic(tok, tmp_path):
  again = Tokenizer(train_sentencepiece(CAPTIONS, str(tmp_path / 'again.model')))
  assert again.serialized() == tok.serialized()
  assert Tokenizer(tok.serialized()).vocab_size == tok.vocab_size  # from bytes


def test_truncation_keeps_eos_and_names_the_prompt(tok, caplog):
  long = 'a red 3 moving left and then a blue 7 moving right'
  with caplog.at_level(logging.WARNING):
    t = tok([long, 'a red 3'], max_length=5)
  assert t.truncated.tolist() == [True, False]
  assert t.mask[0].all() and t.ids[0, -1] == EOS_ID
  assert t.num_tokens[0] > 5
  assert tok.decode(t.ids[0]) == 'a red 3 moving'
  msgs = [r.getMessage() for r in caplog.records]
  assert any(long in m and 'max_length=5' in m and 'truncated' in m for m in msgs)
  assert not any("'a red 3'" in m for m in msgs)


def test_empty_prompt_is_eos_only_and_reported(tok, caplog):
  with caplog.at_level(logging.WARNING):
    t = tok(['', '   '], max_length=4)
  assert t.ids[:, 0].tolist() == [EOS_ID, EOS_ID]
  assert t.mask.sum(1).tolist() == [1, 1]
  assert sum('empty' in r.getMessage() and 'null' in r.getMessage() for r in caplog.records) == 2


def test_non_ascii_prompts_encode_and_report_unknown_text(tok, caplog):
  with caplog.at_level(logging.WARNING):
    t = tok(['a red 3 moving left 🚀', 'un chat bleu ü 日本', b'a red 3'], max_length=32)
  assert t.mask.all(1).sum() == 0 and not t.truncated.any()
  assert (t.ids[:2][t.mask[:2]] == tok.unk_id).any()
  msgs = [r.getMessage() for r in caplog.records]
  assert any('🚀' in m and 'does not cover' in m for m in msgs)
  assert any("'ü'" in m and "'日本'" in m for m in msgs)
  assert tok.decode(t.ids[2]) == 'a red 3'  # bytes are decoded as UTF-8


def test_bad_inputs_have_clear_errors(tok, tmp_path):
  with pytest.raises(TypeError, match='Prompt 1 is a int'):
    tok(['a red 3', 7])
  with pytest.raises(ValueError, match='not valid UTF-8'):
    tok([b'\xff\xfe'])
  with pytest.raises(ValueError, match='max_length'):
    tok(['a'], max_length=0)
  with pytest.raises(ValueError, match='does not exist'):
    Tokenizer(str(tmp_path / 'missing.model'))
  (tmp_path / 'junk.model').write_bytes(b'not a model')
  with pytest.raises(ValueError, match='Cannot load'):
    Tokenizer(str(tmp_path / 'junk.model'))
  with pytest.raises(ValueError, match='non-empty caption'):
    train_sentencepiece(['', ' '], str(tmp_path / 'x.model'))


def test_single_string_and_no_warnings_when_asked(tok, caplog):
  with caplog.at_level(logging.WARNING):
    t = tok('a red 3 moving left ' * 10, max_length=4, warn=False)
  assert t.ids.shape == (1, 4) and t.truncated[0]
  assert not caplog.records
