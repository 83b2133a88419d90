"""Running the project's command-line programs from tests."""

import subprocess
import sys


def run_module(tool: str, *args: str, timeout: float = 300, **kwargs):
  """`python -m imagen_video_jax.<tool> ARGS` in a subprocess: its CompletedProcess, as text.

  kwargs go to subprocess.run (cwd=, env=, ...).
  """
  cmd = [sys.executable, '-m', f'imagen_video_jax.{tool}', *args]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
