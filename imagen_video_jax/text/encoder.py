"""Prompts -> T5 embeddings, in process (`TextEncoder`) or into a cache (`encode_captions`).

`TextEncoder` bundles a converted T5 v1.1 encoder, its SentencePiece vocabulary and
one jitted function sharded over a 1-D ('data',) mesh of the local devices: the batch
is split over devices, and with `shard_params=True` (default) so is every parameter's
'embed' axis (FSDP-style), so T5-XXL fits devices smaller than its 9 GB of bfloat16.

Outputs follow docs/design.md, 'Tensor conventions': `text_emb [B, L, D]` (bfloat16 by
default, zeros at padded positions) and `text_mask [B, L]` bool.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from imagen_video_jax.models.t5 import T5Config, T5Encoder
from imagen_video_jax.text import cache as cache_lib
from imagen_video_jax.text import checkpoints
from imagen_video_jax.text.tokenizer import DEFAULT_MAX_LENGTH, Tokenizer

log = logging.getLogger(__name__)


def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh named 'data' (Auto axis type, so jit shards matmuls itself)."""
  return Mesh(np.array(jax.local_devices() if devices is None else devices), ('data',))


def encode_rules(shard_params: bool = True):
  """Logical rules for a ('data',) mesh: batch over data, optionally embed too."""
  return (('batch', 'data'), ('embed', 'data')) if shard_params else (('batch', 'data'),)


class TextEncoder:
  """A frozen T5 encoder with its tokenizer: `encoder(prompts) -> (emb, mask)`."""

  def __init__(
    self,
    config: T5Config,
    params,
    tokenizer: Tokenizer,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    mesh: Mesh | None = None,
    out_dtype=jnp.bfloat16,
  ):
    if tokenizer.vocab_size > config.vocab_size:
      raise ValueError(
        f'The tokenizer has {tokenizer.vocab_size} pieces but the T5 '
        f'embedding only {config.vocab_size} rows: wrong vocabulary?'
      )
    self.config, self.params, self.tokenizer = config, params, tokenizer
    self.max_length = max_length
    self.mesh = mesh or data_mesh()
    batch = NamedSharding(self.mesh, PartitionSpec('data'))
    model = T5Encoder(config)
    param_shardings = jax.tree.map(lambda x: x.sharding, params)

    def encode(params, ids, mask):
      emb = model.apply({'params': params}, ids, mask)
      # Zeros at padding: deterministic, compressible, and what the cache stores.
      return jnp.where(mask[..., None], emb, 0).astype(out_dtype)

    self._encode = jax.jit(
      encode, in_shardings=(param_shardings, batch, batch), out_shardings=batch
    )

  @classmethod
  def load(
    cls,
    directory: str,
    *,
    tokenizer: str | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    mesh: Mesh | None = None,
    shard_params: bool = True,
    compute_dtype: str | None = None,
    out_dtype=jnp.bfloat16,
  ) -> 'TextEncoder':
    """Loads a `convert_t5` output directory (and its `spiece.model` by default)."""
    mesh = mesh or data_mesh()
    checkpoints.read_config(directory)  # Fails first, and clearly, on a wrong path.
    vocab = tokenizer or checkpoints.vocab_path(directory)
    if vocab is None:
      raise FileNotFoundError(
        f'{directory} has no {checkpoints.VOCAB_FILE}; pass the SentencePiece model '
        'explicitly (convert_t5 --vocab=... stores it next to the weights).'
      )
    config, params = checkpoints.load_t5(
      directory, mesh=mesh, rules=encode_rules(shard_params), compute_dtype=compute_dtype
    )
    return cls(
      config, params, Tokenizer(vocab), max_length=max_length, mesh=mesh, out_dtype=out_dtype
    )

  @property
  def num_devices(self) -> int:
    return self.mesh.shape['data']

  def encode_ids(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Runs T5 on token ids; pads the batch to a multiple of the device count."""
    n = ids.shape[0]
    pad = -n % self.num_devices
    if pad:
      ids = np.concatenate([ids, np.zeros((pad, ids.shape[1]), ids.dtype)])
      mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), bool)])
    return np.asarray(self._encode(self.params, ids, mask))[:n]

  def __call__(self, prompts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """`(text_emb [B, L, D], text_mask [B, L])` for `prompts`."""
    tok = self.tokenizer(prompts, self.max_length)
    return self.encode_ids(tok.ids, tok.mask), tok.mask


def read_captions(path: str) -> list[str]:
  """One caption per line (UTF-8); blank lines are skipped (and counted in the log)."""
  try:
    with open(path, encoding='utf-8') as f:
      lines = f.read().splitlines()
  except UnicodeDecodeError as e:
    raise ValueError(f'{path} is not UTF-8 text ({e}).') from None
  captions = [line for line in lines if line.strip()]
  if len(captions) != len(lines):
    log.warning('%s: skipped %d blank lines.', path, len(lines) - len(captions))
  if not captions:
    raise ValueError(f'{path} holds no captions (one per line expected).')
  return captions


def encode_captions(
  encoder: TextEncoder,
  captions: Sequence[str],
  output: str,
  *,
  batch_size: int = 64,
  shard_size: int = 4096,
  print_npy: str | None = None,
  print_count: int = 8,
  progress: bool = True,
  max_warnings: int = 20,
) -> dict:
  """Encodes `captions` in batches and writes them as a cache (see `text/cache.py`).

  Returns the cache metadata. `print_npy` also saves the first `print_count`
  embeddings as float32 [N, L, D] for inspection.
  """
  from tqdm import tqdm

  batch_size = -(-max(1, batch_size) // encoder.num_devices) * encoder.num_devices
  meta = {
    't5': encoder.config.to_dict(),
    'max_length': encoder.max_length,
    'dim': encoder.config.d_model,
    'dtype': 'bfloat16',
    'vocab_size': encoder.tokenizer.vocab_size,
  }
  truncated, warned, first = 0, 0, []
  bar = tqdm(total=len(captions), unit='caption', disable=not progress)

  def dispatch(start):
    nonlocal warned
    batch = captions[start : start + batch_size]
    tok = encoder.tokenizer(batch, encoder.max_length, warn=warned < max_warnings)
    warned += int(tok.truncated.sum())
    ids, mask = tok.ids, tok.mask
    pad = batch_size - len(batch)  # Keep one static shape: one compilation.
    if pad:
      ids = np.concatenate([ids, np.zeros((pad, ids.shape[1]), ids.dtype)])
      mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), bool)])
    return batch, tok, encoder._encode(encoder.params, ids, mask)  # pylint: disable=protected-access

  with cache_lib.CacheWriter(output, len(captions), shard_size=shard_size, metadata=meta) as writer:
    pending = dispatch(0)
    for start in range(0, len(captions), batch_size):
      # Dispatch the next batch before fetching this one: the device stays busy
      # while the host writes records.
      nxt = dispatch(start + batch_size) if start + batch_size < len(captions) else None
      batch, tok, emb = pending
      emb = np.asarray(emb)
      for i, caption in enumerate(batch):
        writer.write(caption, tok.ids[i], emb[i], tok.mask[i])
      truncated += int(tok.truncated.sum())
      if print_npy and len(first) < print_count:
        first.extend(emb[: print_count - len(first)].astype(np.float32))
      bar.update(len(batch))
      pending = nxt
  bar.close()
  if truncated:
    log.warning(
      '%d of %d captions were longer than max_length=%d and truncated.',
      truncated,
      len(captions),
      encoder.max_length,
    )
  if print_npy:
    os.makedirs(os.path.dirname(os.path.abspath(print_npy)), exist_ok=True)
    np.save(print_npy, np.stack(first))
  return dict(meta, num_records=len(captions), truncated=truncated)
