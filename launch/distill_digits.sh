#!/usr/bin/env bash
# Distil every stage of the Moving Digits cascade for few-step sampling, in one command:
# guidance folded into each stage, then its steps halved down to --steps; the students
# exported beside their teachers, and students and teachers scored.
#
#   launch/distill_digits.sh [--dry-run] [--teacher=checkpoints/digits] [--runs=runs/distill]
#       [--output=runs/distill/cascade] [--steps=8] [--teacher_steps=32] [--budget_secs=600]
#       [--phase_steps=0] [--eval_samples=100] [--speed_repeats=2] [--sequential]
#       [--student_dtype=float16] [--student_sampler=STAGE:SAMPLER ...]
#       [--python=.venv/bin/python] [--tiny] [-- DISTILL_FLAGS...]
#
# 1. `train --data_only` makes the cascade's world once, in RUNS/data/ (every phase gets
#    --data_root=RUNS/data; a --config.data.dir in DISTILL_FLAGS names the world instead);
# 2. per stage (the three at once; --sequential: one after the other), each phase a
#    resumable `distill` job in RUNS/<stage>/<phase>, log in RUNS/<stage>/distill.log:
#    `--phase=guidance` from the stage in --teacher, then `--phase=halving` with
#    --student_steps = teacher_steps/2, /4, ... down to --steps, each from the phase before;
#    every phase runs for --budget_secs of wall clock (--phase_steps=N: N steps instead);
# 3. `export_cascade --cascade=TEACHER --student=...` writes a copy of the teacher cascade
#    with the last students beside their stages to --output (which must not hold a cascade),
#    stored in --student_dtype (float16, as the shipped students; or float32), each
#    --student_sampler (repeatable, e.g. ssr:stepback) setting a student's sampler;
# 4. `evaluate` scores --eval_samples prompts per group (0: skip) twice, the students
#    (OUTPUT/adherence.json) and the teachers (--teacher, OUTPUT/adherence_teachers.json);
# 5. benchmarks/sampling_throughput.py times one video end to end, students then teachers
#    in this one run (--speed_repeats compiled calls each after the first; 0: skip), into
#    OUTPUT/speed_students.txt and OUTPUT/speed_teachers.txt.
# DISTILL_FLAGS go to every phase (e.g. --config.data.batch_size=128). Every phase resumes:
# the same command again runs each for another budget (with --phase_steps, a phase that has
# reached its steps returns at once). --tiny distils the configs' tiny stages (a check of
# the chain in minutes on a CPU; give it a --teacher of tiny stages). --dry-run prints the
# commands and runs nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_digits_common.sh"

TEACHER='checkpoints/digits' RUNS='runs/distill' OUTPUT='' STEPS=8 TSTEPS=32
BUDGET=600 PSTEPS=0 EVAL=100 SPEED=2 SEQ=0 DRY=0 TINY='' DTYPE=float16
PY="${PYTHON:-.venv/bin/python}"
EXTRA=() SAMPLERS=()
while (($#)); do
  case "$1" in
    --dry-run) DRY=1 ;;
    --teacher=*) TEACHER="${1#*=}" ;;
    --runs=*) RUNS="${1#*=}" ;;
    --output=*) OUTPUT="${1#*=}" ;;
    --steps=*) STEPS="${1#*=}" ;;
    --teacher_steps=*) TSTEPS="${1#*=}" ;;
    --budget_secs=*) BUDGET="${1#*=}" ;;
    --phase_steps=*) PSTEPS="${1#*=}" ;;
    --eval_samples=*) EVAL="${1#*=}" ;;
    --speed_repeats=*) SPEED="${1#*=}" ;;
    --sequential) SEQ=1 ;;
    --student_dtype=*) DTYPE="${1#*=}" ;;
    --student_sampler=*) SAMPLERS+=("$1") ;;
    --tiny) TINY=',tiny=True' ;;
    --python=*) PY="${1#*=}" ;;
    --) shift; EXTRA+=("$@"); break ;;
    *) echo "distill_digits.sh: unknown argument $1 (DISTILL_FLAGS go after --)" >&2; exit 2 ;;
  esac
  shift
done
OUTPUT="${OUTPUT:-$RUNS/cascade}"
for v in "$STEPS" "$TSTEPS" "$BUDGET" "$PSTEPS" "$EVAL" "$SPEED"; do
  if ! [[ "$v" =~ ^[0-9]+$ ]]; then
    echo "distill_digits.sh: --steps, --teacher_steps, --budget_secs, --phase_steps," \
      "--eval_samples and --speed_repeats take whole numbers" >&2
    exit 2
  fi
done
# The halving phases: teacher_steps/2, /4, ... down to --steps, which must be reached.
HALVES=() k=$TSTEPS
while ((k > STEPS && k % 2 == 0)); do k=$((k / 2)); HALVES+=("$k"); done
if ((STEPS < 1 || k != STEPS)); then
  echo "distill_digits.sh: --steps=$STEPS is not --teacher_steps=$TSTEPS halved some" \
    "number of times (e.g. 16, 8, 4, 2)" >&2
  exit 2
fi
if [[ $DTYPE != float16 && $DTYPE != float32 ]]; then
  echo "distill_digits.sh: --student_dtype is float16 or float32, not $DTYPE" >&2
  exit 2
fi
if [[ $DRY == 0 && ! -f "$TEACHER/cascade.json" ]]; then
  echo "distill_digits.sh: --teacher=$TEACHER holds no cascade.json (an exported cascade)" >&2
  exit 2
fi
if [[ $DRY == 0 && -e "$OUTPUT/cascade.json" ]]; then
  echo "distill_digits.sh: $OUTPUT already holds a cascade; give a new --output" >&2
  exit 2
fi

world_root
LIMIT=("--config.stop_after_secs=$BUDGET")
((PSTEPS > 0)) && LIMIT=("--config.num_steps=$PSTEPS")

phase_cmds() {  # CMDS: the distill commands of stage $1, one per line (%q-quoted)
  local s=$1 prev="$TEACHER"
  CMDS=("$(show "$PY" -m imagen_video_jax.distill "--config=configs/digits.py:stage=$s$TINY" \
    --phase=guidance "--teacher=$prev" "--workdir=$RUNS/$s/guidance" "${ROOT[@]}" \
    "${LIMIT[@]}" "${EXTRA[@]}")")
  prev="$RUNS/$s/guidance"
  for k in "${HALVES[@]}"; do
    CMDS+=("$(show "$PY" -m imagen_video_jax.distill "--config=configs/digits.py:stage=$s$TINY" \
      --phase=halving "--student_steps=$k" "--teacher=$prev" "--workdir=$RUNS/$s/steps_$k" \
      "${ROOT[@]}" "${LIMIT[@]}" "${EXTRA[@]}")")
    prev="$RUNS/$s/steps_$k"
  done
}

DATA=("$PY" -m imagen_video_jax.train "--config=configs/digits.py:stage=base$TINY"
      --workdir="$RUNS/world" "${ROOT[@]}" --data_only "${EXTRA[@]}")
EXPORT=("$PY" -m imagen_video_jax.export_cascade --cascade="$TEACHER" --output="$OUTPUT"
        --student_dtype="$DTYPE")
for s in base tsr ssr; do EXPORT+=(--student="$RUNS/$s/steps_$STEPS"); done
EXPORT+=("${SAMPLERS[@]}")  # export_cascade checks them
EVAL_S=("$PY" -m imagen_video_jax.evaluate --mode=adherence --checkpoints="$OUTPUT"
        --num_samples="$EVAL" --noprogress --output="$OUTPUT/adherence.json")
EVAL_T=("${EVAL_S[@]:0:7}" --teacher --output="$OUTPUT/adherence_teachers.json")
TIME=("$PY" benchmarks/sampling_throughput.py --cascade="$OUTPUT" --num_samples=1
      --repeats="$SPEED" --eval_num_samples=0)

if [[ $DRY == 1 ]]; then
  show "${DATA[@]}"
  for s in base tsr ssr; do
    phase_cmds $s
    if [[ $SEQ == 1 ]]; then
      printf '%s\n' "${CMDS[@]}"
    else
      line="( ${CMDS[0]}"
      for c in "${CMDS[@]:1}"; do line+=" && $c"; done
      echo "$line ) &"
    fi
  done
  [[ $SEQ == 1 ]] || echo wait
  show "${EXPORT[@]}"
  if [[ $EVAL != 0 ]]; then show "${EVAL_S[@]}"; show "${EVAL_T[@]}"; fi
  if [[ $SPEED != 0 ]]; then
    echo "$(show "${TIME[@]}" --label=students) > $(printf %q "$OUTPUT/speed_students.txt")"
    echo "$(show "${TIME[@]}" --teacher --label=teachers) > $(printf %q "$OUTPUT/speed_teachers.txt")"
  fi
  exit 0
fi

one_machine_env
t0=$SECONDS
"${DATA[@]}"
echo "[distill_digits] world ready after $((SECONDS - t0)) s"
chain() {  # every phase of stage $1, in order; stops at the first that fails
  local s=$1 log="$RUNS/$1/distill.log" c
  phase_cmds "$s"
  for c in "${CMDS[@]}"; do
    echo "[distill_digits] $c >> $log"
    eval "$c" >> "$log" 2>&1 || { echo "[distill_digits] $s failed; see $log" >&2; return 1; }
    echo "[distill_digits] $s: $(grep '^step ' "$log" | tail -1)"
  done
}
pids=() failed=0
for s in base tsr ssr; do
  mkdir -p "$RUNS/$s"
  if [[ $SEQ == 1 ]]; then
    chain $s || { tail -5 "$RUNS/$s/distill.log" >&2; exit 1; }
  else
    chain $s &
    pids+=($!)
  fi
done
for p in "${pids[@]}"; do
  wait "$p" || failed=1
done
if [[ $failed == 1 ]]; then
  tail -5 "$RUNS"/*/distill.log >&2
  exit 1
fi
echo "[distill_digits] distilled after $((SECONDS - t0)) s"
"${EXPORT[@]}"
if [[ $EVAL != 0 ]]; then
  "${EVAL_S[@]}"
  "${EVAL_T[@]}"
fi
if [[ $SPEED != 0 ]]; then
  "${TIME[@]}" --label=students > "$OUTPUT/speed_students.txt"
  "${TIME[@]}" --teacher --label=teachers > "$OUTPUT/speed_teachers.txt"
  tail -n 1 "$OUTPUT/speed_students.txt" "$OUTPUT/speed_teachers.txt"
fi
echo "[distill_digits] done after $((SECONDS - t0)) s: $OUTPUT"
