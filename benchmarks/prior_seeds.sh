#!/usr/bin/env bash
# Issue 25: how much of "the energy beats the mixture" survives another fit? For each seed s, RUN's
# Gaussian mixture fitted again with --seed s (EM's initialisation and the posterior draws), and
# `mmvae fit-ebm` over it with --seed s; joint coherence and the coherent samples' class entropy of both
# (2,000 joint samples; conditional coherence is the prior's business of neither, so --limit 10 skips
# most of it). The energy's gain is read per seed, paired with the mixture it tilts.
#
#   RUN=runs/mopoe CLF=runs/clf OUT=runs/seeds-mopoe COMPONENTS=10 COVARIANCE=full bash benchmarks/prior_seeds.sh
#   python benchmarks/prior_seeds_table.py runs/seeds-mopoe
#
# GMM_ARGS: more fit-prior flags (e.g. --n-init 1, the single EM run of 0.4.2's table). EBM_ARGS and TAG:
# another energy over the same mixtures, e.g. TAG=-nu8 EBM_ARGS="--noise-ratio 8" (dirs ebm-nu8-seedS),
# then `prior_seeds_table.py OUT "" -nu8` pairs the two energies.
# QUALITY=1: also the Frechet distance in the classifiers' feature space (eval fid) and the memorisation
# check (eval prior) of the mixture and the energy (NAME-fd.json, NAME-prior.json).
# A seed whose results exist is skipped (rerun = resume).
set -euo pipefail
# shellcheck disable=SC2086  # GMM_ARGS and EBM_ARGS are word lists
MMVAE=${MMVAE:-mmvae}
RUN=${RUN:?RUN=trained bundle}
CLF=${CLF:?CLF=classifier bundle}
OUT=${OUT:-runs/seeds}
DEVICE=${DEVICE:-auto}
SEEDS=${SEEDS:-0 1 2 3 4}
COMPONENTS=${COMPONENTS:-10}
COVARIANCE=${COVARIANCE:-full}
N_JOINT=${N_JOINT:-2000}
GMM_ARGS=${GMM_ARGS:-}
EBM_ARGS=${EBM_ARGS:-}
TAG=${TAG:-}
QUALITY=${QUALITY:-0}
N_FD=${N_FD:-2000}
N_PRIOR=${N_PRIOR:-1000}
quality() {  # BUNDLE PRIOR NAME: the Frechet distance and the memorisation check
    [ "$QUALITY" = 1 ] || return 0
    [ -s "$r/$3-fd.json" ] || $MMVAE eval fid "$1" --features classifier --classifiers "$CLF" --n-fid "$N_FD" \
        --prior "$2" --device "$DEVICE" --json > "$r/$3-fd.json"
    [ -s "$r/$3-prior.json" ] || $MMVAE eval prior "$1" --prior "$2" --n-prior "$N_PRIOR" --device "$DEVICE" \
        --json > "$r/$3-prior.json"
}
mkdir -p "$OUT/results"
for s in $SEEDS; do
    g=$OUT/gmm-seed$s e=$OUT/ebm$TAG-seed$s r=$OUT/results
    if [ ! -d "$g" ]; then
        rm -rf "$g.tmp" && cp -r "$RUN" "$g.tmp"
        $MMVAE fit-prior "$g.tmp" --kind gmm --components "$COMPONENTS" --covariance "$COVARIANCE" --seed "$s" \
            $GMM_ARGS --overwrite --device "$DEVICE" --json > "$r/gmm-seed$s-fit.json"
        mv "$g.tmp" "$g"
    fi
    [ -s "$r/gmm-seed$s.json" ] || $MMVAE eval coherence "$g" --classifiers "$CLF" --n-joint "$N_JOINT" --prior gmm \
        --limit 10 --device "$DEVICE" --json > "$r/gmm-seed$s.json"
    [ -d "$e" ] || $MMVAE fit-ebm "$g" --out "$e" --seed "$s" $EBM_ARGS --device "$DEVICE" --json \
        > "$r/ebm$TAG-seed$s-fit.json"
    [ -s "$r/ebm$TAG-seed$s.json" ] || $MMVAE eval coherence "$e" --classifiers "$CLF" --n-joint "$N_JOINT" \
        --prior ebm --limit 10 --device "$DEVICE" --json > "$r/ebm$TAG-seed$s.json"
    quality "$g" gmm "gmm-seed$s"
    quality "$e" ebm "ebm$TAG-seed$s"
    echo "[$(date +%H:%M:%S)] seed $s done" >&2
done
