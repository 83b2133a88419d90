#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one task (process) per node, all its GPUs each.
#
#   launch/slurm_gpu.sh [--dry-run] [--nodes=4] [--gpus-per-node=8] [--partition=P]
#       [--time=48:00:00] [--account=A] [--venv=.venv] -- \
#       --config=configs/imagen_video.py:stage=base --workdir=/shared/runs/base
#
# Outside a job it submits itself: `sbatch --nodes=N --ntasks-per-node=1
# --gpus-per-node=G ... launch/slurm_gpu.sh TRAIN_ARGS`. Inside the job (SLURM_JOB_ID
# set) it runs `srun` with one task per node, each exporting IVJ_COORDINATOR (first node,
# port IVJ_PORT or 12345), IVJ_NUM_PROCESSES (SLURM_NTASKS) and IVJ_PROCESS_ID
# (SLURM_PROCID), which parallel.initialize_distributed reads (jax's own SLURM
# detection reads the same SLURM_* variables), then `python -m imagen_video_jax.train
# --distributed TRAIN_ARGS`. --dry-run prints the commands and runs nothing. The workdir
# must be on a filesystem every node sees; re-submitting resumes the run.
set -euo pipefail

NODES=2 GPUS=8 PARTITION='' TIME='' ACCOUNT='' VENV='.venv' DRY=0
ARGS=()
while (($#)); do
  case "$1" in
    --dry-run) DRY=1 ;;
    --nodes=*) NODES="${1#*=}" ;;
    --gpus-per-node=*) GPUS="${1#*=}" ;;
    --partition=*) PARTITION="${1#*=}" ;;
    --time=*) TIME="${1#*=}" ;;
    --account=*) ACCOUNT="${1#*=}" ;;
    --venv=*) VENV="${1#*=}" ;;
    --) shift; ARGS+=("$@"); break ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done

show() { printf '%q ' "$@" | sed 's/ $//'; echo; }

if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  if ! printf '%s\n' "${ARGS[@]}" | grep -q -- '^--config' \
      || ! printf '%s\n' "${ARGS[@]}" | grep -q -- '^--workdir'; then
    echo "slurm_gpu.sh: pass the train arguments after --: --config=... --workdir=..." >&2
    exit 2
  fi
  SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
  ROOT="$(cd "$(dirname "$SCRIPT")/.." && pwd)"
  CMD=(sbatch --job-name=ivj --nodes="$NODES" --ntasks-per-node=1 --gpus-per-node="$GPUS"
       --cpus-per-task=16 --chdir="$ROOT" --output=slurm-%j.out)
  [[ -n "$PARTITION" ]] && CMD+=(--partition="$PARTITION")
  [[ -n "$TIME" ]] && CMD+=(--time="$TIME")
  [[ -n "$ACCOUNT" ]] && CMD+=(--account="$ACCOUNT")
  CMD+=("$SCRIPT" --venv="$VENV" -- "${ARGS[@]}")
  if ((DRY)); then echo "# submit:"; show "${CMD[@]}"; else "${CMD[@]}"; fi
  exit 0
fi

# ---- inside the job
if command -v scontrol >/dev/null 2>&1; then
  HEAD="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"
else  # a plain comma list (tests, dry runs)
  HEAD="${SLURM_JOB_NODELIST%%,*}"
fi
PORT="${IVJ_PORT:-12345}"
NTASKS="${SLURM_NTASKS:-${SLURM_NNODES:-1}}"
PY="$VENV/bin/python"; [[ -x "$PY" ]] || PY=python3
TRAIN="$(printf '%q ' "$PY" -m imagen_video_jax.train --distributed "${ARGS[@]}")"; TRAIN="${TRAIN% }"
TASK="export IVJ_COORDINATOR=$HEAD:$PORT IVJ_NUM_PROCESSES=$NTASKS IVJ_PROCESS_ID=\$SLURM_PROCID; exec $TRAIN"
CMD=(srun --nodes="${SLURM_NNODES:-$NTASKS}" --ntasks="$NTASKS" --ntasks-per-node=1
     --gpus-per-node="${SLURM_GPUS_PER_NODE:-$GPUS}" --kill-on-bad-exit=1 bash -c "$TASK")
if ((DRY)); then echo "# run on every node:"; show "${CMD[@]}"; exit 0; fi
echo "job $SLURM_JOB_ID: $NTASKS processes, coordinator $HEAD:$PORT"
exec "${CMD[@]}"
