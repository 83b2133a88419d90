"""Running the project's command-line programs from tests."""

import subprocess
import sys


def run_module(tool: str, *args: str, timeout: float = 300, **kwargs):
  """`python -m imagen_video_jax.<tool> ARGS` in a subprocess: its CompletedProcess, as text.

  kwargs go to subprocess.run (cwd=, env=, ...).
  """
  cmd = [sys.executable, '-m', f'imagen_video_jax.{tool}', *args]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def preempt(cmd, marker: str, *, timeout: float = 300, **kwargs) -> tuple[int, str]:
  """Starts `cmd`, sends it SIGTERM once a line of its output starts with `marker`, waits
  for it to exit: (exit status, everything it printed). The output is read on a thread,
  so the deadline holds even if the job hangs without printing. kwargs: cwd=, env=."""
  import queue
  import signal
  import threading
  import time

  import pytest

  proc = subprocess.Popen(
    cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
  )
  try:
    lines = queue.Queue()
    threading.Thread(
      target=lambda: [lines.put(l) for l in proc.stdout] + [lines.put(None)], daemon=True
    ).start()
    seen, deadline = [], time.monotonic() + timeout
    while not seen or seen[-1] is not None and not seen[-1].startswith(marker):
      try:
        seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
      except queue.Empty:
        pytest.fail(f'no {marker!r} within {timeout} s:\n' + ''.join(filter(None, seen)))
    assert seen[-1] is not None, f'the job ended before {marker!r}:\n' + ''.join(seen[:-1])
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  while seen[-1] is not None:
    seen.append(lines.get(timeout=60))
  return code, ''.join(seen[:-1])


def job_env(cache_dir: str, root: str) -> dict:
  """The environment of a job subprocess: CPU, full-precision matmuls, the test run's
  persistent compilation cache (so it loads what the in-process runs compiled), and the
  checkout `root` on the path."""
  import os

  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    JAX_DEFAULT_MATMUL_PRECISION='highest',
    JAX_COMPILATION_CACHE_DIR=cache_dir,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
  )
  env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
  return env
