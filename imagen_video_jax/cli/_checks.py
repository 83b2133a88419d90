"""Checks of command-line arguments that run before any model is loaded."""

from __future__ import annotations

import os
import tempfile


class Refusal(SystemExit):
  """A bad argument or input: exits with status 1 and one line on stderr, no traceback
  (absl's app.UsageError would print the whole usage text)."""

  def __init__(self, message: str):
    super().__init__(f'error: {message}')


def check_writable_parent(flag: str, path: str) -> None:
  """Refuses (`Refusal`) an output path whose folder cannot be made or written.

  The nearest existing folder above `path` must be a directory this process can
  create files in (probed with a temporary file that is removed at once).
  """
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise Refusal(f'--{flag}={path}: {parent} is a file, not a directory')
  try:
    with tempfile.TemporaryFile(dir=parent):
      pass
  except OSError as e:
    raise Refusal(f'--{flag}={path}: cannot write in {parent} ({e.strerror})') from None


def quiet_logs() -> None:
  """Library logs (absl, orbax, jax: INFO lines such as "Unable to initialize backend
  'tpu'") stay out of a command's output unless --verbosity asks for them: warnings and
  errors still show. Call at the start of main(), before jax is imported."""
  from absl import flags, logging

  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # XLA's C++ INFO lines
