#!/usr/bin/env bash
# Issue 27: the peer models (JMVAE, mmJSD, MVTCAE, DMVAE, CMVAE) on the model comparison's schedule
# (`--schedule compare`: batch 32, Adam 5e-4, seed 0) beside the two models their papers' directions are
# stated against (MoPoE, MMVAE+), each trained for EPOCHS epochs, then conditional and joint coherence
# on the test tuples; CMVAE also after its post-hoc cluster selection (`eval clusters --split train
# --apply`). JOBS runs at a time (on a CPU give each OMP_NUM_THREADS=1).
#
#   OUT=runs/peer-models EPOCHS=50 DEVICE=cpu JOBS=2 bash benchmarks/peer_models.sh
#   python benchmarks/peer_models_table.py runs/peer-models
#
# A model whose coherence exists is skipped (rerun = resume; training resumes with --resume auto).
set -euo pipefail
MMVAE=${MMVAE:-mmvae}
OUT=${OUT:-runs/peer-models}
EPOCHS=${EPOCHS:-50}
DEVICE=${DEVICE:-auto}
JOBS=${JOBS:-2}
N_JOINT=${N_JOINT:-5000}
CLF=${CLF:-$OUT/clf}
R=$OUT/results
mkdir -p "$R"
say() { echo "[$(date +%H:%M:%S)] $*" >&2; }
mm() { $MMVAE "$@"; }

[ -f "$CLF/manifest.json" ] || mm classifier train polymnist-mini --out "$CLF" --device "$DEVICE" --json > "$R/clf.json"

model() {  # NAME train-options...
    local name=$1; shift
    [ -s "$R/$name.json" ] && return 0
    mm train polymnist-mini "$@" --schedule compare --epochs "$EPOCHS" --seed 0 --out "$OUT/$name" \
        --resume auto --device "$DEVICE" 2> "$R/$name-train.log"
    mm eval coherence "$OUT/$name" --classifiers "$CLF" --n-joint "$N_JOINT" --device "$DEVICE" --json \
        > "$R/$name.json.tmp" && mv "$R/$name.json.tmp" "$R/$name.json"
    if [ "$name" = cmvae ]; then
        mm eval clusters "$OUT/$name" --split train --apply --device "$DEVICE" --json > "$R/cmvae-clusters.json"
        mm eval coherence "$OUT/$name" --classifiers "$CLF" --n-joint "$N_JOINT" --device "$DEVICE" --json \
            > "$R/cmvae-pruned.json"
    fi
    say "$name done"
}

# longest first, so that JOBS queues end together
declare -A FLAGS=(
    [cmvae]="--objective cmvae" [mmvaeplus]="--fusion moe --private-dim 32" [dmvae]="--objective dmvae"
    [mmjsd]="--objective mmjsd" [jmvae]="--objective jmvae" [mvtcae]="--objective mvtcae" [mopoe]="--fusion mopoe"
)
for name in cmvae mmvaeplus dmvae mmjsd jmvae mvtcae mopoe; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    # shellcheck disable=SC2086
    model "$name" ${FLAGS[$name]} &
done
wait
