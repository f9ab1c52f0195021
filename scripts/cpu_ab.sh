#!/usr/bin/env bash
# The training-recipe A/B on the CPU (docs/recipes.md, "Recipe A/B"): two workers, one core and one thread each,
# each training its list of variants in turn (`rcdm recipe ab`); every run resumes from its newest checkpoint, so
# run this again after an interruption. Outputs and logs live in $WORK/ab (default ~/rcdm-work/ab).
#
#   bash scripts/cpu_ab.sh                      the default split of the variants over two workers
#   WORKER_A="baseline" WORKER_B="min-snr" bash scripts/cpu_ab.sh
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$HOME/rcdm-work}
PY=${PY:-$ROOT/.venv/bin/python}
DATA=${DATA:-$ROOT/../shared/data/cifar10/cifar10-jpeg.tar.gz}
WORKER_A=${WORKER_A:-baseline v-prediction lr1e-3-batch128 cifar32}
WORKER_B=${WORKER_B:-min-snr logit-normal dropout}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
mkdir -p "$WORK/ab"
worker() { # worker NAME "VARIANTS"
    # shellcheck disable=SC2086  # a list of variant names
    nice -n 10 "$PY" -m rcdm.cli recipe ab --runs "$WORK/ab" --data "$DATA" --variants $2 --no-progress \
        >>"$WORK/ab/worker-$1.log" 2>&1
}
worker a "$WORKER_A" &
worker b "$WORKER_B" &
wait
