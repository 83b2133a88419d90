"""Moving Digits as a TensorFlow Datasets builder, readable with ``tfds.data_source``.

The builder renders the same examples as :mod:`imagen_video_jax.data.digits` (same
seed, same pixels) into TFDS's ArrayRecord layout, so tools that speak TFDS can read the
world, and the grain pipeline can take a TFDS split as its source::

  from imagen_video_jax.data import tfds_builder
  tfds_builder.build("tiny", data_dir="data/tfds")          # or MovingDigits(...)
  splits = tfds.data_source("moving_digits/tiny", data_dir="data/tfds")
  pipeline.make_pipeline(stage, config, splits["videos"], splits["images"])

Neither building nor reading needs TensorFlow: features are plain uint8/float tensors
and text (no image or video codecs, which would need TF), and the file format is
``array_record``. Splits: ``videos`` (training clips, never a held-out combination),
``images`` (still images, all combinations) and ``eval_videos`` (held-out ones only).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from imagen_video_jax._optional import require
from imagen_video_jax.data import digits

tfds = require('tensorflow_datasets', 'tfds', 'The Moving Digits TFDS builder')
from etils import epath  # noqa: E402  (tensorflow_datasets installs it)

_SPLITS = {'videos': 'video', 'images': 'image', 'eval_videos': 'eval_video'}


@dataclasses.dataclass
class MovingDigitsConfig(tfds.core.BuilderConfig):
  """A size of the Moving Digits world (fields as in ``digits.DigitsConfig``)."""

  num_videos: int = 10_000
  num_images: int = 10_000
  num_eval_videos: int = 500
  seed: int = 0
  frames: int = 16
  size: int = 32
  fps: int = 8
  held_out: tuple[tuple[int, str, str], ...] = digits.DEFAULT_HELD_OUT
  bounce: bool = False

  @property
  def world(self) -> digits.DigitsConfig:
    return digits.DigitsConfig(
      frames=self.frames,
      size=self.size,
      fps=self.fps,
      held_out=tuple(tuple(c) for c in self.held_out),
      bounce=self.bounce,
    )


class MovingDigits(tfds.core.GeneratorBasedBuilder):
  """Coloured handwritten digits moving on black, captioned "a red 3 moving left"."""

  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {
    '1.0.0': 'First release.',
    '2.0.0': 'World v2 by default: no bounces (bounce=True gives the v1 clips).',
  }
  BUILDER_CONFIGS = [
    MovingDigitsConfig(name='default', description='10k clips, 10k images, 32x32.'),
    MovingDigitsConfig(
      name='tiny',
      description='Tests: 64 clips, 64 images.',
      num_videos=64,
      num_images=64,
      num_eval_videos=16,
    ),
  ]
  DEFAULT_CONFIG_NAME = 'default'

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds 4.9.10 finds this file through `importlib_resources`, a backport it only
    # requires on Python < 3.9 and then imports anyway; point it here directly.
    return epath.Path(__file__)

  def __init__(self, *, file_format: str | None = None, **kwargs):
    # ArrayRecord is the only format that random access (and grain) can use.
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    return tfds.core.DatasetInfo(
      builder=self,
      description=MovingDigits.__doc__,
      features=tfds.features.FeaturesDict(
        {
          # T is frames for clips, 1 for still images.
          'video': tfds.features.Tensor(shape=(None, c.size, c.size, 3), dtype=np.uint8),
          'caption': tfds.features.Text(),
          'fps': np.float32,
          'digit': np.int32,
          'colour': tfds.features.Text(),
          'direction': tfds.features.Text(),  # "" for still images
          'positions': tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
        }
      ),
      supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is downloaded: scikit-learn bundles the glyphs
    c = self.builder_config
    counts = {'videos': c.num_videos, 'images': c.num_images, 'eval_videos': c.num_eval_videos}
    return {
      split: self._generate_examples(kind, counts[split])
      for split, kind in _SPLITS.items()
      if counts[split] > 0
    }

  def _generate_examples(self, kind: str, num: int):
    c = self.builder_config
    for i, ex in enumerate(digits.generate(c.world, c.seed, kind, num)):
      yield (
        f'{kind}_{i:08d}',
        {
          'video': ex.video,
          'caption': ex.caption,
          'fps': np.float32(ex.fps),
          'digit': np.int32(ex.meta['digit']),
          'colour': ex.meta['colour'],
          'direction': ex.meta['direction'] or '',
          'positions': ex.arrays['positions'],
        },
      )


def build(config: str | MovingDigitsConfig, data_dir: str) -> MovingDigits:
  """Builds (or finds already built) Moving Digits under ``data_dir``.

  ``config`` is a registered name (``"default"``, ``"tiny"``) or a MovingDigitsConfig
  with its own name; read it back with
  ``tfds.data_source(f"moving_digits/{name}", data_dir=data_dir)``.
  """
  builder = MovingDigits(data_dir=data_dir, config=config)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder
