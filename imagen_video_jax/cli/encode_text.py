r"""Precomputes T5 embeddings of captions into an ArrayRecord cache for training.

  python -m imagen_video_jax.encode_text --t5=DIR --captions=FILE --output=DIR \
      [--batch_size=64] [--max_length=128] [--print_npy=first.npy]

--t5 is a `convert_t5` output; --captions holds one UTF-8 caption per line. Batches
are sharded over the local devices. The output directory holds ArrayRecord shards of
(caption, token ids, bfloat16 embeddings, mask) and metadata.json; the data pipeline
reads it with `imagen_video_jax.text.cache.CacheReader`.
"""
import os

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string('t5', None, 'Converted T5 directory (python -m '
                    'imagen_video_jax.convert_t5).')
flags.DEFINE_string('captions', None, 'Text file, one caption per line.')
flags.DEFINE_string('output', None, 'Directory for the embedding cache.')
flags.DEFINE_string('tokenizer', None, 'SentencePiece model (default: the one in --t5).')
flags.DEFINE_integer('max_length', 128, 'Tokens per caption, EOS included.')
flags.DEFINE_integer('batch_size', 64, 'Global batch (rounded up to the device count).')
flags.DEFINE_integer('shard_size', 4096, 'Records per ArrayRecord shard.')
flags.DEFINE_enum('compute_dtype', None, ['float32', 'bfloat16'],
                  'Activation dtype (default: as converted).')
flags.DEFINE_bool('shard_params', True, 'Shard T5 parameters over the devices (FSDP).')
flags.DEFINE_string('print_npy', None, 'Also save the first embeddings here (.npy).')
flags.DEFINE_integer('print_count', 8, 'How many captions --print_npy saves.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')


def main(argv):
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Keep orbax/XLA INFO chatter out.
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  for name in ('t5', 'captions', 'output'):
    if not FLAGS[name].value:
      raise app.UsageError(f'--{name} is required.')
  if FLAGS.max_length < 1 or FLAGS.batch_size < 1 or FLAGS.shard_size < 1:
    raise app.UsageError('--max_length, --batch_size and --shard_size must be >= 1.')
  if os.path.exists(FLAGS.output) and os.listdir(FLAGS.output):
    raise SystemExit(f'encode_text: {FLAGS.output} exists and is not empty.')
  from imagen_video_jax.text import checkpoints, encoder
  try:
    captions = encoder.read_captions(FLAGS.captions)
    enc = encoder.TextEncoder.load(
        FLAGS.t5, tokenizer=FLAGS.tokenizer, max_length=FLAGS.max_length,
        shard_params=FLAGS.shard_params, compute_dtype=FLAGS.compute_dtype)
  except (OSError, ValueError, checkpoints.CheckpointError) as e:
    raise SystemExit(f'encode_text: {e}') from None
  meta = encoder.encode_captions(
      enc, captions, FLAGS.output, batch_size=FLAGS.batch_size,
      shard_size=FLAGS.shard_size, print_npy=FLAGS.print_npy,
      print_count=FLAGS.print_count, progress=FLAGS.progress)
  print(f'Encoded {meta["num_records"]} captions on {enc.num_devices} device(s) into '
        f'{FLAGS.output} ([{meta["max_length"]}, {meta["dim"]}] bfloat16 each; '
        f'{meta["truncated"]} truncated).')
  if FLAGS.print_npy:
    print(f'First {min(FLAGS.print_count, len(captions))} embeddings (float32) saved '
          f'to {FLAGS.print_npy}.')


if __name__ == '__main__':
  app.run(main)
