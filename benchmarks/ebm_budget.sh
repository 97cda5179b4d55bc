#!/usr/bin/env bash
# Issue 25's budget curve: joint coherence and the joint samples' class entropy of a post-hoc energy
# against its number of fit epochs (updates = epochs x training tuples / batch size), for each objective,
# over the bundle's gmm. Joint samples come from the prior alone, so no held-out tuple chooses anything
# (the conditional coherence the JSON also holds does not depend on the prior). The defaults of
# `mmvae fit-ebm` (config.EnergyDefaults) are set from this curve.
#
#   RUN=runs/priors/gmm10 CLF=runs/clf OUT=runs/budget bash benchmarks/ebm_budget.sh
#   python benchmarks/ebm_budget_table.py runs/budget
set -euo pipefail
MMVAE=${MMVAE:-mmvae}
RUN=${RUN:?RUN=a trained bundle with a gmm prior (mmvae fit-prior RUN --kind gmm)}
CLF=${CLF:?CLF=classifier bundle}
OUT=${OUT:-runs/budget}
DEVICE=${DEVICE:-auto}
N_JOINT=${N_JOINT:-1000}
EPOCHS=${EPOCHS:-5 20 50 100}
OBJECTIVES=${OBJECTIVES:-nce ml}
SAMPLERS=${SAMPLERS:-langevin sir}
R=$OUT/results
mkdir -p "$R"
for obj in $OBJECTIVES; do
    for e in $EPOCHS; do
        name=$obj-$e
        [ -s "$R/$name-fit.json" ] || $MMVAE fit-ebm "$RUN" --base gmm --objective "$obj" --epochs "$e" \
            --out "$OUT/$name" --overwrite --device "$DEVICE" --json > "$R/$name-fit.json"
        for s in $SAMPLERS; do
            steps=(); [ "$s" = sir ] && steps=(--steps 0)
            [ -s "$R/$name-$s.json" ] || $MMVAE eval coherence "$OUT/$name" --classifiers "$CLF" --prior ebm \
                --sampler "$s" "${steps[@]}" --n-joint "$N_JOINT" --device "$DEVICE" --json > "$R/$name-$s.json"
            echo "[$(date +%H:%M:%S)] $name $s done" >&2
        done
    done
done
