r"""Converts T5 v1.1 encoder weights (Hugging Face or T5X) to an orbax checkpoint.

  python -m imagen_video_jax.convert_t5 --source=DIR --output=DIR [--vocab=spiece.model]

DIR may be a Hugging Face directory (config.json + *.safetensors, sharded or not) or
a T5X checkpoint (checkpoint_N/ with its `checkpoint` file, or the folder holding
checkpoint_N/). PyTorch pickles are refused. The output holds `params/` (orbax),
`t5_config.json` and `spiece.model`; read it with `imagen_video_jax.load_t5(DIR)`.
"""

import os

from absl import app, flags, logging

_SOURCE = flags.DEFINE_string('source', None, 'Hugging Face directory or T5X checkpoint.')
_OUTPUT = flags.DEFINE_string('output', None, 'Directory for the converted encoder.')
_VOCAB = flags.DEFINE_string(
  'vocab',
  None,
  'SentencePiece model to store with the weights (default: spiece.model from --source, if any).',
)
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Stored parameter dtype.')
_COMPUTE_DTYPE = flags.DEFINE_enum(
  'compute_dtype',
  'bfloat16',
  ['float32', 'bfloat16'],
  'Activation dtype recorded in the config (load_t5 can override it).',
)
_MAX_DISTANCE = flags.DEFINE_integer(
  'max_distance',
  128,
  'T5X only: relative_attention_max_distance '
  '(not stored in T5X checkpoints; 128 for all published models).',
)
_OVERWRITE = flags.DEFINE_bool(
  'overwrite', False, 'Replace an existing converted encoder at --output.'
)


def main(argv):
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Keep orbax/XLA INFO chatter out.
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _SOURCE.value or not _OUTPUT.value:
    raise app.UsageError('--source and --output are required.')
  import dataclasses
  import shutil

  from imagen_video_jax.text import checkpoints

  if os.path.exists(_OUTPUT.value) and os.listdir(_OUTPUT.value):
    if not (
      _OVERWRITE.value and os.path.isfile(os.path.join(_OUTPUT.value, checkpoints.CONFIG_FILE))
    ):
      raise SystemExit(
        f'convert_t5: {_OUTPUT.value} exists and is not empty; choose a '
        'new --output (or --overwrite a previous conversion).'
      )
    shutil.rmtree(_OUTPUT.value)
  vocab = _VOCAB.value or checkpoints.vocab_path(
    _SOURCE.value if os.path.isdir(_SOURCE.value) else os.path.dirname(_SOURCE.value)
  )
  if _VOCAB.value and not os.path.isfile(_VOCAB.value):
    raise SystemExit(f'convert_t5: --vocab {_VOCAB.value} does not exist.')
  import jax
  import numpy as np

  # Parameters are spread ('embed' axis, FSDP-style) over every device: on an
  # accelerator host, or several hosts, none holds the whole encoder.
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('fsdp',))
  try:
    config, params = checkpoints.load_source(
      _SOURCE.value,
      mesh=mesh,
      dtype=_DTYPE.value,
      relative_attention_max_distance=_MAX_DISTANCE.value,
    )
  except (checkpoints.CheckpointError, ValueError) as e:
    raise SystemExit(f'convert_t5: {e}') from None
  config = dataclasses.replace(config, dtype=_COMPUTE_DTYPE.value)
  out = checkpoints.save_t5(
    _OUTPUT.value, config, params, vocab=vocab, source=os.path.abspath(_SOURCE.value)
  )
  print(
    f'Wrote a {config.num_params() / 1e6:.1f}M-parameter T5 v1.1 encoder '
    f'({config.num_layers} layers, d_model {config.d_model}) to {out}'
    + ('' if vocab else ' (no vocabulary: pass --vocab to store one)')
  )


if __name__ == '__main__':
  app.run(main)
