#!/usr/bin/env bash
# The whole Moving Digits cascade in one command: world -> base, TSR, SSR -> export -> judge.
#
#   launch/digits_cascade.sh [--dry-run] [--budget_secs=480] [--runs=runs/digits]
#       [--output=checkpoints/digits] [--eval_samples=100] [--sequential]
#       [--python=.venv/bin/python] [--tiny] [-- TRAIN_FLAGS...]
#
# 1. `train --data_only` makes the world and its vocabulary once, in RUNS/data/ (each
#    stage gets --data_root=RUNS/data, so the three share it; a --config.data.dir in
#    TRAIN_FLAGS names the world instead);
# 2. the three stages train at once, each for --budget_secs of wall clock
#    (`--config.stop_after_secs`; --sequential: one after the other, each its budget), with
#    logs in RUNS/<stage>/train.log; on one GPU each process takes a third of its memory;
# 3. `export_cascade` writes their EMA weights to --output (which must not hold a cascade);
# 4. `evaluate --mode=adherence` scores --eval_samples prompts per group (0: skip) into
#    --output/adherence.json.
# TRAIN_FLAGS go to every stage (e.g. --config.data.batch_size=128). Every step resumes:
# run the same command again to train each stage for another budget, then export again
# to a new --output. --tiny trains the configs' tiny variants (a check of the whole chain
# in minutes on a CPU). --dry-run prints the commands and runs nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_digits_common.sh"

BUDGET=480 RUNS='runs/digits' OUTPUT='checkpoints/digits' EVAL=100 SEQ=0 DRY=0 TINY=''
PY="${PYTHON:-.venv/bin/python}"
EXTRA=()
while (($#)); do
  case "$1" in
    --dry-run) DRY=1 ;;
    --budget_secs=*) BUDGET="${1#*=}" ;;
    --runs=*) RUNS="${1#*=}" ;;
    --output=*) OUTPUT="${1#*=}" ;;
    --eval_samples=*) EVAL="${1#*=}" ;;
    --sequential) SEQ=1 ;;
    --tiny) TINY=',tiny=True' ;;
    --python=*) PY="${1#*=}" ;;
    --) shift; EXTRA+=("$@"); break ;;
    *) echo "digits_cascade.sh: unknown argument $1 (TRAIN_FLAGS go after --)" >&2; exit 2 ;;
  esac
  shift
done
if ! [[ "$BUDGET" =~ ^[0-9]+$ && "$EVAL" =~ ^[0-9]+$ ]]; then
  echo "digits_cascade.sh: --budget_secs and --eval_samples take whole numbers" >&2
  exit 2
fi
if [[ $DRY == 0 && -e "$OUTPUT/cascade.json" ]]; then
  echo "digits_cascade.sh: $OUTPUT already holds a cascade; give a new --output" >&2
  exit 2
fi

world_root

stage_cmd() {  # CMD: the train command of one stage
  CMD=("$PY" -m imagen_video_jax.train "--config=configs/digits.py:stage=$1$TINY"
       "--workdir=$RUNS/$1" "${ROOT[@]}" "--config.stop_after_secs=$BUDGET" "${EXTRA[@]}")
}

DATA=("$PY" -m imagen_video_jax.train "--config=configs/digits.py:stage=base$TINY"
      --workdir="$RUNS/base" "${ROOT[@]}" --data_only "${EXTRA[@]}")
EXPORT=("$PY" -m imagen_video_jax.export_cascade --output="$OUTPUT"
        --run="$RUNS/base" --run="$RUNS/tsr" --run="$RUNS/ssr")
EVALUATE=("$PY" -m imagen_video_jax.evaluate --mode=adherence --checkpoints="$OUTPUT"
          --num_samples="$EVAL" --output="$OUTPUT/adherence.json" --noprogress)

if [[ $DRY == 1 ]]; then
  show "${DATA[@]}"
  for s in base tsr ssr; do
    stage_cmd $s
    if [[ $SEQ == 1 ]]; then show "${CMD[@]}"; else echo "$(show "${CMD[@]}") &"; fi
  done
  [[ $SEQ == 1 ]] || echo wait
  show "${EXPORT[@]}"
  [[ $EVAL == 0 ]] || show "${EVALUATE[@]}"
  exit 0
fi

one_machine_env
t0=$SECONDS
"${DATA[@]}"
echo "[digits_cascade] world ready after $((SECONDS - t0)) s"
pids=()
for s in base tsr ssr; do
  mkdir -p "$RUNS/$s"
  stage_cmd $s
  echo "[digits_cascade] $(show "${CMD[@]}") >> $RUNS/$s/train.log"
  if [[ $SEQ == 1 ]]; then
    "${CMD[@]}" >> "$RUNS/$s/train.log" 2>&1 || { tail -5 "$RUNS/$s/train.log"; exit 1; }
    tail -2 "$RUNS/$s/train.log"
  else
    "${CMD[@]}" >> "$RUNS/$s/train.log" 2>&1 &
    pids+=($!)
  fi
done
failed=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || failed=1
done
for s in base tsr ssr; do
  echo "[digits_cascade] $s: $(grep '^step ' "$RUNS/$s/train.log" | tail -1)"
done
if [[ $failed == 1 ]]; then
  echo "[digits_cascade] a stage failed; see $RUNS/*/train.log" >&2
  tail -5 "$RUNS"/*/train.log >&2
  exit 1
fi
echo "[digits_cascade] trained after $((SECONDS - t0)) s"
"${EXPORT[@]}"
if [[ $EVAL != 0 ]]; then
  "${EVALUATE[@]}"
fi
echo "[digits_cascade] done after $((SECONDS - t0)) s: $OUTPUT"
