# shellcheck shell=bash
# Sourced by the one-shot device scripts (gpu_demo_pack.sh, gpu_fast_path.sh) after they set OUT, WORK and PY:
# output folders, a timestamped summary, diffusers from the carried wheels when the image lacks it, this
# checkout on PYTHONPATH, $RCDM, and the device line (card, torch, diffusers) at the top of
# summary.txt.
export PYTHONUNBUFFERED=1 RCDM_CACHE=$WORK/cache
mkdir -p "$OUT" "$WORK"
T0=$(date +%s)
stamp() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$OUT/summary.txt"; }

if ! $PY -c "import diffusers" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
# shellcheck disable=SC2034  # used by the scripts that source this file
RCDM="$PY -m rcdm.cli"
$PY -c "import torch, diffusers; print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() \
else 'cpu', '| torch', torch.__version__, '| diffusers', diffusers.__version__)" | tee -a "$OUT/summary.txt"
