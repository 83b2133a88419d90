"""Benchmark scripts (`python -m benchmarks.run`); not part of the installed package."""
