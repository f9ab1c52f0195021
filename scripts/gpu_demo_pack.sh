#!/usr/bin/env bash
# The CIFAR-10 demo pack's RCDMs retrained on one GPU, measured and packed, in one call of the device tool
# (issue 26: the pack at the CPU recipe and image budget, trained where it takes minutes). Writes under $OUT, read
# summary.txt first:
#   runs.tar.part-*    each RCDM run's newest EMA model + run.json / metrics.jsonl / recipe.json (written right after
#                      training, so a later stage that fails loses no training): `cat runs.tar.part-* | tar -x`
#   bundle.tar.part-*  the bundle (`rcdm recipe pack`, with the prior and the adapter), if every stage got there
#   logs.tar           every log, the metrics folder + metrics.json, the guidance tables, the findings, the A/B
#                      records ($WORK/ab/<variant>/eval/*.json)
#   speed.md           the speed table (benchmarks/speed.py, adm128 at 128 px), when time is left for it
#
#   1. encoders: KEEP_ENCODERS=1 (default) copies the shipped VICReg and supervised ResNet-20s into the runs folder
#      (the issue keeps them); KEEP_ENCODERS=0 trains them (`rcdm recipe ssl`, ~5 min).
#   2. three RCDMs side by side, `rcdm recipe rcdm --profile cpu` (the CPU recipe: batch 64, lr 5e-4, v-prediction,
#      ...) to RCDM_STEPS or the first checkpoint after RCDM_BUDGET_S; beside them, the recipe A/B variants in
#      AB_VARIANTS (`rcdm recipe ab`, 128k images, scored at 64k and 128k) and `pytest -m gpu` (the fast path).
#   3. `rcdm recipe evaluate` (1,000 test images, guidance 1 2 3 5, a curve every CURVE_EVERY steps), one process
#      per RCDM; then `rcdm recipe guidance --record` (1,000 images, 2 samples each: diversity) per RCDM.
#   4. `rcdm recipe pack` (+ the prior), the supervised encoder adapted onto the new VICReg backbone RCDM
#      (`rcdm adapt --steps 0` + `recipe add`), `rcdm recipe findings` on the new bundle.
#   5. benchmarks/speed.py alone on the GPU, if SPEED_BUDGET_S fits before the call's end (CALL_S).
# Every stage has a hard `timeout`; a stage that fails is logged and the next goes on where it can.
# Measured on one H200 (benchmarks/results/gpu-h200.md, 2026-12-04, with two A/B runs beside): 460-550 img/s per
# RCDM, so 210 s of training gave 96k images per RCDM, and the whole script took 591 s.
#
# Prepare here, in the repo root (the device image has torch, torchvision, accelerate, timm, pytest; not diffusers
# or torch-fidelity, and not ../shared):
#   echo /.carry/ >> .git/info/exclude; echo /.whl/ >> .git/info/exclude; mkdir -p .carry .whl
#   cp ../shared/data/cifar10/cifar10-jpeg.tar.gz ../shared/data/cifar-resnet/resnet56-4bfd9763.th .carry/
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl diffusers==0.42.1 importlib_metadata==10.2.0 \
#       torch-fidelity==0.4.0
# then call the device tool with command `bash scripts/gpu_demo_pack.sh`, carry [".carry", ".whl"], timeout_s
# about CALL_S + 30.
# CPU dry run of the plumbing (a few minutes on 2 cores; a smoke bundle, labelled so):
#   DRY=1 bash scripts/gpu_demo_pack.sh
set -uo pipefail

OUT=${OUT:-$PWD/demo-pack-out}
WORK=${WORK:-/tmp/rcdm-demo-pack}
CARRY=${CARRY:-$PWD/.carry}
DATA=${DATA:-$CARRY/cifar10-jpeg.tar.gz}
RESNET56=${RESNET56:-$CARRY/resnet56-4bfd9763.th}
KEEP_ENCODERS=${KEEP_ENCODERS:-1}
RCDM_STEPS=${RCDM_STEPS:-11000}  # the CPU pack's 704k images: what 14 hours of the two cores bought
RCDM_BUDGET_S=${RCDM_BUDGET_S:-210}
RCDM_ARGS=${RCDM_ARGS:---num-workers 2}
AB_VARIANTS=${AB_VARIANTS-}  # e.g. "min-snr+v-prediction": beside the RCDMs, they slow them (gpu-h200.md)
EVAL_IMAGES=${EVAL_IMAGES:-1000}
GUIDANCE=${GUIDANCE:-1 2 3 5}
CURVE_GUIDANCE=${CURVE_GUIDANCE:-1 3}
CURVE_EVERY=${CURVE_EVERY:-2000}
FINDING_IMAGES=${FINDING_IMAGES:-40}
SPEED_BUDGET_S=${SPEED_BUDGET_S:-60}
CALL_S=${CALL_S:-585}  # the whole script's time; stage 5 starts only if it fits
PY=${PY:-python3}
PACK_ARGS=${PACK_ARGS:-}
SSL_ARGS=${SSL_ARGS:-}
if [ "${DRY:-0}" = 1 ]; then # the same stages at smoke scale on this CPU
    OUT=${OUT%demo-pack-out}demo-pack-dry WORK=/tmp/rcdm-demo-pack-dry
    [ -x .venv/bin/python ] && PY=.venv/bin/python
    DATA=../shared/data/cifar10/cifar10-jpeg.tar.gz RESNET56=../shared/data/cifar-resnet/resnet56-4bfd9763.th
    RCDM_STEPS=4 RCDM_ARGS="--preset tiny --batch-size 4 --save-every 2 --num-workers 0" EVAL_IMAGES=10
    AB_VARIANTS="" CURVE_EVERY=2 FINDING_IMAGES=2 SPEED_BUDGET_S=0 PACK_ARGS=--allow-smoke
    rm -rf "$WORK" "$OUT"
fi
. "$(dirname "$0")/device_env.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
nvidia-smi -q -d CLOCK,POWER,PERFORMANCE,MEMORY >"$WORK/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" >"$WORK/nvidia-smi.txt"
JUDGE="cifar-resnet56:$RESNET56"
TARGETS="rcdm-cifar10-vicreg-backbone rcdm-cifar10-vicreg-projector rcdm-cifar10-supervised"
ASSETS=src/rcdm/assets/models
CIFAR=$($PY -c "import sys; from rcdm.pack.cifar10 import cifar10_root; print(cifar10_root(sys.argv[1]))" "$DATA") ||
    { stamp "no CIFAR-10 at $DATA"; exit 1; }
logs() { (cd "$WORK" && tar -cf "$OUT/logs.tar" ./*.log ./nvidia-smi.txt metrics metrics.json guidance-*.txt \
    findings ab/*/eval 2>/dev/null); }
trap logs EXIT

# 1. encoders
if [ "$KEEP_ENCODERS" = 1 ]; then
    for e in ssl:cifar10-vicreg-r20w1 supervised:cifar10-supervised-r20w1; do
        mkdir -p "$WORK/runs/${e%%:*}" && cp -r "$ASSETS/${e#*:}" "$WORK/runs/${e%%:*}/encoder"
    done
    stamp "encoders: the shipped ones"
else
    stamp "encoders: vicreg + supervised"
    # shellcheck disable=SC2086  # SSL_ARGS: options, word-split on purpose
    timeout 330 $RCDM recipe ssl --data "$CIFAR" --out "$WORK/runs/ssl" --epochs 20 --num-workers 11 --no-progress \
        $SSL_ARGS >"$WORK/ssl.log" 2>&1 &
    # shellcheck disable=SC2086
    timeout 310 $RCDM recipe ssl --data "$CIFAR" --out "$WORK/runs/supervised" --objective supervised --epochs 15 \
        --num-workers 3 --no-progress $SSL_ARGS >"$WORK/supervised.log" 2>&1
    wait || { stamp "an encoder failed"; exit 1; }
fi

# 2. the RCDMs side by side, with the A/B variants and the GPU tests beside them
stamp "rcdm: 3 x --profile cpu, ${RCDM_STEPS} steps or ${RCDM_BUDGET_S} s; $RCDM_ARGS; A/B: ${AB_VARIANTS:-none}"
PIDS=()
for target in $TARGETS; do
    # shellcheck disable=SC2086
    timeout $((RCDM_BUDGET_S + 120)) $RCDM recipe rcdm --profile cpu --runs "$WORK/runs" --data "$CIFAR" \
        --only "$target" --steps "$RCDM_STEPS" --time-budget-s "$RCDM_BUDGET_S" --no-progress $RCDM_ARGS \
        >"$WORK/$target.log" 2>&1 &
    PIDS+=($!)
done
for variant in $AB_VARIANTS; do
    (timeout $((RCDM_BUDGET_S + 60)) $RCDM recipe ab --runs "$WORK/ab" --data "$CIFAR" --variants "$variant" \
        --no-progress && timeout 120 $RCDM recipe ab --runs "$WORK/ab" --data "$CIFAR" --variants "$variant" \
        --stage evaluate --judge "$JUDGE" --no-progress) >"$WORK/ab-$variant.log" 2>&1 &
done
[ "${DRY:-0}" = 1 ] || timeout 150 $PY -m pytest -q -m gpu tests/test_fast_path.py -p no:cacheprovider \
    >"$WORK/gpu-tests.log" 2>&1
tail -n 2 "$WORK/gpu-tests.log" 2>/dev/null | tee -a "$OUT/summary.txt"
for pid in "${PIDS[@]}"; do wait "$pid" || stamp "an RCDM run failed (rc $?)"; done
tail -qn 1 "$WORK"/rcdm-cifar10-*.log | tee -a "$OUT/summary.txt"
(cd "$WORK/runs" && for t in $TARGETS; do
    newest=$(ls -d "$t"/checkpoints/step-* 2>/dev/null | sort | tail -n 1)
    model=$([ -d "$t/model" ] && echo "$t/model" || echo "$newest"/{ema,state.json})
    echo "$t"/{run.json,metrics.jsonl,recipe.json} $model
done | xargs tar -cf "$WORK/runs.tar" 2>/dev/null) && split -b 15M -d "$WORK/runs.tar" "$OUT/runs.tar.part-"
stamp "runs saved ($(du -h "$WORK/runs.tar" | cut -f1))"
logs # so far, in case the call is cut short

# 3. metrics: the gates and the curve, then the guidance sweep that chooses each model's default sampling
stamp "evaluate on $EVAL_IMAGES test images, guidance $GUIDANCE, curve every $CURVE_EVERY at $CURVE_GUIDANCE"
PIDS=()
for target in $TARGETS; do
    # shellcheck disable=SC2086  # guidance lists are words
    # one metrics folder per process (a metrics folder has one writer), merged below
    timeout 180 $RCDM recipe evaluate --runs "$WORK/runs" --data "$CIFAR" --judge "$JUDGE" \
        --metrics "$WORK/metrics-$target" --eval-images "$EVAL_IMAGES" --guidance $GUIDANCE \
        --curve-guidance $CURVE_GUIDANCE --curve-every "$CURVE_EVERY" --only "$target" --no-progress \
        >"$WORK/evaluate-$target.log" 2>&1 &
    PIDS+=($!)
done
for pid in "${PIDS[@]}"; do wait "$pid" || stamp "an evaluation failed (rc $?)"; done
mkdir -p "$WORK/metrics"
for target in $TARGETS; do cp -r "$WORK/metrics-$target/$target" "$WORK/metrics/" 2>/dev/null; done
# shellcheck disable=SC2086
timeout 60 $RCDM recipe evaluate --runs "$WORK/runs" --data "$CIFAR" --judge "$JUDGE" --metrics "$WORK/metrics" \
    --eval-images "$EVAL_IMAGES" --guidance $GUIDANCE --curve-guidance $CURVE_GUIDANCE --curve-every "$CURVE_EVERY" \
    --no-progress >"$WORK/evaluate.log" 2>&1 || stamp "metrics.json failed"
PIDS=()
for target in $TARGETS; do
    # shellcheck disable=SC2086
    timeout 150 $RCDM recipe guidance --model "$WORK/runs/$target" --data "$CIFAR" --judge "$JUDGE" \
        --guidance $GUIDANCE --eval-images "$EVAL_IMAGES" --record --scores "$WORK/guidance-scores/$target" \
        --no-progress >"$WORK/guidance-$target.txt" \
        2>"$WORK/guidance-$target.log" &
    PIDS+=($!)
done
for pid in "${PIDS[@]}"; do wait "$pid" || stamp "a guidance sweep failed (rc $?)"; done
grep -h "chosen" "$WORK"/guidance-*.txt | tee -a "$OUT/summary.txt"
stamp "metrics done"
logs # so far, in case the call is cut short

# 4. the bundle, the adapter, the findings
# shellcheck disable=SC2086  # PACK_ARGS=--allow-smoke only for a dry run
$RCDM recipe pack --runs "$WORK/runs" --out "$WORK/bundle" --metrics "$WORK/metrics.json" \
    --prior "$ASSETS/prior-cifar10-vicreg-r20w1-backbone" $PACK_ARGS \
    --demo-images "$CIFAR"/test/{airplane,automobile,bird,cat,deer,dog,frog,horse}/0001.jpg \
    >"$WORK/pack.log" 2>&1
PACK_RC=$?
tail -n 3 "$WORK/pack.log" | tee -a "$OUT/summary.txt"
if [ $PACK_RC -eq 0 ]; then
    timeout 120 $RCDM adapt --model "$WORK/bundle/rcdm-cifar10-vicreg-backbone" \
        --encoder "rcdm-cifar:$WORK/bundle/cifar10-supervised-r20w1" --data "$CIFAR/train" --steps 0 \
        --out "$WORK/adapt-sup-map" \
        --no-progress >"$WORK/adapt.log" 2>&1 &&
        $RCDM recipe add --bundle "$WORK/bundle" --adapter "$WORK/adapt-sup-map" --overwrite >>"$WORK/adapt.log" 2>&1 ||
        stamp "the adapter failed (see adapt.log)" &
    timeout 150 $RCDM recipe findings --pack "$WORK/bundle" --data "$CIFAR" --out "$WORK/findings" \
        --num-images "$FINDING_IMAGES" --no-progress >"$WORK/findings.log" 2>&1 || stamp "findings failed"
    wait
    tar -C "$WORK" -cf "$WORK/bundle.tar" bundle && split -b 15M -d "$WORK/bundle.tar" "$OUT/bundle.tar.part-"
fi
stamp "pack rc=$PACK_RC"
logs # so far, in case the call is cut short

# 5. the speed table, alone on the GPU, if it fits
LEFT=$((CALL_S - $(date +%s) + T0))
if [ "$SPEED_BUDGET_S" -gt 0 ] && [ $LEFT -gt $((SPEED_BUDGET_S + 60)) ]; then
    stamp "speed table (budget ${SPEED_BUDGET_S} s of ${LEFT} s left)"
    timeout $((LEFT - 10)) $PY benchmarks/speed.py --budget-s "$SPEED_BUDGET_S" --out "$OUT/speed.md" \
        >"$WORK/speed.log" 2>&1
    stamp "speed rc=$?"
else
    stamp "speed table skipped (${LEFT} s left)"
fi
stamp "done"
exit $PACK_RC
