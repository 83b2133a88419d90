"""Optional dependencies: a missing one is one message naming the extra that installs it."""

import importlib


class MissingDependencyError(ImportError):
  """An optional dependency is not installed; the message says which extra installs it."""


def require(module: str, extra: str, needed_for: str):
  """`module`, imported; MissingDependencyError naming `extra` when it is not installed."""
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    if e.name is None or module.split('.')[0] != e.name.split('.')[0]:
      raise  # the module is there but something it imports is not: its own error says what
    raise MissingDependencyError(
      f'{needed_for} needs {module}, which is not installed: '
      f"pip install 'imagen_video_jax[{extra}]'"
    ) from None
