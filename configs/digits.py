r"""The Moving Digits cascade's config, as a file for --config: the module
`imagen_video_jax.configs.digits` (its docstring says more).

  python -m imagen_video_jax.train --config=configs/digits.py:stage=base --workdir=runs/digits/base
  python -m imagen_video_jax.train --config=configs/digits.py:stage=tsr --workdir=runs/digits/tsr
  python -m imagen_video_jax.train --config=configs/digits.py:stage=ssr --workdir=runs/digits/ssr

  # a tiny variant of any stage, trains in seconds (the tests use it)
  python -m imagen_video_jax.train --config=configs/digits.py:stage=base,tiny=True \
      --workdir=/tmp/digits_tiny --config.num_steps=20
"""

from imagen_video_jax.configs import digits as _config
from imagen_video_jax.configs.digits import CASCADE, STAGES, get_config  # noqa: F401


def __getattr__(name):  # every other name (CASCADE_DIR, the model tables) from the package
  return getattr(_config, name)
