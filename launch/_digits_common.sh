# Shared by launch/digits_cascade.sh and launch/distill_digits.sh (sourced, not run).

# show ARGS...: the command line, quoted so that a shell reads it back as these words.
show() { printf '%q ' "$@" | sed 's/ $//'; echo; }

# ROOT: the jobs' --data_root=RUNS/data (the stages share one world, made once), unless
# EXTRA names the world itself with --config.data.dir. Needs RUNS and EXTRA set.
world_root() {
  ROOT=(--data_root="$RUNS/data")
  local a
  for a in "${EXTRA[@]}"; do
    [[ "$a" == --config.data.dir=* ]] && ROOT=()
  done
  return 0
}

# The environment of three jobs sharing one machine.
one_machine_env() {
  export PYTHONUNBUFFERED=1
  # One GPU, three processes: each may take a third of its memory (JAX's default is 75%).
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.3}"
  export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/jax}"
}
