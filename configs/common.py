"""What the config files share: the module `imagen_video_jax.configs.common`."""

from imagen_video_jax.configs import common as _config


def __getattr__(name):
  return getattr(_config, name)
