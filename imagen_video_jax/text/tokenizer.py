"""SentencePiece tokenisation for the T5 encoder: ids + mask, padded and truncated.

T5's conventions: pad id 0, EOS id 1 appended to every prompt, UNK id 2. A prompt
longer than `max_length` keeps its first `max_length - 1` pieces and its EOS (what
`transformers`' T5 tokenizer does with `truncation=True`), and a warning names it.

`train_sentencepiece` builds the small vocabulary of the Moving Digits world from its
captions ("a red 3 moving left", "a red 3"), with the same special ids as T5, so the
same code path serves both that world and the real 32k T5 vocabulary.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 128
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
_SHOWN = 120  # Characters of a prompt quoted in a warning.


def _quote(text: str) -> str:
  return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + '...')


@dataclasses.dataclass(frozen=True)
class Tokenized:
  """A tokenised batch. `ids`/`mask` are [B, max_length]; `num_tokens` counts EOS."""

  ids: np.ndarray  # int32, padded with the pad id.
  mask: np.ndarray  # bool, True on real tokens (EOS included).
  num_tokens: np.ndarray  # int32 [B], tokens before truncation (EOS included).
  truncated: np.ndarray  # bool [B].


class Tokenizer:
  """A SentencePiece model with T5's padding/EOS conventions."""

  def __init__(self, model: str | bytes | os.PathLike):
    """`model`: a path to a `.model` file, or its serialized bytes."""
    self._sp = spm.SentencePieceProcessor()
    try:
      if isinstance(model, bytes):
        self._sp.LoadFromSerializedProto(model)
      else:
        path = os.fspath(model)
        if not os.path.isfile(path):
          raise FileNotFoundError(f'SentencePiece model {path} does not exist.')
        self._sp.Load(path)
    except (OSError, RuntimeError) as e:
      raise ValueError(f'Cannot load SentencePiece model {model!r:.200}: {e}') from None
    self.eos_id = self._sp.eos_id()
    if self.eos_id < 0:
      raise ValueError(
        'The SentencePiece model has no EOS piece; T5 needs one '
        '(train it with eos_id=1, as `train_sentencepiece` does).'
      )
    self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else PAD_ID
    self.unk_id = self._sp.unk_id()

  @property
  def vocab_size(self) -> int:
    return self._sp.GetPieceSize()

  def serialized(self) -> bytes:
    return self._sp.serialized_model_proto()

  def tokenize(self, prompt: str) -> list[int]:
    """Pieces of one prompt plus EOS, untruncated."""
    return list(self._sp.EncodeAsIds(prompt)) + [self.eos_id]

  def unknown_words(self, prompt: str) -> list[str]:
    """The words (split on whitespace) of `prompt` the vocabulary does not hold: a word
    that encodes with the unknown piece, or one of two or more characters that it can
    only spell out, in pieces of fewer than two characters on average (the word-start
    marker not counted): a word of the vocabulary is one piece or a few long ones.
    """
    out = []
    for word in prompt.split():
      ids = self._sp.EncodeAsIds(word)
      pieces = [p.replace('\u2581', '') for p in self._sp.EncodeAsPieces(word)]
      pieces = [p for p in pieces if p]
      spelled = len(word) > 1 and len(word) < 2 * len(pieces)
      if spelled or (self.unk_id >= 0 and self.unk_id in ids):
        out.append(word)
    return out

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`, stopping at the first EOS and skipping padding."""
    out = []
    for i in np.asarray(ids).tolist():
      if i == self.eos_id:
        break
      if i != self.pad_id:
        out.append(i)
    return self._sp.DecodeIds(out)

  def __call__(
    self, prompts: str | Sequence[str], max_length: int = DEFAULT_MAX_LENGTH, *, warn: bool = True
  ) -> Tokenized:
    """Tokenises `prompts` to `[B, max_length]` ids and mask (see module doc)."""
    if isinstance(prompts, (str, bytes)):
      prompts = [prompts]
    if not isinstance(max_length, (int, np.integer)) or max_length < 1:
      raise ValueError(f'max_length must be a positive integer, got {max_length!r}.')
    n = len(prompts)
    ids = np.full((n, max_length), self.pad_id, np.int32)
    mask = np.zeros((n, max_length), bool)
    num_tokens = np.zeros(n, np.int32)
    truncated = np.zeros(n, bool)
    for i, prompt in enumerate(prompts):
      prompt = _as_text(prompt, i)
      pieces = self._sp.EncodeAsIds(prompt)
      num_tokens[i] = len(pieces) + 1
      if len(pieces) + 1 > max_length:
        truncated[i] = True
        pieces = pieces[: max_length - 1]
        if warn:
          log.warning(
            'Prompt %d %s is %d tokens long (EOS included), more than '
            'max_length=%d: truncated to %s.',
            i,
            _quote(prompt),
            num_tokens[i],
            max_length,
            _quote(self._sp.DecodeIds(pieces)),
          )
      row = pieces + [self.eos_id]
      ids[i, : len(row)] = row
      mask[i, : len(row)] = True
      if warn:
        self._report(i, prompt, pieces)
    return Tokenized(ids, mask, num_tokens, truncated)

  def _report(self, i: int, prompt: str, pieces: list[int]) -> None:
    if not prompt.strip():
      log.warning(
        'Prompt %d %s is empty: it encodes to EOS alone. For the '
        'unconditional input of classifier-free guidance use the null '
        'embedding (mask all False) instead.',
        i,
        _quote(prompt),
      )
      return
    if self.unk_id >= 0 and self.unk_id in pieces:
      proto = self._sp.Encode(prompt, return_type='proto')
      unknown = sorted({p.surface for p in proto.pieces if p.id == self.unk_id})
      log.warning(
        'Prompt %d %s has text the vocabulary does not cover (%s); it encodes as <unk>.',
        i,
        _quote(prompt),
        ', '.join(map(repr, unknown)),
      )


def _as_text(prompt, i: int) -> str:
  if isinstance(prompt, bytes):
    try:
      return prompt.decode('utf-8')
    except UnicodeDecodeError as e:
      raise ValueError(f'Prompt {i} is bytes that are not valid UTF-8: {e}') from None
  if not isinstance(prompt, str):
    raise TypeError(f'Prompt {i} is a {type(prompt).__name__}, expected str.')
  return prompt


def train_sentencepiece(
  captions: Iterable[str], output_path: str, *, vocab_size: int = 128, model_type: str = 'bpe'
) -> str:
  """Trains a SentencePiece model on `captions` and writes it to `output_path`.

  Special ids follow T5 (pad 0, EOS 1, UNK 2, no BOS). `vocab_size` is an upper
  bound: a closed vocabulary such as Moving Digits' yields fewer pieces, and that is
  accepted (`hard_vocab_limit=False`) rather than an error. BPE is the default
  because on a few hundred short captions it learns whole words ('▁magenta',
  '▁moving') where unigram stays near characters, and unlike `model_type='word'` it
  still spells out an unseen word from characters. Returns `output_path`.
  """
  captions = [c for c in captions if c and c.strip()]
  if not captions:
    raise ValueError('train_sentencepiece needs at least one non-empty caption.')
  buf = io.BytesIO()
  spm.SentencePieceTrainer.Train(
    sentence_iterator=iter(captions),
    model_writer=buf,
    vocab_size=vocab_size,
    model_type=model_type,
    pad_id=PAD_ID,
    eos_id=EOS_ID,
    unk_id=UNK_ID,
    bos_id=-1,
    character_coverage=1.0,
    hard_vocab_limit=False,
    shuffle_input_sentence=False,
    num_threads=1,
    minloglevel=2,
  )
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  with open(output_path, 'wb') as f:
    f.write(buf.getvalue())
  return output_path
