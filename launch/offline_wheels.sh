#!/usr/bin/env bash
# Wheels for a GPU machine that has JAX with CUDA but no package index (an air-gapped
# node, a lent box): the pinned packages the train / export / evaluate chain needs on top
# of a JAX + CUDA image (Python 3.12, x86-64 by default), fetched here, carried there.
#
#   launch/offline_wheels.sh [--dest=.whl] [--python-version=3.12] [--dry-run]
#   # there:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
#
# Versions come from requirements/requirements.txt. JAX itself is the machine's (its CUDA
# build is tied to the driver); numpy, scipy, PIL, tensorstore and the like are expected
# there too. About 7 MB.
set -euo pipefail
DEST=.whl PYV=3.12 DRY=0
while (($#)); do
  case "$1" in
    --dest=*) DEST="${1#*=}" ;;
    --python-version=*) PYV="${1#*=}" ;;
    --dry-run) DRY=1 ;;
    *) echo "offline_wheels.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Ours, and what they need that a JAX + CUDA image lacks.
NAMES=(flax optax orbax-checkpoint grain array_record dm-tree portpicker
       ml_collections tensorboardX)
PINS=()
for n in "${NAMES[@]}"; do
  pin=$(grep -i -E "^${n//-/[-_]}==" "$ROOT/requirements/requirements.txt" || true)
  if [[ -z "$pin" ]]; then
    echo "offline_wheels.sh: $n is not pinned in requirements/requirements.txt" >&2
    exit 1
  fi
  PINS+=("$pin")
done
CMD=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV"
     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
     --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${PINS[@]}")
if [[ $DRY == 1 ]]; then
  printf '%q ' "${CMD[@]}" | sed 's/ $//'; echo
  exit 0
fi
"${CMD[@]}"
ls "$DEST"
