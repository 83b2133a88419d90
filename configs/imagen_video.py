r"""The paper's seven-stage cascade config, as a file for --config: the module
`imagen_video_jax.configs.imagen_video` (its docstring has the table of stages).

  python -m imagen_video_jax.train --config=configs/imagen_video.py:stage=base \
      --workdir=gs://BUCKET/imagen_video/base --config.data.dir=data/videos \
      --config.text.cache_dir=data/text_cache

  # what a stage is, without allocating it (parameter count of every stage, ~20 s)
  python -c "import imagen_video_jax.configs.imagen_video as c; c.print_summary()"
"""

from imagen_video_jax.configs import imagen_video as _config
from imagen_video_jax.configs.imagen_video import STAGES, get_config  # noqa: F401


def __getattr__(name):  # every other name (PAPER_PARAMS, param_count, ...) from the package
  return getattr(_config, name)
