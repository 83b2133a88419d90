r"""Precomputes T5 embeddings of captions into an ArrayRecord cache for training.

  python -m imagen_video_jax.encode_text --t5=DIR --captions=FILE --output=DIR \
      [--batch_size=64] [--max_length=128] [--print_npy=first.npy]

--t5 is a `convert_t5` output; --captions holds one UTF-8 caption per line. Batches
are sharded over the local devices. The output directory holds ArrayRecord shards of
(caption, token ids, bfloat16 embeddings, mask) and metadata.json; the data pipeline
reads it with `imagen_video_jax.text.cache.CacheReader`.

The encoder computes in the dtype of its stored weights unless --compute_dtype says
otherwise: float32 weights (convert_t5's default) run in float32, bfloat16 weights in
bfloat16. The dtype recorded in the converted config (convert_t5 --compute_dtype) is
not the default here: bfloat16 activations move a random T5's embeddings by several
bfloat16 steps, far more than the cache's own bfloat16 rounding.
"""

import os

from absl import app, flags, logging

_T5 = flags.DEFINE_string(
  't5', None, 'Converted T5 directory (python -m imagen_video_jax.convert_t5).'
)
_CAPTIONS = flags.DEFINE_string('captions', None, 'Text file, one caption per line.')
_OUTPUT = flags.DEFINE_string('output', None, 'Directory for the embedding cache.')
_TOKENIZER = flags.DEFINE_string(
  'tokenizer', None, 'SentencePiece model (default: the one in --t5).'
)
_MAX_LENGTH = flags.DEFINE_integer('max_length', 128, 'Tokens per caption, EOS included.')
_BATCH_SIZE = flags.DEFINE_integer(
  'batch_size', 64, 'Global batch (rounded up to the device count).'
)
_SHARD_SIZE = flags.DEFINE_integer('shard_size', 4096, 'Records per ArrayRecord shard.')
_COMPUTE_DTYPE = flags.DEFINE_enum(
  'compute_dtype',
  None,
  ['float32', 'bfloat16'],
  "Activation dtype (default: the stored weights' dtype, float32 for float32 weights).",
)
_SHARD_PARAMS = flags.DEFINE_bool(
  'shard_params', True, 'Shard T5 parameters over the devices (FSDP).'
)
_PRINT_NPY = flags.DEFINE_string('print_npy', None, 'Also save the first embeddings here (.npy).')
_PRINT_COUNT = flags.DEFINE_integer('print_count', 8, 'How many captions --print_npy saves.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')


def weights_dtype(t5_dir: str) -> str:
  """The dtype a converted encoder's parameters are stored in ('float32' if unrecorded)."""
  from imagen_video_jax.text import checkpoints

  _, meta = checkpoints.read_config(t5_dir)
  dtype = str(meta.get('param_dtype', 'float32'))
  return dtype if dtype in ('float32', 'bfloat16') else 'float32'


def main(argv):
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Keep orbax/XLA INFO chatter out.
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  for required in (_T5, _CAPTIONS, _OUTPUT):
    if not required.value:
      raise app.UsageError(f'--{required.name} is required.')
  if _MAX_LENGTH.value < 1 or _BATCH_SIZE.value < 1 or _SHARD_SIZE.value < 1:
    raise app.UsageError('--max_length, --batch_size and --shard_size must be >= 1.')
  if os.path.exists(_OUTPUT.value) and os.listdir(_OUTPUT.value):
    raise SystemExit(f'encode_text: {_OUTPUT.value} exists and is not empty.')
  from imagen_video_jax.text import checkpoints, encoder

  try:
    captions = encoder.read_captions(_CAPTIONS.value)
    enc = encoder.TextEncoder.load(
      _T5.value,
      tokenizer=_TOKENIZER.value,
      max_length=_MAX_LENGTH.value,
      shard_params=_SHARD_PARAMS.value,
      compute_dtype=_COMPUTE_DTYPE.value or weights_dtype(_T5.value),
    )
  except (OSError, ValueError, checkpoints.CheckpointError) as e:
    raise SystemExit(f'encode_text: {e}') from None
  meta = encoder.encode_captions(
    enc,
    captions,
    _OUTPUT.value,
    batch_size=_BATCH_SIZE.value,
    shard_size=_SHARD_SIZE.value,
    print_npy=_PRINT_NPY.value,
    print_count=_PRINT_COUNT.value,
    progress=_PROGRESS.value,
  )
  print(
    f'Encoded {meta["num_records"]} captions on {enc.num_devices} device(s) into '
    f'{_OUTPUT.value} ([{meta["max_length"]}, {meta["dim"]}] bfloat16 each; '
    f'{meta["truncated"]} truncated).'
  )
  if _PRINT_NPY.value:
    print(
      f'First {min(_PRINT_COUNT.value, len(captions))} embeddings (float32) saved '
      f'to {_PRINT_NPY.value}.'
    )


if __name__ == '__main__':
  app.run(main)
