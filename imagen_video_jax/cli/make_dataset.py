r"""Writes the Moving Digits world as ArrayRecord shards (or a TFDS dataset).

  python -m imagen_video_jax.make_dataset --world=digits --output=data/digits \
      --num_videos=10000 --num_images=10000

writes ``videos-*``, ``images-*`` (and with ``--num_eval_videos``, ``eval_videos-*``,
the held-out combinations) plus ``dataset_info.json``. ``--format=tfds`` builds the
TFDS dataset instead; read it with
``tfds.data_source("moving_digits/NAME", data_dir=OUTPUT)``.
"""

import os
import sys

from absl import app, flags

from imagen_video_jax.data import digits

_WORLD = flags.DEFINE_enum('world', 'digits', ['digits'], 'Which world to render.')
_OUTPUT = flags.DEFINE_string('output', None, 'Output folder (empty or new).')
_NUM_VIDEOS = flags.DEFINE_integer('num_videos', 10_000, 'Training clips.')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 10_000, 'Still images.')
_NUM_EVAL = flags.DEFINE_integer('num_eval_videos', 0, 'Clips of held-out combinations.')
_SEED = flags.DEFINE_integer('seed', 0, 'Data seed: equal seeds give equal bytes.')
_FRAMES = flags.DEFINE_integer('frames', 16, 'Frames per clip.')
_SIZE = flags.DEFINE_integer('size', 32, 'Frame height and width.')
_FPS = flags.DEFINE_integer('fps', 8, 'Frame rate of the clips.')
_BOUNCE = flags.DEFINE_bool(
  'bounce',
  False,
  'World v1: digits bounce off the walls. Default: world v2, one direction all clip '
  'long, stopping short of the far wall.',
)
_HELD_OUT = flags.DEFINE_string(
  'held_out',
  None,
  'DIGIT:COLOUR:DIRECTION,... never shown as training videos '
  "('none' for no hold-out; default: digits.DEFAULT_HELD_OUT).",
)
_PER_SHARD = flags.DEFINE_integer('per_shard', 1000, 'Examples per ArrayRecord shard.')
_WORKERS = flags.DEFINE_integer(
  'workers',
  min(8, os.cpu_count() or 1),
  'Processes rendering shards (the bytes do not depend on it).',
)
_FORMAT = flags.DEFINE_enum(
  'format', 'array_record', ['array_record', 'tfds'], 'array_record shards or a TFDS dataset.'
)
_TFDS_CONFIG = flags.DEFINE_string('tfds_config', 'custom', 'TFDS config name.')
flags.mark_flag_as_required('output')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from imagen_video_jax.cli import _checks

  _checks.quiet_logs()  # library INFO logs only with --verbosity
  try:
    held_out = (
      digits.DEFAULT_HELD_OUT if _HELD_OUT.value is None else digits.parse_held_out(_HELD_OUT.value)
    )
    config = digits.DigitsConfig(
      frames=_FRAMES.value,
      size=_SIZE.value,
      fps=_FPS.value,
      held_out=held_out,
      bounce=_BOUNCE.value,
    )
    if min(_NUM_VIDEOS.value, _NUM_IMAGES.value, _NUM_EVAL.value) < 0:
      raise ValueError('--num_videos, --num_images and --num_eval_videos must be >= 0')
    if _FORMAT.value == 'tfds':
      from imagen_video_jax.data import tfds_builder

      tfds_builder.build(
        tfds_builder.MovingDigitsConfig(
          name=_TFDS_CONFIG.value,
          num_videos=_NUM_VIDEOS.value,
          num_images=_NUM_IMAGES.value,
          num_eval_videos=_NUM_EVAL.value,
          seed=_SEED.value,
          frames=config.frames,
          size=config.size,
          fps=config.fps,
          held_out=held_out,
          bounce=config.bounce,
        ),
        data_dir=_OUTPUT.value,
      )
      print(
        f"read with tfds.data_source('moving_digits/{_TFDS_CONFIG.value}', "
        f'data_dir={_OUTPUT.value!r})'
      )
      return 0
    info = digits.write_shards(
      config,
      _SEED.value,
      _OUTPUT.value,
      _NUM_VIDEOS.value,
      _NUM_IMAGES.value,
      _NUM_EVAL.value,
      per_shard=_PER_SHARD.value,
      progress=True,
      workers=_WORKERS.value,
    )
  except (ValueError, OSError, ImportError) as e:  # ImportError: pip install '...[tfds]'
    sys.exit(f'make_dataset: {e}')
  n = sum(len(v) for v in info['shards'].values())
  print(
    f'wrote {_NUM_VIDEOS.value} videos, {_NUM_IMAGES.value} images, '
    f'{_NUM_EVAL.value} eval videos in {n} shard(s) to {_OUTPUT.value}'
  )
  return 0


if __name__ == '__main__':
  app.run(main)
