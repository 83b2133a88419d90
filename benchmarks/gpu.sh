#!/usr/bin/env bash
# The accelerator benchmark on one GPU (python -m benchmarks.run --suite=gpu; see
# benchmarks/BENCHMARKS.md, 'Accelerator benchmark'). Needs the JAX CUDA build installed;
# no network. About 8 minutes. Extra arguments go to benchmarks.run, e.g.
#   benchmarks/gpu.sh --paper_batch=4 --peak_flops=756e12
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
# Let XLA hand whole GPU memory to the one process a workload runs in (no 75% cap), and
# keep its usual latency-hiding scheduler on; nothing else is changed from the defaults.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
kind="$("$PYTHON" -c 'import jax; print(jax.devices()[0].device_kind)')"
slug="$(echo "$kind" | tr 'A-Z' 'a-z' | sed -e 's/[^a-z0-9]\+/_/g' -e 's/^_//' -e 's/_$//')"
out="benchmarks/results/${slug}.json"
md="benchmarks/results/${slug}.md"
"$PYTHON" -m benchmarks.run --suite=gpu --output="$out" --markdown="$md" "$@"
echo "results: $out (JSON), $md (Markdown rows)"
