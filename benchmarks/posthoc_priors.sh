#!/usr/bin/env bash
# Issue 14's comparison: post-hoc priors fitted to the same trained model's aggregate posterior, side by
# side: the base prior, Gaussian mixtures (a few component counts), a normalising flow and the energy.
# Joint coherence and conditional coherence with the same classifiers; fit seconds from each fit's JSON.
# Issue 25's measures for every prior too: the joint samples' class entropy (in the coherence JSON),
# the Frechet distance in the classifiers' feature space (NAME-fd.json) and the held-out log-density
# and memorisation check (NAME-prior.json). N_FD, N_PRIOR: their sample counts.
#
#   RUN=runs/joint/mopoe CLF=runs/joint/clf OUT=runs/priors bash benchmarks/posthoc_priors.sh
#   python benchmarks/posthoc_priors_table.py runs/priors
set -euo pipefail
MMVAE=${MMVAE:-mmvae}
RUN=${RUN:?RUN=trained bundle}
CLF=${CLF:?CLF=classifier bundle}
OUT=${OUT:-runs/priors}
DEVICE=${DEVICE:-auto}
N_JOINT=${N_JOINT:-2000}
N_FD=${N_FD:-10000}
N_PRIOR=${N_PRIOR:-1000}
COMPONENTS=${COMPONENTS:-1 10 50}
EBM_EPOCHS=${EBM_EPOCHS:-20}
FLOW_EPOCHS=${FLOW_EPOCHS:-20}
R=$OUT/results
mkdir -p "$R"
mm() { $MMVAE "$@"; }
coherence() {  # BUNDLE NAME PRIOR: coherence and class entropy, classifier-feature FD, log-density, memorisation
    mm eval coherence "$1" --classifiers "$CLF" --n-joint "$N_JOINT" --prior "$3" --device "$DEVICE" --json > "$R/$2.json"
    mm eval fid "$1" --features classifier --classifiers "$CLF" --n-fid "$N_FD" --prior "$3" --device "$DEVICE" \
        --json > "$R/$2-fd.json"
    mm eval prior "$1" --prior "$3" --n-prior "$N_PRIOR" --device "$DEVICE" --json > "$R/$2-prior.json"
    echo "[$(date +%H:%M:%S)] $2 done" >&2
}
coherence "$RUN" base base
for c in $COMPONENTS; do
    cov=full; [ "$c" -gt 10 ] && cov=diag
    mm fit-prior "$RUN" --kind gmm --components "$c" --covariance "$cov" --out "$OUT/gmm$c" --overwrite \
        --device "$DEVICE" --json > "$R/gmm$c-fit.json"
    coherence "$OUT/gmm$c" "gmm$c" gmm
done
mm fit-prior "$RUN" --kind flow --epochs "$FLOW_EPOCHS" --out "$OUT/flow" --overwrite --device "$DEVICE" \
    --json > "$R/flow-fit.json"
coherence "$OUT/flow" flow flow
mm fit-ebm "$RUN" --out "$OUT/ebm" --epochs "$EBM_EPOCHS" --overwrite --device "$DEVICE" --json > "$R/ebm-fit.json"
coherence "$OUT/ebm" ebm ebm
