"""Timing helper shared by the micro-benchmarks."""

import time

import jax


def best_ms(f, args, iters: int = 5) -> float:
  """Best wall time of `f(*args)` over `iters` calls after one warm-up call, in ms."""
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - t)
  return min(times) * 1e3
