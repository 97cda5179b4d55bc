#!/usr/bin/env bash
# Yuan et al.'s Table 3 for the jointly trained energy (Algorithm 1): hidden units D, layers L and
# Langevin steps S, the paper's four rows, each a `mmvae train DATA ... --prior ebm` run measured by
# joint coherence (N_JOINT samples) from its energy and from its base prior, and conditional coherence.
#
#   NAME (under $OUT)      --energy-hidden  --energy-layers  --langevin-steps
#   ablation-D200-L4-S50   200              4                50
#   ablation-D200-L6-S50   200              6                50
#   ablation-D400-L4-S30   400              4                30
#   ablation-D400-L4-S50   400              4                50   (the defaults; the paper's best)
#
# The paper ablates MMVAE on full PolyMNIST. On 2 CPU cores we ablate MMVAE+ on polymnist-text-mini with
# its recipe's CPU schedule (30 epochs, about 13 minutes a run at one thread), the one setting where a
# CPU-length run has learned the digits (README "Energy-based priors"):
#
#   OUT=runs/ablation DATA=polymnist-text-mini MODEL="--fusion moe --private-dim 32" CLF=runs/text-clf \
#       bash benchmarks/joint_ebm_ablation.sh
#   python benchmarks/joint_ebm_table.py runs/ablation
#
# CLF: existing classifiers for DATA (trained into $OUT/clf when unset). TRAIN_OPTS go to every train
# (e.g. "--schedule compare --epochs 100"). PARALLEL=1 runs the four rows at once (a GPU).
set -euo pipefail
MMVAE=${MMVAE:-mmvae}
OUT=${OUT:-runs/ablation}
DATA=${DATA:-polymnist-mini}
MODEL=${MODEL:---fusion mopoe}
DEVICE=${DEVICE:-auto}
N_JOINT=${N_JOINT:-2000}
PARALLEL=${PARALLEL:-0}
TRAIN_OPTS=${TRAIN_OPTS:-}
ROWS=${ROWS:-D200-L4-S50 D200-L6-S50 D400-L4-S30 D400-L4-S50}
R=$OUT/results
mkdir -p "$R"
say() { echo "[$(date +%H:%M:%S)] $*" >&2; }

$MMVAE data info "$DATA" > /dev/null 2>&1 || $MMVAE data build "$DATA" >&2
if [ -z "${CLF:-}" ]; then
    CLF=$OUT/clf
    [ -f "$OUT/clf.done" ] || { $MMVAE classifier train "$DATA" --out "$CLF" --device "$DEVICE" --overwrite \
        --json > "$R/clf.json" && touch "$OUT/clf.done"; }
fi

row() {  # D200-L4-S50
    local name=ablation-$1 d l s
    IFS=- read -r d l s <<< "$1"
    # shellcheck disable=SC2086
    $MMVAE train "$DATA" $MODEL --prior ebm --energy-hidden "${d#D}" --energy-layers "${l#L}" \
        --langevin-steps "${s#S}" --device "$DEVICE" --out "$OUT/$name" --overwrite \
        --log-jsonl "$R/$name-train.jsonl" $TRAIN_OPTS
    for prior in ebm base; do
        local suffix=""; [ "$prior" = base ] && suffix=-base
        $MMVAE eval coherence "$OUT/$name" --classifiers "$CLF" --n-joint "$N_JOINT" --prior "$prior" \
            --device "$DEVICE" --json > "$R/$name$suffix.json"
    done
    say "$name done"
}

jobs_=()
for r in $ROWS; do
    if [ "$PARALLEL" = 1 ]; then row "$r" & jobs_+=($!); else row "$r"; fi
done
fail=0
for job in "${jobs_[@]}"; do wait "$job" || fail=1; done
say "all done (failures: $fail)"
exit $fail
