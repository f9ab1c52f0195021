#!/usr/bin/env bash
# The training-recipe A/B on the CPU (docs/recipes.md, "Recipe A/B"): two workers, one core and one thread each,
# each training its list of variants in turn (`rcdm recipe ab`): each variant is trained to each evaluation point
# in turn (64k images, then 128k) and scored there at once (`--stage evaluate`, judged by the ResNet-56), so a
# session that ends before 128k keeps its 64k scores. Every run resumes from its newest checkpoint, so run this
# again after an interruption. Runs and logs live in $WORK/ab (default ~/rcdm-work/ab); the scores, small JSON records
# that stand alone, are copied to $RESULTS (default benchmarks/results/recipe-ab) to be committed.
#
#   bash scripts/cpu_ab.sh                      the default split of the variants over two workers
#   WORKER_A="baseline" WORKER_B="min-snr" bash scripts/cpu_ab.sh
#   WORKER_A="v-prediction" WORKER_B="" bash scripts/cpu_ab.sh     one worker (an empty list runs nothing)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$HOME/rcdm-work}
PY=${PY:-$ROOT/.venv/bin/python}
DATA=${DATA:-$ROOT/../shared/data/cifar10/cifar10-jpeg.tar.gz}
JUDGE=${JUDGE:-cifar-resnet56:$ROOT/../shared/data/cifar-resnet/resnet56-4bfd9763.th}
RESULTS=${RESULTS:-$ROOT/benchmarks/results/recipe-ab}
WORKER_A=${WORKER_A-baseline v-prediction lr1e-3-batch128 cifar32}
WORKER_B=${WORKER_B-min-snr logit-normal dropout}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
mkdir -p "$WORK/ab" "$RESULTS"
POINTS=${POINTS:-64000 128000} # images seen at which each variant is scored, in order
# cifar32 is compared at equal CPU time, not equal images: a training step costs 1.84x cifar32-small's (batch 64,
# bf16, one thread of the 2-core AMD EPYC, side by side), so its 32k and 64k images cost about what the others' 64k
# and 128k do (each record names its training CPU seconds)
CIFAR32_POINTS=${CIFAR32_POINTS:-32000 64000}
worker() { # worker NAME "VARIANTS"
    for variant in $2; do
        points=$POINTS
        [ "$variant" = cifar32 ] && points=$CIFAR32_POINTS
        for images in $points; do
            for stage in train evaluate; do
                nice -n 10 "$PY" -m rcdm.cli recipe ab --runs "$WORK/ab" --data "$DATA" --variants "$variant" \
                    --images "$images" --stage "$stage" --judge "$JUDGE" --no-progress \
                    >>"$WORK/ab/worker-$1.log" 2>&1 || return 1
            done
            mkdir -p "$RESULTS/$variant/eval" && cp "$WORK/ab/$variant"/eval/*.json "$RESULTS/$variant/eval/"
        done
    done
}
worker a "$WORKER_A" &
worker b "$WORKER_B" &
wait
