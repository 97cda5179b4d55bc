#!/usr/bin/env bash
# The README's paper-claim experiments on polymnist-mini, end to end through the CLI:
#   1. the four models with one schedule (recipes' [compare]: batch 32, Adam 5e-4), coherence after
#      MID and after EPOCHS epochs (MVAE lowest single-input coherence, MMVAE flat in the number of
#      inputs, MoPoE rising, MMVAE+ best single input);
#   2. the energy-based prior fitted post hoc to the trained MoPoE and MMVAE: joint coherence of
#      base-prior vs energy-prior samples (Yuan et al.'s headline claim);
#   3. EB-MVAE: unimodal beta-VAEs (--fusion none) for EPOCHS epochs, an energy over their latents
#      by denoising score matching, conditional coherence by number of observed modalities.
#
#   OUT=runs/claims EPOCHS=100 MID=50 DEVICE=cuda bash benchmarks/paper_claims.sh
#   python benchmarks/claims_table.py runs/claims          # the tables, from the JSON results
#
# Models train in parallel (one process each; on a CPU set OMP_NUM_THREADS). On one H100 the whole
# script took 16 minutes (all six jobs sharing the GPU); on 2 CPU cores it would take many hours.
set -euo pipefail
MMVAE=${MMVAE:-mmvae}
OUT=${OUT:-runs/claims}
EPOCHS=${EPOCHS:-100}
MID=${MID:-50}
DEVICE=${DEVICE:-auto}
N_JOINT=${N_JOINT:-5000}
EBM_EPOCHS=${EBM_EPOCHS:-20}
TRAIN_OPTS=${TRAIN_OPTS:-}      # appended to every `mmvae train` (e.g. "--precision bf16")
EVAL_OPTS=${EVAL_OPTS:-}        # appended to every `mmvae eval coherence` (e.g. "--limit 200")
CLF_OPTS=${CLF_OPTS:-}
R=$OUT/results
mkdir -p "$R"
say() { echo "[$(date +%H:%M:%S)] $*" >&2; }
mm() { $MMVAE "$@"; }

mm data info polymnist-mini > /dev/null 2>&1 || mm data build polymnist-mini >&2   # once, before the parallel jobs

classifiers() {
    mm classifier train polymnist-mini --out "$OUT/clf" --device "$DEVICE" $CLF_OPTS --json > "$R/clf.json"
    touch "$OUT/clf.done"; say "classifiers done"
}

wait_clf() { until [ -f "$OUT/clf.done" ]; do sleep 5; done; }

coherence() {  # RUN NAME [extra eval options]
    local run=$1 name=$2; shift 2
    wait_clf
    mm eval coherence "$run" --classifiers "$OUT/clf" --n-joint "$N_JOINT" --device "$DEVICE" --json $EVAL_OPTS "$@" \
        > "$R/$name.json"
    say "$name: coherence written"
}

model() {  # NAME train-options...
    local name=$1; shift
    local run=$OUT/$name
    mm train polymnist-mini "$@" --schedule compare --epochs "$MID" --device "$DEVICE" --out "$run" \
        --overwrite --log-jsonl "$R/$name-train.jsonl" $TRAIN_OPTS
    coherence "$run" "$name-e$MID"
    mm train polymnist-mini "$@" --schedule compare --epochs "$EPOCHS" --device "$DEVICE" --out "$run" --resume \
        --log-jsonl "$R/$name-train.jsonl" $TRAIN_OPTS
    coherence "$run" "$name-e$EPOCHS"
}

posthoc_ebm() {  # NAME: fit the energy to the trained NAME, joint coherence before/after
    local name=$1
    wait_clf
    mm fit-ebm "$OUT/$name" --out "$OUT/$name-ebm" --epochs "$EBM_EPOCHS" --classifiers "$OUT/clf" \
        --n-joint "$N_JOINT" --device "$DEVICE" --overwrite --json > "$R/$name-fit-ebm.json"
    say "$name: energy fitted"
}

ebmvae() {
    local run=$OUT/ebmvae
    mm train polymnist-mini --fusion none --epochs "$EPOCHS" --device "$DEVICE" --out "$run" --overwrite \
        --log-jsonl "$R/ebmvae-train.jsonl" $TRAIN_OPTS
    coherence "$run" ebmvae-independent
    mm fit-ebm "$run" --objective denoising --sigma 0.25 --projections 4 --epochs 30 --langevin-steps 100 \
        --step-size 0.1 --device "$DEVICE" --overwrite --json > "$R/ebmvae-fit-ebm.json"
    coherence "$run" ebmvae-energy --prior ebm
}

classifiers &
(model mvae --fusion poe) &
(model mmvae --fusion moe && posthoc_ebm mmvae) &
(model mopoe --fusion mopoe && posthoc_ebm mopoe) &
(model mmvaeplus --fusion moe --private-dim 32) &
ebmvae &
fail=0
for job in $(jobs -p); do wait "$job" || fail=1; done
say "all done (failures: $fail)"
touch "$OUT/all.done"
exit $fail
