"""Test helpers: multi-process jax.distributed jobs on localhost, a test file's tests re-run
on fake devices, work shared by the pytest-xdist workers of one session, and hooks into a
training run.

The coordinator's port. A port found by binding port 0 and releasing it may be taken
before the coordinator binds it (by another test's job, or as the local end of any
outgoing connection). A second coordinator on a taken port does not even fail: gRPC
binds with SO_REUSEPORT, the processes of the two jobs register with each other's
services, and both jobs die. So `local_job` *holds* the port for the job's lifetime, with
a socket that sets SO_REUSEPORT too and never listens: the coordinator (same user, also
reuse-port) can bind it, but the kernel gives it to no port-0 bind and no outgoing
connection. Should the coordinator fail to bind all the same ('Failed to add port'),
the job is started again on a new port, a bounded number of times.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
from typing import Callable, Sequence

import numpy as np

PORT_TAKEN = 'Failed to add port to server'  # what jax's coordinator logs when it cannot bind


@contextlib.contextmanager
def held_port():
  """A free port, kept from everyone but a SO_REUSEPORT binder (the coordinator) meanwhile."""
  with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(('', 0))
    yield s.getsockname()[1]


def _listening(port: int) -> bool:
  try:
    with socket.create_connection(('127.0.0.1', port), timeout=1):
      return True
  except OSError:
    return False


class Job:
  """The processes of one job; process i's stdout and stderr go to `logs[i]`."""

  def __init__(self, procs: list, logs: list, port: int, tries: int):
    self.procs, self.logs, self.port, self.tries = procs, logs, port, tries

  def output(self, i: int) -> str:
    self.logs[i].flush()
    self.logs[i].seek(0)
    return self.logs[i].read()

  def wait_for(self, text: str, i: int = 0, timeout: float = 300) -> None:
    """Until process i has printed `text`; fails if any process exits first."""
    deadline = time.monotonic() + timeout
    while text not in self.output(i):
      assert time.monotonic() < deadline and all(p.poll() is None for p in self.procs), (
        f'waiting for {text!r}:\n' + self.outputs_tail()
      )
      time.sleep(0.2)

  def wait(self, timeout: float = 600) -> list[int | None]:
    """Waits up to `timeout` s for every process; their exit codes (None: killed at the
    timeout)."""
    deadline = time.monotonic() + timeout
    codes = []
    for p in self.procs:
      try:
        codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
      except subprocess.TimeoutExpired:
        codes.append(None)
    self.kill()
    return codes

  def finish(self, timeout: float = 600) -> list[str]:
    """Waits for every process; asserts each exited 0; returns their outputs."""
    codes = self.wait(timeout)
    assert codes == [0] * len(self.procs), f'exit codes {codes}:\n' + self.outputs_tail()
    return [self.output(i) for i in range(len(self.procs))]

  def outputs_tail(self, chars: int = 3000) -> str:
    return '\n'.join(
      f'--- process {i}:\n' + self.output(i)[-chars:] for i in range(len(self.procs))
    )

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()


@contextlib.contextmanager
def local_job(
  command: Sequence[str],
  env: Callable[[int, str], dict],
  log_prefix: pathlib.Path,
  *,
  num_processes: int = 2,
  cwd: str | None = None,
  tries: int = 3,
  first_port: int | None = None,
  startup_timeout: float = 300,
):
  """Starts `command` as processes 0..n-1 of one jax.distributed job; yields a `Job`.

  `env(i, coordinator)` is process i's environment (`coordinator` is 'localhost:PORT').
  Yields once the coordinator listens (or process 0 has failed for another reason, for
  the caller to see); kills what is left on exit. `first_port`: a port to try first (to
  test the retry).
  """
  for attempt in range(1, tries + 1):
    with contextlib.ExitStack() as stack:
      if attempt == 1 and first_port is not None:
        port = first_port
      else:
        port = stack.enter_context(held_port())
      procs, logs = [], []
      job = Job(procs, logs, port, attempt)
      try:
        for i in range(num_processes):
          log = stack.enter_context(open(f'{log_prefix}.{attempt}.{i}.log', 'w+'))
          logs.append(log)
          procs.append(
            subprocess.Popen(
              list(command),
              cwd=cwd,
              env=env(i, f'localhost:{port}'),
              stdout=log,
              stderr=subprocess.STDOUT,
              text=True,
            )
          )
        deadline = time.monotonic() + startup_timeout
        while not _listening(port) and procs[0].poll() is None:
          assert time.monotonic() < deadline, 'no coordinator:\n' + job.outputs_tail()
          time.sleep(0.2)
        if procs[0].poll() is not None and PORT_TAKEN in job.output(0) and attempt < tries:
          continue  # (the finally below kills the others)
        yield job
        return
      finally:
        job.kill()


def rerun_on_fake_devices(test_file: str, select: str, passed: int, devices: int = 8) -> None:
  """Runs `test_file`'s tests matching `-k select` in a subprocess with `devices` fake CPU
  devices (XLA_FLAGS must be set before jax starts, so a test cannot set it for itself),
  and asserts that exactly `passed` of them passed. LLVM's optimisations off: they are
  most of the compile time and change no numbers."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} '
    '--xla_backend_optimization_level=0',
  )
  cmd = [sys.executable, '-m', 'pytest', '-q', '-x', '-p', 'no:cacheprovider', test_file]
  proc = subprocess.run(
    [*cmd, '-k', select], env=env, capture_output=True, text=True, timeout=600, cwd=root
  )
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
  assert f'{passed} passed' in proc.stdout, proc.stdout[-3000:]


def override(config, overrides: dict):
  """Sets `config`'s dotted fields ({'data.dir': ..., 'optim.lr': ...}); returns it."""
  for k, v in overrides.items():
    node = config
    *path, last = k.split('.')
    for p in path:
      node = node[p]
    node[last] = v
  return config


def shared_dir(tmp_path_factory, name: str) -> pathlib.Path:
  """A directory that every xdist worker of this session sees (the session's own without)."""
  base = tmp_path_factory.getbasetemp()
  if base.name == f'popen-{os.environ.get("PYTEST_XDIST_WORKER")}':
    base = base.parent  # an xdist worker's <basetemp>/popen-gwN -> the session's <basetemp>
  path = base / name
  path.mkdir(exist_ok=True)
  return path


def once(directory: pathlib.Path, make: Callable[[pathlib.Path], None]) -> pathlib.Path:
  """Runs `make(directory)` once per session, whichever xdist worker asks first; the others
  wait for it. (A failed `make` leaves no mark: the next caller tries again.)"""
  import filelock

  with filelock.FileLock(f'{directory}.lock'):
    done = directory / '.done'
    if not done.exists():
      directory.mkdir(parents=True, exist_ok=True)
      try:
        make(directory)
      except BaseException:
        shutil.rmtree(directory, ignore_errors=True)  # the next caller starts afresh
        raise
      done.touch()
  return directory


@contextlib.contextmanager
def recording_samples():
  """While active, training's sample videos are also saved as floats, `<gif>.npy`."""
  from imagen_video_jax.training import metrics

  video = metrics.MetricWriter.video

  def recording(self, step, tag, videos, *args, **kwargs):
    path = video(self, step, tag, videos, *args, **kwargs)
    if path:
      np.save(f'{path}.npy', np.asarray(videos))
    return path

  metrics.MetricWriter.video = recording
  try:
    yield
  finally:
    metrics.MetricWriter.video = video


def counting(module, name: str):
  """Replaces module.name by a wrapper that counts its calls (in `.calls`); returns it."""
  fn = getattr(module, name)

  def counted(*args, **kwargs):
    counted.calls += 1
    return fn(*args, **kwargs)

  counted.calls = 0
  setattr(module, name, counted)
  return counted
