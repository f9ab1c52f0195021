#!/usr/bin/env bash
# The CIFAR-10 demo pack on the CPU, in resumable stages (docs/recipes.md, "The CPU pack"):
#
#   bash scripts/cpu_pack.sh encoders   VICReg encoder + its supervised twin (CIFAR ResNet-20 x1), side by side
#   bash scripts/cpu_pack.sh rcdms      three cifar32-small RCDMs (--profile cpu), two at a time, one core each
#   bash scripts/cpu_pack.sh evaluate   the gates on 1,000 class-balanced CIFAR-10 test images (judge: ResNet-56),
#                                       sampled with $EVAL_SAMPLING once per model (faithfulness, then the Frechet
#                                       distance of the same samples): the final model at each weight in $GUIDANCE,
#                                       and the checkpoints every $CURVE_EVERY steps at each weight in
#                                       $CURVE_GUIDANCE (the curves; CURVE_EVERY=0 skips them)
#   bash scripts/cpu_pack.sh samplers   faithfulness per second of each sampling setting in $SAMPLERS
#                                       (preset:guidance) on the first $SAMPLER_IMAGES eval images, for each RCDM in
#                                       $SAMPLER_TARGETS (default: the two backbone RCDMs; its final model, else its
#                                       newest checkpoint): what the pack's default sampler rests on
#   bash scripts/cpu_pack.sh pack       the bundle into src/rcdm/assets/models (fp16, model cards, metrics); the
#                                       demo samples it with guidance $PACK_GUIDANCE (the sampler table's choice)
#   bash scripts/cpu_pack.sh findings   the paper's findings 1-3 on the installed pack, on $FINDING_IMAGES
#                                       class-balanced test images (more than the 60-second demo's 4 and 8):
#                                       invariance backbone vs projector (the four augmentations VICReg trains with,
#                                       and vflip and invert, which it does not) and PGD on the VICReg vs the
#                                       supervised backbone, sampled like the demo (dpm++ 20, $PACK_GUIDANCE);
#                                       tables with standard errors: $WORK/findings/tables.md
#
# PACK_STEP=N (evaluate, pack): the pack holds every RCDM at its step-N checkpoint instead of its final model (the
# models then share their training, and a pack can ship before the runs end); evaluate measures that checkpoint at
# each weight in $GUIDANCE. PACK_STEPS="TARGET=N ..." sets it per RCDM, over PACK_STEP (a model past its gates stays
# at its step while the others train on).
#
# Every stage resumes where it stopped (epoch checkpoints for the encoders, step checkpoints for the RCDMs; a
# finished run is left alone), so run it again after an interruption. Each job gets one thread and `nice`: on a
# 2-core machine that is one free core per job. Outputs live outside the work tree in $WORK (default
# ~/rcdm-work); logs in $WORK/*.log. RCDM_BUDGET_S=N stops each RCDM at its first checkpoint after N seconds (a
# chunk), to be resumed later.
set -uo pipefail

STAGE=${1:?usage: cpu_pack.sh encoders|rcdms|evaluate|samplers|pack|findings}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$HOME/rcdm-work}
PY=${PY:-$ROOT/.venv/bin/python}
DATA=${DATA:-$ROOT/../shared/data/cifar10/cifar10-jpeg.tar.gz}
RESNET56=${RESNET56:-$ROOT/../shared/data/cifar-resnet/resnet56-4bfd9763.th}
SSL_EPOCHS=${SSL_EPOCHS:-60}
SUP_EPOCHS=${SUP_EPOCHS:-30}
RCDM_STEPS=${RCDM_STEPS:-8000}
EVAL_IMAGES=${EVAL_IMAGES:-1000}
SAMPLER_IMAGES=${SAMPLER_IMAGES:-200}
EVAL_SAMPLING=${EVAL_SAMPLING:-fast}
GUIDANCE=${GUIDANCE:-1 5}          # guidance weights for the final models (> 1 needs the CPU profile's cond_drop)
CURVE_GUIDANCE=${CURVE_GUIDANCE:-1 5}
CURVE_EVERY=${CURVE_EVERY:-2000}
SAMPLERS=${SAMPLERS:-fast:1 paired:1 published:1 fast:3 fast:5 fast:8}
PACK_GUIDANCE=${PACK_GUIDANCE:-1}
PACK_STEP=${PACK_STEP:-}
PACK_STEPS=${PACK_STEPS:-}
FINDING_IMAGES=${FINDING_IMAGES:-40}
TARGETS=(rcdm-cifar10-supervised rcdm-cifar10-vicreg-backbone rcdm-cifar10-vicreg-projector)
SAMPLER_TARGETS=${SAMPLER_TARGETS:-${TARGETS[*]:0:2}}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
RCDM="nice -n 10 $PY -m rcdm.cli"
mkdir -p "$WORK/runs"
CIFAR=$($PY -c "import sys; from rcdm.pack.cifar10 import cifar10_root; print(cifar10_root(sys.argv[1]))" "$DATA") ||
    exit 1

resume_flag() { [ -d "$1/checkpoints" ] && echo --resume; }

step_of() { # step_of TARGET: the checkpoint step it is packed at (PACK_STEPS, else PACK_STEP), or nothing (final)
    local s
    for s in $PACK_STEPS; do [ "${s%%=*}" = "$1" ] && { echo "${s#*=}"; return; }; done
    echo "$PACK_STEP"
}

write_metrics() { # the evaluations under $WORK/metrics -> $WORK/metrics.json (recipe pack --metrics), and shown
    local steps=() s
    for s in $PACK_STEP $PACK_STEPS; do steps+=(--step "$s"); done
    $PY -m rcdm.cli recipe metrics --metrics-dir "$WORK/metrics" --eval-images "$EVAL_IMAGES" ${steps[@]+"${steps[@]}"} \
        >"$WORK/metrics.json" &&
        cat "$WORK/metrics.json"
}

one_at_a_time() { # the evaluate and samplers stages clear and rewrite folders under $WORK/metrics: one at a time
    command -v flock >/dev/null || return 0 # no flock (macOS): run as told
    exec 9>"$WORK/.metrics.lock"
    flock -n 9 || { echo "another evaluate or samplers stage is running on $WORK: wait for it" >&2; exit 2; }
}

encoder() { # encoder NAME OBJECTIVE EPOCHS
    [ -f "$WORK/runs/$1/encoder/card.json" ] && { echo "$1: finished"; return 0; }
    # shellcheck disable=SC2046  # resume_flag: no flag or one word
    $RCDM recipe ssl --data "$CIFAR" --out "$WORK/runs/$1" --objective "$2" --epochs "$3" --width 1 \
        --num-workers 0 --no-progress $(resume_flag "$WORK/runs/$1") >>"$WORK/$1.log" 2>&1
}

rcdm() { # rcdm TARGET (skipped, with a note, until its encoder is finished)
    [ -f "$WORK/runs/$1/model/config.json" ] && { echo "$1: finished"; return 0; }
    local enc=ssl
    [ "$1" = rcdm-cifar10-supervised ] && enc=supervised
    [ -f "$WORK/runs/$enc/encoder/card.json" ] || {
        echo "$1: its encoder ($WORK/runs/$enc) is not finished yet: run the encoders stage, then this again"
        return 0
    }
    # shellcheck disable=SC2046
    $RCDM recipe rcdm --profile cpu --runs "$WORK/runs" --data "$CIFAR" --only "$1" --steps "$RCDM_STEPS" \
        ${RCDM_BUDGET_S:+--time-budget-s "$RCDM_BUDGET_S"} --no-progress $(resume_flag "$WORK/runs/$1") \
        >>"$WORK/$1.log" 2>&1
}

evaluate() { # evaluate TARGET MODEL_DIR TAG [GUIDANCE]: one sampling pass, scored for faithfulness and quality
    local out="$WORK/metrics/$1/$3"
    if [ ! -f "$out/faithfulness.json" ] || [ ! -f "$out/samples/references.txt" ]; then
        rm -rf "$out" && mkdir -p "$out"
        $RCDM evaluate faithfulness --model "$2" --images "$WORK/eval-images" --num-samples 1 \
            --sampling "$EVAL_SAMPLING" --guidance "${4:-1}" --judge "cifar-resnet56:$RESNET56" \
            --out "$out/faithfulness.json" --save-samples "$out/samples" --no-progress >>"$WORK/evaluate.log" 2>&1 ||
            return 1
    fi
    [ -f "$out/quality.json" ] ||
        $RCDM evaluate quality --real "$WORK/eval-images" --fake "$out/samples" \
            --extractor "cifar-resnet56:$RESNET56" --out "$out/quality.json" >>"$WORK/evaluate.log" 2>&1
}

evaluate_at() { # evaluate_at TARGET MODEL_DIR TAG "WEIGHTS": one evaluation per weight, tagged TAG or TAG-gW
    local g
    for g in $4; do
        # shellcheck disable=SC2046  # the tag suffix: none for weight 1, else -gW
        evaluate "$1" "$2" "$3$([ "$g" = 1 ] || echo "-g$g")" "$g"
    done
}

newest_model() { # newest_model RUN: its final model folder, else its newest complete checkpoint's EMA
    if [ -f "$1/model/config.json" ]; then echo "$1/model"; return; fi
    local ck
    for ck in "$1"/checkpoints/step-*; do [ -f "$ck/state.json" ] && echo "$ck/ema"; done | tail -n 1
}

case $STAGE in
encoders)
    encoder ssl vicreg "$SSL_EPOCHS" &
    encoder supervised supervised "$SUP_EPOCHS"
    wait
    ;;
rcdms)
    # The two backbone models first (the gates), side by side; then the projector model.
    rcdm "${TARGETS[0]}" &
    rcdm "${TARGETS[1]}"
    wait
    rcdm "${TARGETS[2]}"
    ;;
evaluate)
    one_at_a_time
    # N class-balanced test images, copied flat as <class>-<file> (no model trained on the test split).
    [ -d "$WORK/eval-images" ] ||
        $PY "$ROOT/scripts/copy_test_images.py" "$CIFAR/test" "$WORK/eval-images" "$EVAL_IMAGES"
    for t in "${TARGETS[@]}"; do
        run="$WORK/runs/$t"
        [ -d "$run" ] || continue
        st=$(step_of "$t")
        if [ -n "$st" ]; then
            ck=$(printf step-%08d "$st")
            evaluate_at "$t" "$run/checkpoints/$ck/ema" "$ck" "$GUIDANCE"
        elif [ -f "$run/model/config.json" ]; then
            evaluate_at "$t" "$run/model" final "$GUIDANCE"
        fi
        [ "$CURVE_EVERY" -gt 0 ] || continue
        for ck in "$run"/checkpoints/step-*; do
            step=$((10#${ck##*step-}))
            [ -f "$ck/state.json" ] && [ $((step % CURVE_EVERY)) = 0 ] &&
                evaluate_at "$t" "$ck/ema" "$(basename "$ck")" "$CURVE_GUIDANCE"
        done
    done
    write_metrics
    ;;
samplers)
    one_at_a_time
    [ -d "$WORK/sampler-images" ] ||
        $PY "$ROOT/scripts/copy_test_images.py" "$CIFAR/test" "$WORK/sampler-images" "$SAMPLER_IMAGES"
    for t in $SAMPLER_TARGETS; do
        model=$(newest_model "$WORK/runs/$t")
        [ -n "$model" ] || continue
        for setting in $SAMPLERS; do
            preset=${setting%%:*} g=${setting##*:}
            out="$WORK/metrics/$t/sampler-$preset$([ "$g" = 1 ] || echo "-g$g")"
            # done for this model already (a table measured on an earlier checkpoint is measured again)
            [ -f "$out/seconds" ] && [ "$(cat "$out/model" 2>/dev/null)" = "$model" ] && continue
            rm -rf "$out" && mkdir -p "$out" && echo "$model" >"$out/model"
            echo "$t: $model, sampling $preset, guidance $g" >>"$WORK/evaluate.log"
            start=$(date +%s%N)
            $RCDM evaluate faithfulness --model "$model" --images "$WORK/sampler-images" --num-samples 1 \
                --sampling "$preset" --guidance "$g" --judge "cifar-resnet56:$RESNET56" \
                --out "$out/faithfulness.json" --no-progress >>"$WORK/evaluate.log" 2>&1 &&
                awk "BEGIN { print ($(date +%s%N) - $start) / 1e9 }" >"$out/seconds"
        done
    done
    write_metrics
    ;;
pack)
    steps=()
    for s in $PACK_STEP $PACK_STEPS; do steps+=(--step "$s"); done
    $PY -m rcdm.cli recipe pack --runs "$WORK/runs" --out "$ROOT/src/rcdm/assets/models" --metrics "$WORK/metrics.json" \
        --overwrite --guidance "$PACK_GUIDANCE" ${steps[@]+"${steps[@]}"} --demo-images "$CIFAR"/test/{airplane,automobile,bird,cat,deer,dog,frog,horse}/0001.jpg
    ;;
findings)
    PACK=$ROOT/src/rcdm/assets/models
    [ -f "$PACK/bundle.json" ] || { echo "no pack at $PACK: run the pack stage first" >&2; exit 2; }
    [ -d "$WORK/finding-images" ] ||
        $PY "$ROOT/scripts/copy_test_images.py" "$CIFAR/test" "$WORK/finding-images" "$FINDING_IMAGES"
    common=(--images "$WORK/finding-images" --num-samples 2 --sampling fast --guidance "$PACK_GUIDANCE" --no-progress)
    $RCDM analyze invariance --model "$PACK/rcdm-cifar10-vicreg-backbone" "${common[@]}" \
        --compare-features "$PACK/rcdm-cifar10-vicreg-projector" --out "$WORK/findings/invariance" \
        --augmentations random_resized_crop hflip colour_jitter grayscale vflip invert >>"$WORK/findings.log" 2>&1 &
    $RCDM analyze adversarial --model "$PACK/rcdm-cifar10-vicreg-backbone" "${common[@]}" \
        --compare "$PACK/rcdm-cifar10-supervised" --out "$WORK/findings/adversarial" >>"$WORK/findings.log" 2>&1
    wait
    $PY "$ROOT/scripts/findings_table.py" "$WORK/findings" >"$WORK/findings/tables.md" && cat "$WORK/findings/tables.md"
    ;;
*)
    echo "unknown stage $STAGE: use encoders, rcdms, evaluate, samplers, pack or findings" >&2
    exit 2
    ;;
esac
