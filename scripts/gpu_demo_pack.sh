#!/usr/bin/env bash
# Train the CIFAR-10 demo pack end to end on one GPU and write the bundle + reports under $OUT.
#
#   1. `rcdm recipe ssl`  VICReg encoder (ResNet-20 x2 + 512-d projector) and a supervised one, side by side
#   2. `rcdm recipe rcdm` three cifar32-small RCDMs (VICReg backbone, VICReg projector, supervised), side by side
#   3. metrics on 1,000 CIFAR-10 test images (faithfulness; Frechet distance in CIFAR ResNet-56 features,
#      which is NOT FID) through `rcdm evaluate`, when that command is present; failures are logged, not fatal
#   4. `rcdm recipe pack` into a bundle (<= 30 MB), returned as $OUT/bundle.tar.part-* (the device tool returns
#      at most 8 files of 16 MiB each: join with `cat bundle.tar.part-* | tar -x`)
#   5. `rcdm demo --bundle` on it, timed on 2 CPU threads; the page comes back as $OUT/demo-out.tar (DEMO=0: skip)
#
# Timing: UNMEASURED estimate for one H100 + 16 cores (no GPU was lent when this was written). SSL is bound by
# CPU augmentation (~0.7 ms per view per core, measured on the dev CPU): 20 epochs x 100k views / 12 workers
# ~ 2-3 min; the RCDMs stop at the first checkpoint after RCDM_BUDGET_S (default 240 s) or at RCDM_STEPS;
# metrics ~1-2 min; setup + pack < 30 s; the CPU demo ~1 min. Total about 9-10 minutes: run it with timeout_s=600
# and nothing else (DEMO=0 leaves out step 5 when time is short).
#
# On the device machine (bare image: torch, accelerate, timm, safetensors; no diffusers, no ../shared), first
# prepare here, in the repo root:
#   echo /.carry/ >> .git/info/exclude; echo /.whl/ >> .git/info/exclude; mkdir -p .carry
#   cp ../shared/data/cifar10/cifar10-jpeg.tar.gz ../shared/data/cifar-resnet/resnet56-4bfd9763.th .carry/
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl diffusers==0.42.1 importlib_metadata==10.2.0
# then call the device tool with command `bash scripts/gpu_demo_pack.sh`, carry [".carry", ".whl"],
# timeout_s 600. Every run writes its own log under $OUT; read $OUT/summary.txt first.
# CPU dry run of the plumbing (minutes; a smoke bundle, labelled so):
#   OUT=/tmp/dry WORK=/tmp/dry-work DATA=../shared/data/cifar10/cifar10-jpeg.tar.gz \
#   RESNET56=../shared/data/cifar-resnet/resnet56-4bfd9763.th SSL_EPOCHS=1 SUP_EPOCHS=1 RCDM_STEPS=2 \
#   SSL_ARGS="--limit 40 --batch-size 10 --width 1 --num-workers 0" RCDM_ARGS="--preset tiny --batch-size 4 \
#   --save-every 2 --num-workers 0" EVAL_IMAGES=8 PACK_ARGS=--allow-smoke DEMO_ARGS="--preset quick" \
#   PY=.venv/bin/python \
#   bash scripts/gpu_demo_pack.sh
set -uo pipefail

OUT=${OUT:-$PWD/demo-pack-out}
WORK=${WORK:-/tmp/rcdm-demo-pack}
CARRY=${CARRY:-$PWD/.carry}
DATA=${DATA:-$CARRY/cifar10-jpeg.tar.gz}
RESNET56=${RESNET56:-$CARRY/resnet56-4bfd9763.th}
SSL_EPOCHS=${SSL_EPOCHS:-20}
SUP_EPOCHS=${SUP_EPOCHS:-15}
RCDM_STEPS=${RCDM_STEPS:-8000}
RCDM_BATCH=${RCDM_BATCH:-128}
RCDM_BUDGET_S=${RCDM_BUDGET_S:-240}
EVAL_IMAGES=${EVAL_IMAGES:-1000}
PY=${PY:-python3}
. "$(dirname "$0")/device_env.sh"

# 1. encoders, side by side (VICReg gets most augmentation workers). Extract the data set once first.
CIFAR=$($PY -c "import sys; from rcdm.pack.cifar10 import cifar10_root; print(cifar10_root(sys.argv[1]))" "$DATA") ||
    exit 1
stamp "ssl: vicreg ${SSL_EPOCHS} epochs + supervised ${SUP_EPOCHS} epochs (data in $CIFAR)"
# shellcheck disable=SC2086  # *_ARGS: extra options, word-split on purpose (tiny settings for a CPU dry run)
timeout 330 $RCDM recipe ssl --data "$CIFAR" --out "$WORK/runs/ssl" --epochs "$SSL_EPOCHS" --num-workers 11 \
    --no-progress ${SSL_ARGS:-} >"$WORK/ssl.log" 2>&1 &
SSL_PID=$!
# shellcheck disable=SC2086
timeout 310 $RCDM recipe ssl --data "$CIFAR" --out "$WORK/runs/supervised" --objective supervised \
    --epochs "$SUP_EPOCHS" --num-workers 3 --no-progress ${SSL_ARGS:-} >"$WORK/supervised.log" 2>&1
SUP_RC=$?
wait $SSL_PID
SSL_RC=$?
tail -n 3 "$WORK/ssl.log" "$WORK/supervised.log" | tee -a "$OUT/summary.txt"
if [ $SSL_RC -ne 0 ] || [ $SUP_RC -ne 0 ]; then
    stamp "ssl failed (vicreg rc=$SSL_RC, supervised rc=$SUP_RC)"
    cp "$WORK"/*.log "$OUT/" 2>/dev/null
    exit 1
fi

# 2. RCDMs, side by side on the one GPU (small networks are launch-bound; three processes keep it busy).
stamp "rcdm: 3 x cifar32-small, ${RCDM_STEPS} steps x ${RCDM_BATCH} or ${RCDM_BUDGET_S} s ${RCDM_ARGS:-}"
PIDS=()
for target in rcdm-cifar10-vicreg-backbone rcdm-cifar10-vicreg-projector rcdm-cifar10-supervised; do
    # shellcheck disable=SC2086
    timeout $((RCDM_BUDGET_S + 90)) $RCDM recipe rcdm --runs "$WORK/runs" --data "$CIFAR" --only "$target" \
        --steps "$RCDM_STEPS" --batch-size "$RCDM_BATCH" --time-budget-s "$RCDM_BUDGET_S" --num-workers 4 \
        --no-progress ${RCDM_ARGS:-} >"$WORK/$target.log" 2>&1 &
    PIDS+=($!)
done
RCDM_RC=0
for pid in "${PIDS[@]}"; do wait "$pid" || RCDM_RC=1; done
tail -n 2 "$WORK"/rcdm-cifar10-*.log | tee -a "$OUT/summary.txt"
[ $RCDM_RC -eq 0 ] || { stamp "an RCDM run failed"; cp "$WORK"/*.log "$OUT/"; exit 1; }

# 3. metrics (best effort): 1,000 class-balanced test images.
stamp "metrics on $EVAL_IMAGES test images"
timeout 300 $RCDM recipe evaluate --runs "$WORK/runs" --data "$CIFAR" --judge "cifar-resnet56:$RESNET56" \
    --metrics "$WORK/metrics" --eval-images "$EVAL_IMAGES" --guidance 1 --curve-every 0 --no-progress \
    >"$WORK/metrics.log" 2>&1 || echo "evaluate failed" >>"$WORK/metrics.log"
tail -n 5 "$WORK/metrics.log" >>"$OUT/summary.txt" 2>/dev/null

# 4. bundle.
stamp "pack"
# shellcheck disable=SC2086  # PACK_ARGS=--allow-smoke only for a dry run: the bundle is then labelled a smoke test
$RCDM recipe pack --runs "$WORK/runs" --out "$WORK/bundle" --metrics "$WORK/metrics.json" ${PACK_ARGS:-} \
    --demo-images "$CIFAR"/test/{airplane,automobile,bird,cat,deer,dog,frog,horse}/0001.jpg \
    2>&1 | tee -a "$OUT/summary.txt"
PACK_RC=${PIPESTATUS[0]}
cp "$WORK/metrics.json" "$OUT/" 2>/dev/null
(cd "$WORK" && tar -cf logs.tar ./*.log metrics) 2>/dev/null
cp "$WORK/logs.tar" "$OUT/" 2>/dev/null
if [ "$PACK_RC" -eq 0 ]; then
    tar -C "$WORK" -cf "$WORK/bundle.tar" bundle
    split -b 15M -d "$WORK/bundle.tar" "$OUT/bundle.tar.part-"
fi

# 5. the offline demo on the packed bundle, timed on 2 CPU threads (the `make demo` budget: 2 minutes on 2 cores;
#    pinned to 2 cores where taskset exists), returned as $OUT/demo-out.tar. Best effort: never fails the run.
if [ "$PACK_RC" -eq 0 ] && [ "${DEMO:-1}" = 1 ]; then
    stamp "demo: rcdm demo --bundle on the CPU, 2 threads ${DEMO_ARGS:-}"
    PIN=$(command -v taskset >/dev/null && echo "taskset -c 0,1")
    D0=$(date +%s)
    # shellcheck disable=SC2086  # PIN, DEMO_ARGS: word-split on purpose
    OMP_NUM_THREADS=2 CUDA_VISIBLE_DEVICES="" timeout 300 $PIN $RCDM demo --bundle "$WORK/bundle" \
        --out "$WORK/demo-out" --device cpu --no-progress ${DEMO_ARGS:-} >"$WORK/demo.log" 2>&1
    DEMO_RC=$?
    stamp "demo rc=$DEMO_RC: $(($(date +%s) - D0)) s end to end (python start, loading and writing included)"
    tail -n 2 "$WORK/demo.log" | tee -a "$OUT/summary.txt"
    [ -d "$WORK/demo-out" ] && tar -C "$WORK" -cf "$OUT/demo-out.tar" demo-out ./demo.log
fi
stamp "done (pack rc=$PACK_RC)"
exit "$PACK_RC"
