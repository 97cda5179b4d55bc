#!/usr/bin/env bash
# Issues 14 and 25: post-hoc priors fitted to the same trained model's aggregate posterior, side by side:
# the base prior, Gaussian mixtures (a few component counts), a normalising flow, and energies: over p0
# (0.3's default), as tilts of the fitted mixture and of the flow (fit-ebm --base), by maximum likelihood
# (ml) and by noise-contrastive estimation (nce), sampled by Langevin and by importance resampling
# (--sampler sir), the noise-conditional energy (ncsn), and `mmvae fit-ebm RUN` with its defaults.
# Every row: joint coherence and the joint samples' class entropy (coherence JSON), the Frechet distance
# in the classifiers' feature space (NAME-fd.json), the held-out log-density where there is one and the
# memorisation check (NAME-prior.json); fit seconds from each fit's JSON. Conditional coherence does not
# depend on the prior (it is reported on every row and is the same).
#
#   RUN=runs/mopoe CLF=runs/clf OUT=runs/priors bash benchmarks/posthoc_priors.sh
#   python benchmarks/posthoc_priors_table.py runs/priors
#
# ROWS selects rows by name (default: all); a row whose results exist is skipped (rerun = resume).
set -euo pipefail
MMVAE=${MMVAE:-mmvae}
RUN=${RUN:?RUN=trained bundle}
CLF=${CLF:?CLF=classifier bundle}
OUT=${OUT:-runs/priors}
DEVICE=${DEVICE:-auto}
N_JOINT=${N_JOINT:-2000}
N_FD=${N_FD:-2000}
N_PRIOR=${N_PRIOR:-1000}
COMPONENTS=${COMPONENTS:-1 10 50}
BASE_GMM=${BASE_GMM:-10}          # the mixture the energies tilt: the best gmm row's components
EBM_EPOCHS=${EBM_EPOCHS:-20}      # ml, nce and ncsn fits (the rows without a budget of their own)
FLOW_EPOCHS=${FLOW_EPOCHS:-20}
ROWS=${ROWS:-base gmm flow ebm-p0-ml ebm-gmm-ml ebm ebm-langevin ebm-flow ncsn}
R=$OUT/results
mkdir -p "$R"
mm() { $MMVAE "$@"; }
want() { [[ " $ROWS " == *" $1 "* ]]; }
measure() {  # BUNDLE NAME PRIOR [SAMPLER FLAGS...]: coherence and class entropy, FD, log-density, memorisation
    local b=$1 name=$2 prior=$3; shift 3
    [ -s "$R/$name-prior.json" ] && return 0
    mm eval coherence "$b" --classifiers "$CLF" --n-joint "$N_JOINT" --prior "$prior" "$@" --device "$DEVICE" \
        --json > "$R/$name.json"
    mm eval fid "$b" --features classifier --classifiers "$CLF" --n-fid "$N_FD" --prior "$prior" "$@" \
        --device "$DEVICE" --json > "$R/$name-fd.json"
    mm eval prior "$b" --prior "$prior" --n-prior "$N_PRIOR" "$@" --device "$DEVICE" --json > "$R/$name-prior.json"
    echo "[$(date +%H:%M:%S)] $name done" >&2
}
copy_of_run() {  # DEST: RUN's bundle copied (a bundle a prior is fitted into, so an energy can tilt it)
    [ -d "$1" ] || { cp -r "$RUN" "$1.tmp" && mv "$1.tmp" "$1"; }
}
fit_ebm() {  # SOURCE NAME FLAGS...: an energy fitted to SOURCE's model into OUT/NAME
    local src=$1 name=$2; shift 2
    [ -s "$R/$name-fit.json" ] || mm fit-ebm "$src" --out "$OUT/$name" --overwrite "$@" --device "$DEVICE" \
        --json > "$R/$name-fit.json"
}

want base && measure "$RUN" base base
if want gmm; then
    for c in $COMPONENTS; do
        cov=full; [ "$c" -gt 10 ] && cov=diag
        if [ ! -s "$R/gmm$c-fit.json" ]; then
            copy_of_run "$OUT/gmm$c"
            mm fit-prior "$OUT/gmm$c" --kind gmm --components "$c" --covariance "$cov" --overwrite \
                --device "$DEVICE" --json > "$R/gmm$c-fit.json"
        fi
        measure "$OUT/gmm$c" "gmm$c" gmm
    done
fi
if want flow || want ebm-flow; then
    if [ ! -s "$R/flow-fit.json" ]; then
        copy_of_run "$OUT/flow"
        mm fit-prior "$OUT/flow" --kind flow --epochs "$FLOW_EPOCHS" --overwrite --device "$DEVICE" \
            --json > "$R/flow-fit.json"
    fi
    want flow && measure "$OUT/flow" flow flow
fi
GMM_RUN=$OUT/gmm$BASE_GMM
if [[ "$ROWS" == *ebm-gmm* ]] && [ ! -s "$R/gmm$BASE_GMM-fit.json" ]; then
    echo "the gmm rows must include $BASE_GMM components (COMPONENTS, BASE_GMM)" >&2; exit 2
fi
want ebm-p0-ml && fit_ebm "$RUN" ebm-p0-ml --base base --objective ml --epochs "$EBM_EPOCHS" && \
    measure "$OUT/ebm-p0-ml" ebm-p0-ml ebm
want ebm-gmm-ml && fit_ebm "$GMM_RUN" ebm-gmm-ml --base gmm --objective ml --epochs "$EBM_EPOCHS" && \
    measure "$OUT/ebm-gmm-ml" ebm-gmm-ml ebm
if want ebm || want ebm-langevin; then  # `mmvae fit-ebm RUN` with its defaults, RUN holding the gmm it tilts
    fit_ebm "$GMM_RUN" ebm
    want ebm && measure "$OUT/ebm" ebm ebm
    want ebm-langevin && cp "$R/ebm-fit.json" "$R/ebm-langevin-fit.json" && \
        measure "$OUT/ebm" ebm-langevin ebm --sampler langevin --steps 50
fi
want ebm-flow && fit_ebm "$OUT/flow" ebm-flow --base flow && measure "$OUT/ebm-flow" ebm-flow ebm
want ncsn && fit_ebm "$RUN" ncsn --objective ncsn --epochs "$EBM_EPOCHS" && measure "$OUT/ncsn" ncsn ebm
