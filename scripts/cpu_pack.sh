#!/usr/bin/env bash
# Launcher of the CIFAR-10 demo pack on the CPU, in resumable stages; what each stage does and its settings are in
# docs/recipes.md ("The CPU pack") and `rcdm recipe STAGE --help`. This file only runs `rcdm recipe` commands with
# one thread and `nice` per job, two jobs side by side where the stage has two (one free core each on 2 cores).
#
#   bash scripts/cpu_pack.sh encoders|rcdms|guidance|evaluate|samplers|pack|findings
#   bash scripts/cpu_pack.sh all     # encoders rcdms guidance pack evaluate samplers pack findings, then the
#                                    # findings unguided; stops at a failure
#   bash scripts/cpu_pack.sh status  # each RCDM's steps and CPU hours, spent and at its planned steps, against the
#                                    # budget (BUDGET_CPU_H, default 28: 14 hours of the two cores)
#
# in that order: guidance records each model's default sampling, and evaluate scores the gates there too. `all`
# packs right after the guidance stage, so the bundle's weights exist (and can land) hours before the measuring
# stages end (run folders do not always outlive a session), and again after samplers, with the gates' numbers on
# the cards: the weight files come out byte for byte the same. A stage fails when any of its jobs does (side by
# side ones included).
# The encoders stage copies the shipped encoders into $WORK/runs (the pack keeps them, as scripts/gpu_demo_pack.sh
# does); KEEP_ENCODERS=0 trains them instead (`rcdm recipe ssl`, SSL_EPOCHS / SUP_EPOCHS epochs: about 8.7 hours
# of one core).
# Outputs live outside the work tree in $WORK (default ~/rcdm-work); logs in $WORK/*.log. Run a stage again after an
# interruption: it resumes. PACK_STEP=N / PACK_STEPS="TARGET=N ..." pick the checkpoints evaluate scores and pack
# bundles; RCDM_BUDGET_S=N stops each RCDM at its first checkpoint after N seconds; RCDM_COMPILE=1 compiles the UNet
# (off: 0.97x a bf16 step on a free core, benchmarks/results/train-compile-cpu-bf16.md). A job that runs alone (an
# RCDM whose training partner has ended, the projector's guidance sweep) takes ALONE_THREADS
# threads (default 2): a cifar32-small bf16 training step of 64 on the 2-core AMD EPYC ran at 38.8 img/s on two
# threads against 21.7 on one (1.79x), and two one-thread jobs side by side at about 21 each, so pairs run one thread
# each and a lone job both cores.
set -uo pipefail

STAGE=${1:?usage: cpu_pack.sh encoders|rcdms|guidance|evaluate|samplers|pack|findings|all|status}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$HOME/rcdm-work}
PY=${PY:-$ROOT/.venv/bin/python}
ASSETS=$ROOT/src/rcdm/assets/models # the shipped pack: its encoders are copied from here, the new pack goes here
DATA=${DATA:-$ROOT/../shared/data/cifar10/cifar10-jpeg.tar.gz}
RESNET56=${RESNET56:-$ROOT/../shared/data/cifar-resnet/resnet56-4bfd9763.th}
KEEP_ENCODERS=${KEEP_ENCODERS:-1}
SSL_EPOCHS=${SSL_EPOCHS:-60}
SUP_EPOCHS=${SUP_EPOCHS:-30}
RCDM_STEPS=${RCDM_STEPS:-11000}
# per RCDM over RCDM_STEPS: the supervised RCDM trains on to 22,000 steps (1.41M images), the rest of the pack's
# 14-hour budget (docs/recipes.md, "The CPU pack"); RCDM_TARGET_STEPS= trains all three to RCDM_STEPS
RCDM_TARGET_STEPS=${RCDM_TARGET_STEPS-rcdm-cifar10-supervised=22000}
RCDM_COMPILE=${RCDM_COMPILE:-0}
# RCDM_INIT="TARGET=MODEL ...": that RCDM's run starts from MODEL's weights (`rcdm train --init-from`; for example the
# projector RCDM from the finished VICReg backbone RCDM, $WORK/runs/rcdm-cifar10-vicreg-backbone/model); default none
RCDM_INIT=${RCDM_INIT:-}
ALONE_THREADS=${ALONE_THREADS:-2}
EVAL_IMAGES=${EVAL_IMAGES:-1000}
GUIDANCE=${GUIDANCE:-1 5}
CURVE_GUIDANCE=${CURVE_GUIDANCE:-5}
CURVE_EVERY=${CURVE_EVERY:-2000}
SAMPLER_IMAGES=${SAMPLER_IMAGES:-200}
SAMPLERS=${SAMPLERS:-fast:1 paired:1 published:1 fast:3 fast:5 fast:8}
SAMPLER_TARGETS=${SAMPLER_TARGETS:-rcdm-cifar10-supervised rcdm-cifar10-vicreg-backbone}
PACK_GUIDANCE=${PACK_GUIDANCE:-}
# the guidance stage: each RCDM's default sampling, chosen from these weights on this many test images, 2 samples each
SWEEP_GUIDANCE=${SWEEP_GUIDANCE:-1 2 3 5}
SWEEP_IMAGES=${SWEEP_IMAGES:-500}
PACK_STEP=${PACK_STEP:-}
PACK_STEPS=${PACK_STEPS:-}
# the representation prior the pack ships (it models the VICReg encoder, which the pack keeps); PRIOR= ships none.
# The pack stage then adapts the supervised encoder onto the new VICReg backbone RCDM again (ADAPTER_METRICS: a
# JSON file of its measured numbers for the card).
PRIOR=${PRIOR-$ASSETS/prior-cifar10-vicreg-r20w1-backbone}
FINDING_IMAGES=${FINDING_IMAGES:-40}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
# the stages run this tree's code and bundle: a snapshot outside the work tree (git archive) borrows the work tree's
# venv, whose editable install would otherwise import the work tree's rcdm, and `rcdm adapt --model
# cifar10-vicreg-backbone` in the pack stage would then find the work tree's bundle, not the one packed here
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
RCDM="nice -n 10 $PY -m rcdm.cli"
JUDGE="cifar-resnet56:$RESNET56"
mkdir -p "$WORK/runs"
if [ "$STAGE" = status ]; then # where each RCDM stands in steps and CPU hours, against BUDGET_CPU_H (default 28)
    # shellcheck disable=SC2086  # TARGET=N words
    exec $PY -m rcdm.cli recipe status --runs "$WORK/runs" --steps "$RCDM_STEPS" $RCDM_TARGET_STEPS \
        --budget-cpu-h "${BUDGET_CPU_H:-28}"
fi
CIFAR=$($PY -c "import sys; from rcdm.pack.cifar10 import cifar10_root; print(cifar10_root(sys.argv[1]))" "$DATA") ||
    exit 1
steps=()
for s in $PACK_STEP $PACK_STEPS; do steps+=(--step "$s"); done
resume_flag() { [ -d "$1/checkpoints" ] && echo --resume; }
of_target() { # of_target TARGET DEFAULT PAIRS: N of the word TARGET=N in PAIRS, else DEFAULT
    local value=$2 pair
    for pair in $3; do [ "${pair%%=*}" = "$1" ] && value=${pair#*=}; done
    echo "$value"
}
packed_model() { # packed_model TARGET: the folder `recipe pack` bundles for it (rcdm.pack.rcdms.packed_model)
    $PY -c "import sys; from rcdm.pack.rcdms import packed_model
print(packed_model(sys.argv[1], int(sys.argv[2]) if sys.argv[2] else None))" "$WORK/runs/$1" \
        "$(of_target "$1" "$PACK_STEP" "$PACK_STEPS")"
}
trained() { # trained TARGET: 0 when its final model is trained to its steps (rcdm.pack.rcdms.trained_steps), 1 when
    # not, 2 (with a line) when Python cannot tell: the caller then fails at once instead of starting a doomed job
    local n
    n=$($PY -c "import sys; from rcdm.pack.rcdms import trained_steps
print(trained_steps(sys.argv[1]))" "$WORK/runs/$1") && [[ $n =~ ^[0-9]+$ ]] || {
        echo "cpu_pack.sh: cannot read how far $1 is trained (Python said '${n:-nothing}'; see above)" >&2
        return 2
    }
    [ "$n" -ge "$(of_target "$1" "$RCDM_STEPS" "$RCDM_TARGET_STEPS")" ]
}

encoder() { # encoder NAME OBJECTIVE EPOCHS SHIPPED (the bundled encoder KEEP_ENCODERS=1 copies)
    [ -f "$WORK/runs/$1/encoder/card.json" ] && { echo "$1: finished"; return 0; }
    if [ "$KEEP_ENCODERS" = 1 ]; then # copied whole or not at all: a folder with card.json is a finished encoder
        rm -rf "$WORK/runs/$1/encoder.part" && mkdir -p "$WORK/runs/$1" &&
            cp -r "$ASSETS/$4" "$WORK/runs/$1/encoder.part" &&
            mv "$WORK/runs/$1/encoder.part" "$WORK/runs/$1/encoder" && echo "$1: the shipped $4"
        return
    fi
    # shellcheck disable=SC2046  # resume_flag: no flag or one word
    $RCDM recipe ssl --data "$CIFAR" --out "$WORK/runs/$1" --objective "$2" --epochs "$3" --width 1 \
        --num-workers 0 --no-progress $(resume_flag "$WORK/runs/$1") >>"$WORK/$1.log" 2>&1
}

rcdm() { # rcdm TARGET (skipped, with a note, until its encoder is finished)
    trained "$1"
    case $? in 0) echo "$1: finished" && return 0 ;; 2) return 1 ;; esac
    local enc=ssl
    [ "$1" = rcdm-cifar10-supervised ] && enc=supervised
    [ -f "$WORK/runs/$enc/encoder/card.json" ] || {
        echo "$1: its encoder ($WORK/runs/$enc) is not finished yet: run the encoders stage, then this again"
        return 0
    }
    local init
    init=$(of_target "$1" "" "$RCDM_INIT")
    # shellcheck disable=SC2046
    $RCDM recipe rcdm --profile cpu --runs "$WORK/runs" --data "$CIFAR" --only "$1" \
        --steps "$(of_target "$1" "$RCDM_STEPS" "$RCDM_TARGET_STEPS")" ${init:+--init-from "$init"} \
        ${RCDM_BUDGET_S:+--time-budget-s "$RCDM_BUDGET_S"} $([ "$RCDM_COMPILE" = 1 ] && echo --compile) \
        --no-progress $(resume_flag "$WORK/runs/$1") \
        >>"$WORK/$1.log" 2>&1
}

init_pending() { # the projector's RCDM_INIT is a folder not written yet (say, the VICReg backbone RCDM's final model)
    local init
    init=$(of_target rcdm-cifar10-vicreg-projector "" "$RCDM_INIT")
    [[ $init == */* ]] && [ ! -e "$init" ]
}

widen() { # widen TARGET PID: TARGET's one-thread job PID, left alone, stopped with SIGTERM (training writes a
    # checkpoint of the step under way) and resumed with ALONE_THREADS; $widened: the job to wait for now
    widened=$2
    [ "$ALONE_THREADS" != 1 ] || return 0
    # the training process under the background subshell, once it runs (the subshell first asks whether the run is
    # trained: a signal then would stop that question, not the training)
    while kill -0 "$2" 2>/dev/null && ! pgrep -P "$2" -f "recipe rcdm" >/dev/null; do sleep 0.2; done
    pkill -TERM -P "$2" -f "recipe rcdm"
    wait "$2" # 143: stopped at a checkpoint (or ended meanwhile: resuming it is then a no-op)
    OMP_NUM_THREADS=$ALONE_THREADS rcdm "$1" &
    widened=$!
}

joined() { # joined RC: RC, or the status of the job started last with & when that one failed
    local rc=$1
    wait "$!" || rc=$?
    return "$rc"
}

case $STAGE in
all) # each stage resumes where it stopped, so run this again after an interruption
    for stage in encoders rcdms guidance pack evaluate samplers pack findings findings-g1; do
        echo "$(date -u +%FT%TZ) cpu_pack.sh: $stage"
        if [ "$stage" = findings-g1 ]; then
            PACK_GUIDANCE=1 bash "$0" findings
        else
            bash "$0" "$stage"
        fi || {
            echo "cpu_pack.sh all: the $stage stage failed (see $WORK/*.log); run \`cpu_pack.sh all\` again to resume" >&2
            exit 1
        }
    done
    ;;
encoders)
    encoder ssl vicreg "$SSL_EPOCHS" cifar10-vicreg-r20w1 &
    encoder supervised supervised "$SUP_EPOCHS" cifar10-supervised-r20w1
    joined $?
    ;;
rcdms) # the two backbone models first (the gates), side by side; the projector model on the first core they free:
    # one thread while the other is still training (its final model not written yet), else ALONE_THREADS (the pair
    # can end far apart: one resumed later, or paused for other work). Whichever of two one-thread jobs ends first,
    # the one left is stopped with SIGTERM (it writes a checkpoint of the step under way) and resumed with
    # ALONE_THREADS, so no core idles. A projector that starts from a model the other job is still training
    # (RCDM_INIT) waits for that job, which meanwhile takes both threads.
    rcdm rcdm-cifar10-supervised &
    sup=$!
    rcdm rcdm-cifar10-vicreg-backbone &
    vic=$!
    first=
    wait -n -p first "$sup" "$vic"
    rc=$?
    other=$sup other_target=rcdm-cifar10-supervised
    [ "$first" = "$sup" ] && other=$vic other_target=rcdm-cifar10-vicreg-backbone
    proj='' threads=''
    if [ "$rc" = 0 ] && init_pending; then # it starts from the other job's final model: wait for that one
        widen "$other_target" "$other"
        wait "$widened" || rc=$?
        other=''
    fi
    if [ "$rc" = 0 ]; then
        threads=$ALONE_THREADS
        [ -z "$other" ] || trained "$other_target" || threads=1
        OMP_NUM_THREADS=$threads rcdm rcdm-cifar10-vicreg-projector &
        proj=$!
    fi
    if [ -n "$other" ] && [ -n "$proj" ] && [ "$threads" != "$ALONE_THREADS" ]; then
        wait -n -p first "$other" "$proj"
        rc=$?
        if [ "$first" = "$other" ]; then
            other=''
            [ "$rc" = 0 ] && widen rcdm-cifar10-vicreg-projector "$proj" && proj=$widened
        else
            proj=''
            [ "$rc" = 0 ] && widen "$other_target" "$other" && other=$widened
        fi
    fi
    [ -z "$other" ] || wait "$other" || rc=$?
    [ -z "$proj" ] || wait "$proj" || rc=$?
    exit "$rc"
    ;;
evaluate) # two one-thread jobs side by side (two jobs of one thread do more than one of two): the supervised RCDM's
    # scores, and the two VICReg RCDMs' (about as many samples: the supervised curve is longer); each writes
    # metrics.json from every score on disk when it ends, so the one that ends last writes the whole
    evaluate() {
        # shellcheck disable=SC2086  # weight lists are words
        $RCDM recipe evaluate --runs "$WORK/runs" --data "$CIFAR" --judge "$JUDGE" --metrics "$WORK/metrics" \
            --eval-images "$EVAL_IMAGES" --guidance $GUIDANCE --curve-guidance $CURVE_GUIDANCE \
            --curve-every "$CURVE_EVERY" ${steps[@]+"${steps[@]}"} --only "$@" --no-progress 2>>"$WORK/evaluate.log"
    }
    evaluate rcdm-cifar10-supervised &
    evaluate rcdm-cifar10-vicreg-backbone rcdm-cifar10-vicreg-projector
    joined $?
    ;;
samplers)
    # shellcheck disable=SC2086
    $RCDM recipe samplers --runs "$WORK/runs" --data "$CIFAR" --judge "$JUDGE" --metrics "$WORK/metrics" \
        --eval-images "$SAMPLER_IMAGES" --settings $SAMPLERS --only $SAMPLER_TARGETS --no-progress \
        2>>"$WORK/evaluate.log"
    ;;
guidance) # each RCDM's default sampling, recorded into the model the pack stage bundles (two side by side; each
    # weight's scores kept in $WORK/guidance-scores, so an interrupted sweep resumes)
    sweep() {
        # shellcheck disable=SC2086  # weight lists are words
        $RCDM recipe guidance --model "$(packed_model "$1")" --data "$CIFAR" --judge "$JUDGE" --record \
            --guidance $SWEEP_GUIDANCE --eval-images "$SWEEP_IMAGES" --scores "$WORK/guidance-scores/$1" \
            --no-progress >>"$WORK/guidance.log" 2>&1
    }
    sweep rcdm-cifar10-supervised &
    sweep rcdm-cifar10-vicreg-backbone
    joined $? && OMP_NUM_THREADS=$ALONE_THREADS sweep rcdm-cifar10-vicreg-projector
    ;;
pack) # the cards carry the gates' numbers once the evaluate stage has written them
    metrics=$WORK/metrics.json
    [ -f "$metrics" ] || metrics=''
    $PY -m rcdm.cli recipe pack --runs "$WORK/runs" --out "$ASSETS" ${metrics:+--metrics "$metrics"} \
        --overwrite ${PACK_GUIDANCE:+--guidance "$PACK_GUIDANCE"} ${steps[@]+"${steps[@]}"} ${PRIOR:+--prior "$PRIOR"} \
        --demo-images "$CIFAR"/test/{airplane,automobile,bird,cat,deer,dog,frog,horse}/0001.jpg || exit 1
    # the supervised encoder through the new VICReg backbone RCDM (an adapter is tied to its base's weights)
    rm -rf "$WORK/adapt-sup-map"
    $RCDM adapt --model cifar10-vicreg-backbone --encoder rcdm-cifar:cifar10-supervised-r20w1 --data "$CIFAR/train" \
        --steps 0 --out "$WORK/adapt-sup-map" --no-progress 2>>"$WORK/pack.log" &&
        $PY -m rcdm.cli recipe add --bundle "$ASSETS" --adapter "$WORK/adapt-sup-map" --overwrite \
            ${ADAPTER_METRICS:+--metrics "$ADAPTER_METRICS"}
    ;;
findings) # the two analyses side by side, then the tables; PACK_GUIDANCE=1: unguided, into $WORK/findings-g1
    common=(--data "$CIFAR" --out "$WORK/findings${PACK_GUIDANCE:+-g$PACK_GUIDANCE}" --num-images "$FINDING_IMAGES" ${PACK_GUIDANCE:+--guidance "$PACK_GUIDANCE"} --no-progress)
    $RCDM recipe findings "${common[@]}" --parts invariance >>"$WORK/findings.log" 2>&1 &
    $RCDM recipe findings "${common[@]}" --parts adversarial >>"$WORK/findings.log" 2>&1
    joined $? && $RCDM recipe findings "${common[@]}" --parts table
    ;;
*)
    echo "unknown stage $STAGE: use encoders, rcdms, guidance, evaluate, samplers, pack, findings, all or status" >&2
    exit 2
    ;;
esac
