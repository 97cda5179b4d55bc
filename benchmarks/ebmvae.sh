#!/usr/bin/env bash
# EB-MVAE on polymnist-mini, diagnosed (issue 15): the unimodal beta-VAEs (--fusion none, the recipe's
# schedule: [cpu] on polymnist-mini), the digit classifiers, then for each energy objective in
# OBJECTIVES an energy fitted post hoc into its own bundle, benchmarks/ebmvae_diagnosis.py on it
# (probe, couplings' upper bounds, Langevin coherence by steps and step size) and, with EVAL=1,
# `mmvae eval coherence` at the energy's stored Langevin settings.
#
#   OUT=runs/ebmvae bash benchmarks/ebmvae.sh                       # recipe's CPU schedule (12 epochs)
#   OUT=runs/ebmvae100 EPOCHS=100 bash benchmarks/ebmvae.sh         # README: 10 min of VAE on 2 cores
#   OBJECTIVES="exact ncsn" N_TEST=500 SUBSETS_PER_K=0 bash benchmarks/ebmvae.sh
#
# Every step is skipped when its output exists, so a stopped run continues where it was.
set -euo pipefail
MMVAE=${MMVAE:-mmvae}
OUT=${OUT:-runs/ebmvae}
DEVICE=${DEVICE:-cpu}
OBJECTIVES=${OBJECTIVES:-"denoising exact ncsn"}
FIT_EPOCHS=${FIT_EPOCHS:-}      # empty: fit-ebm's defaults (denoising 1000 epochs, exact 20)
NCSN_EPOCHS=${NCSN_EPOCHS:-100} # ncsn updates are cheap (one double backward) and cover L levels
FIT_OPTS=${FIT_OPTS:-}          # appended to every fit-ebm
N_TEST=${N_TEST:-500}
SUBSETS_PER_K=${SUBSETS_PER_K:-0}
STEPS=${STEPS:-0,10,50,100,300}
EVAL=${EVAL:-0}
EPOCHS=${EPOCHS:-}               # empty: the recipe's schedule
R=$OUT/results
mkdir -p "$R"
say() { echo "[$(date +%H:%M:%S)] $*" >&2; }
HERE=$(cd "$(dirname "$0")" && pwd)

[ -f "$OUT/base/manifest.json" ] && grep -q '"finished"' "$OUT/base/manifest.json" || {
    say "training the unimodal VAEs"
    $MMVAE train polymnist-mini --fusion none --out "$OUT/base" --device "$DEVICE" --overwrite \
        --log-jsonl "$R/base-train.jsonl" ${EPOCHS:+--epochs "$EPOCHS"}
}
[ -f "$OUT/clf/manifest.json" ] || {
    say "training the classifiers"
    $MMVAE classifier train polymnist-mini --out "$OUT/clf" --device "$DEVICE" --json > "$R/clf.json"
}
for obj in $OBJECTIVES; do
    [ -f "$OUT/$obj/prior-ebm.safetensors" ] || [ -f "$OUT/$obj/ebm.safetensors" ] || {
        say "fit-ebm --objective $obj"
        $MMVAE fit-ebm "$OUT/base" --out "$OUT/$obj" --overwrite --objective "$obj" \
            $([ "$obj" = ncsn ] && echo "--epochs $NCSN_EPOCHS" || echo "${FIT_EPOCHS:+--epochs $FIT_EPOCHS}") \
            --classifiers "$OUT/clf" --n-joint 1000 --device "$DEVICE" --json $FIT_OPTS > "$R/$obj-fit.json"
    }
    [ -f "$R/$obj-diagnosis.json" ] || {
        say "diagnosis of $obj"
        python "$HERE/ebmvae_diagnosis.py" "$OUT/$obj" --classifiers "$OUT/clf" --n-test "$N_TEST" \
            --subsets-per-k "$SUBSETS_PER_K" --steps "$STEPS" --device "$DEVICE" \
            --json-out "$R/$obj-diagnosis.json" > "$R/$obj-diagnosis.md"
    }
    if [ "$EVAL" = 1 ] && [ ! -f "$R/$obj-coherence.json" ]; then
        say "eval coherence of $obj"
        $MMVAE eval coherence "$OUT/$obj" --classifiers "$OUT/clf" --prior ebm --n-joint 1000 --device "$DEVICE" \
            --json > "$R/$obj-coherence.json"
    fi
done
say "done: $R"
