#!/usr/bin/env bash
# Issue 7 on one GPU, in one call: the fast path's correctness, the speed table, and dpm++-20 vs ddpm-100
# faithfulness. Writes under $OUT: summary.txt (read first), speed.md (the table + card), gpu_tests.log,
# speed.log, faith-dpm.{json,md}, faith-ddpm.{json,md}, train.log, nvidia-smi.txt.
#
#   1. in parallel: `pytest -m gpu tests/test_fast_path.py` (fast modes = eager up to bf16 rounding, seeds,
#      batch independence, CUDA-graph weight updates) and a quick cifar32 RCDM on CIFAR-10 with the supervised
#      CIFAR ResNet-20 (the faithfulness model; trained for FAITH_TRAIN_S seconds, its newest checkpoint's EMA)
#   2. benchmarks/speed.py alone on the GPU (adm128, 128 px): starts no variant after BENCH_BUDGET_S
#   3. `rcdm evaluate faithfulness` of that model with dpm++ 20 steps and ddpm 100 steps, same images and seeds
#
# Time: every stage has a hard `timeout`; worst case about 90 + 270 + 2 x 60 s + setup, so 8 minutes; the
# table is rewritten after every row, so a stage cut short still leaves its rows. UNMEASURED: no GPU was lent
# when this was written. Run with timeout_s=600 and nothing else in the call.
#
# Prepare here, in the repo root (the device image has torch, torchvision, accelerate, timm, pytest; not
# diffusers, and not ../shared):
#   echo /.carry/ >> .git/info/exclude; echo /.whl/ >> .git/info/exclude; mkdir -p .carry
#   cp ../shared/data/cifar10/cifar10-jpeg.tar.gz ../shared/data/cifar-resnet/resnet20-12fca82f.th .carry/
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl diffusers==0.42.1 importlib_metadata==10.2.0
# then call the device tool with command `bash scripts/gpu_fast_path.sh`, carry [".carry", ".whl"].
# CPU dry run of the plumbing (about 2 minutes on 2 cores; smoke numbers, labelled so):
#   bash scripts/gpu_fast_path.sh --dry-run
set -uo pipefail

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$PWD/fast-path-out}
WORK=${WORK:-/tmp/rcdm-fast-path}
CARRY=${CARRY:-$PWD/.carry}
DATA=${DATA:-$CARRY/cifar10-jpeg.tar.gz}
RESNET20=${RESNET20:-$CARRY/resnet20-12fca82f.th}
FAITH_TRAIN_S=${FAITH_TRAIN_S:-90}
FAITH_IMAGES=${FAITH_IMAGES:-500}
BENCH_BUDGET_S=${BENCH_BUDGET_S:-180}
BENCH_ARGS=${BENCH_ARGS:-}
TRAIN_ARGS=${TRAIN_ARGS:-"--preset cifar32 --batch-size 128 --num-workers 8 --save-every 200 --ema-decay 0.999"}
FAITH_ARGS=${FAITH_ARGS:-"--batch-size 250"}
PY=${PY:-python3}
if [ $DRY -eq 1 ]; then  # the same stages at smoke scale on the CPU
    OUT=${OUT%fast-path-out}fast-path-dry
    [ -x .venv/bin/python ] && PY=.venv/bin/python
    DATA=${DATA_DRY:-../shared/data/cifar10/cifar10-jpeg.tar.gz}
    RESNET20=${RESNET20_DRY:-../shared/data/cifar-resnet/resnet20-12fca82f.th}
    FAITH_TRAIN_S=90 FAITH_IMAGES=6 BENCH_BUDGET_S=60 TRAIN_SUBSET=test/airplane
    BENCH_ARGS="--quick --device cpu"
    TRAIN_ARGS="--preset tiny --batch-size 4 --num-workers 0 --save-every 2 --steps 4"
    FAITH_ARGS="--batch-size 6 --device cpu"
fi
. "$(dirname "$0")/device_env.sh"
# The card as found (clocks, power, other processes): read only, nothing is changed.
nvidia-smi -q -d CLOCK,POWER,PERFORMANCE,MEMORY >"$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" >"$OUT/nvidia-smi.txt"

# 1. correctness tests || the faithfulness model's training (CPU-side data loading; the tests are small).
CIFAR=$($PY -c "import sys; from rcdm.pack.cifar10 import cifar10_root; print(cifar10_root(sys.argv[1]))" "$DATA") ||
    { stamp "no CIFAR-10 at $DATA"; exit 1; }
stamp "train the faithfulness model for ${FAITH_TRAIN_S} s || pytest -m gpu"
rm -rf "$WORK/faith-run"
# shellcheck disable=SC2086  # TRAIN_ARGS: options, word-split on purpose
timeout "$FAITH_TRAIN_S" $RCDM train --data "$CIFAR/${TRAIN_SUBSET:-train}" --encoder "cifar-resnet20:$RESNET20" \
    --out "$WORK/faith-run" --no-progress $TRAIN_ARGS >"$OUT/train.log" 2>&1 &
TRAIN_PID=$!
timeout 150 $PY -m pytest -q -m gpu tests/test_fast_path.py -p no:cacheprovider >"$OUT/gpu_tests.log" 2>&1
TEST_RC=$?
wait $TRAIN_PID
TRAIN_RC=$?
tail -n 3 "$OUT/gpu_tests.log" | tee -a "$OUT/summary.txt"
stamp "gpu tests rc=$TEST_RC; training rc=$TRAIN_RC (124 = stopped at its time limit, as planned)"

# 2. the speed table, alone on the GPU.
stamp "benchmark (budget ${BENCH_BUDGET_S} s)"
# shellcheck disable=SC2086
timeout $((BENCH_BUDGET_S + 90)) $PY benchmarks/speed.py --budget-s "$BENCH_BUDGET_S" --out "$OUT/speed.md" \
    $BENCH_ARGS >"$OUT/speed.log" 2>&1
stamp "benchmark rc=$?"

# 3. faithfulness: dpm++ at 20 steps vs ddpm at 100 (the published sampler), same images, same seeds.
stamp "faithfulness on $FAITH_IMAGES CIFAR-10 test images"
$RCDM recipe eval-images --data "$CIFAR" --out "$WORK/faith-images" --num-images "$FAITH_IMAGES"
for s in "dpm dpm++ 20" "ddpm ddpm 100"; do
    set -- $s
    steps=$3
    [ $DRY -eq 1 ] && steps=2
    echo "== $2, $steps steps" >>"$OUT/faith.log"
    # shellcheck disable=SC2086
    timeout 90 $RCDM evaluate faithfulness --model "$WORK/faith-run" --images "$WORK/faith-images" \
        --num-samples 1 --sampler "$2" --steps "$steps" --seed 0 --out "$OUT/faith-$1.json" $FAITH_ARGS \
        >>"$OUT/faith.log" 2>&1 || echo "faithfulness $2 failed (rc=$?)" >>"$OUT/faith.log"
done
grep -h "^==\|conditioning\|failed" "$OUT/faith.log" | tee -a "$OUT/summary.txt"
cat "$OUT/speed.md" 2>/dev/null
stamp "done"
