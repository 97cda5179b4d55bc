#!/usr/bin/env bash
# Issue 13's experiment: conditional coherence of MoPoE and MMVAE on polymnist-mini against the training
# missing ratio (--missing-ratio R: each modality of each training tuple dropped with probability R, a
# tuple never left empty; seeded by --seed). Same schedule, seed and classifiers for every run;
# evaluation on the complete test tuples.
#
#   OUT=runs/missing EPOCHS=100 DEVICE=cuda bash benchmarks/missing_ratio.sh
#   python benchmarks/missing_ratio_table.py runs/missing      # markdown table (+ missing_ratio.png)
#
# On 2 CPU cores (what the README tables measured): polymnist-mini, 40 epochs at the CPU schedule's
# Adam 1e-3 (about 9 min a MoPoE run, 19 an MMVAE run), and polymnist-text-mini, whose text makes the
# digit learnable sooner, with its recipes (polymnist-text-{mopoe,mmvae}.toml), 25 epochs:
#   OUT=runs/missing SCHEDULE=compare EPOCHS=40 TRAIN_OPTS="--lr 1e-3" PARALLEL=0 DEVICE=cpu bash benchmarks/missing_ratio.sh
#   OUT=runs/missing-text DATA=polymnist-text-mini SCHEDULE= EPOCHS=25 PARALLEL=0 bash benchmarks/missing_ratio.sh
#
# A quick check that everything runs (a minute on a CPU, numbers meaningless): a tiny PolyMNIST-layout
# folder (DATA=polymnist DATA_ROOT=...), one epoch:
#   OUT=/tmp/missing DATA=polymnist DATA_ROOT=/tmp/tiny EPOCHS=1 CLF_OPTS="--epochs 1" \
#       EVAL_OPTS="--n-joint 20" PARALLEL=0 bash benchmarks/missing_ratio.sh
set -euo pipefail
MMVAE=${MMVAE:-mmvae}
OUT=${OUT:-runs/missing}
DATA=${DATA:-polymnist-mini}
DATA_ROOT=${DATA_ROOT:-}
EPOCHS=${EPOCHS:-100}
SCHEDULE=${SCHEDULE-compare}     # the recipes' [compare] schedule (batch 32); empty: the recipe's own (auto [cpu] on *-mini)
RATIOS=${RATIOS:-0 0.25 0.5 0.75}
MODELS=${MODELS:-mopoe mmvae}
DEVICE=${DEVICE:-auto}
SEED=${SEED:-0}
PARALLEL=${PARALLEL:-1}          # 1: runs train in parallel (a GPU); 0: one after another (a CPU)
TRAIN_OPTS=${TRAIN_OPTS:-}
EVAL_OPTS=${EVAL_OPTS:-}
CLF_OPTS=${CLF_OPTS:-}
R=$OUT/results
mkdir -p "$R"
say() { echo "[$(date +%H:%M:%S)] $*" >&2; }
ROOT=()
[ -n "$DATA_ROOT" ] && ROOT=(--data-root "$DATA_ROOT")
mm() { $MMVAE "$@"; }

if [ "$DATA" = polymnist-mini ]; then
    mm data info polymnist-mini "${ROOT[@]}" > /dev/null 2>&1 || mm data build polymnist-mini "${ROOT[@]}" >&2
fi
if [ ! -f "$OUT/clf.done" ]; then
    mm classifier train "$DATA" "${ROOT[@]}" --out "$OUT/clf" --device "$DEVICE" --overwrite $CLF_OPTS --json > "$R/clf.json"
    touch "$OUT/clf.done"; say "classifiers done"
fi

one() {  # MODEL RATIO
    local model=$1 ratio=$2 fusion name
    case $model in
        mopoe) fusion=mopoe ;;
        mmvae) fusion=moe ;;
        *) echo "unknown model $model" >&2; return 2 ;;
    esac
    name=$model-r$ratio
    local sched=()
    [ -n "$SCHEDULE" ] && sched=(--schedule "$SCHEDULE")
    mm train "$DATA" "${ROOT[@]}" --fusion "$fusion" --missing-ratio "$ratio" --seed "$SEED" "${sched[@]}" \
        --epochs "$EPOCHS" --device "$DEVICE" --out "$OUT/$name" --overwrite --log-jsonl "$R/$name-train.jsonl" \
        $TRAIN_OPTS
    mm eval coherence "$OUT/$name" "${ROOT[@]}" --classifiers "$OUT/clf" --device "$DEVICE" --seed "$SEED" --json $EVAL_OPTS \
        > "$R/$name.json"
    say "$name: coherence written"
}

jobs_=()
for model in $MODELS; do
    for ratio in $RATIOS; do
        if [ "$PARALLEL" = 1 ]; then one "$model" "$ratio" & jobs_+=($!); else one "$model" "$ratio"; fi
    done
done
fail=0
for job in "${jobs_[@]}"; do wait "$job" || fail=1; done
say "all done (failures: $fail)"
python "$(dirname "$0")/missing_ratio_table.py" "$OUT"
exit $fail
