#!/usr/bin/env bash
# Issue 11's experiment: the energy-based prior trained jointly with the VAE (Yuan et al. Algorithm 1)
# against the base prior and the post-hoc energy, on polymnist-mini, through the CLI:
#   NAME          base prior                     post-hoc energy (fit-ebm)      joint energy (--prior ebm)
#   mopoe         mopoe                          mopoe-posthoc                  mopoe-joint
#   mmvae         mmvae                          mmvae-posthoc                  mmvae-joint
#   mmvaeplus                                                                   mmvaeplus-joint ("Ours+")
# Joint coherence (N_JOINT samples from each prior) and conditional coherence by number of inputs, same
# classifiers, same test split. Yuan et al.'s Table 3 (hidden units D, layers L, Langevin steps S) is
# benchmarks/joint_ebm_ablation.sh.
#
#   OUT=runs/joint EPOCHS=100 MODELS="mopoe mmvae mmvaeplus" DEVICE=cuda bash benchmarks/joint_ebm.sh
#   python benchmarks/joint_ebm_table.py runs/joint           # the README's table from the JSON results
#
# The papers' schedule is 100 epochs at batch 32 (the recipes' [compare]); on 2 CPU cores MoPoE takes
# about 20 s an epoch (more with the joint energy's Langevin chains) and MMVAE about five times that.
set -euo pipefail
MMVAE=${MMVAE:-mmvae}
OUT=${OUT:-runs/joint}
EPOCHS=${EPOCHS:-100}
MODELS=${MODELS:-mopoe mmvae mmvaeplus}
DEVICE=${DEVICE:-auto}
N_JOINT=${N_JOINT:-5000}
EBM_EPOCHS=${EBM_EPOCHS:-20}
PARALLEL=${PARALLEL:-1}          # 1: models train in parallel (a GPU); 0: one after another (a CPU)
TRAIN_OPTS=${TRAIN_OPTS:-}
EVAL_OPTS=${EVAL_OPTS:-}
CLF_OPTS=${CLF_OPTS:-}
R=$OUT/results
mkdir -p "$R"
say() { echo "[$(date +%H:%M:%S)] $*" >&2; }
mm() { $MMVAE "$@"; }

mm data info polymnist-mini > /dev/null 2>&1 || mm data build polymnist-mini >&2
if [ ! -f "$OUT/clf.done" ]; then
    mm classifier train polymnist-mini --out "$OUT/clf" --device "$DEVICE" --overwrite $CLF_OPTS --json > "$R/clf.json"
    touch "$OUT/clf.done"; say "classifiers done"
fi

coherence() {  # RUN NAME PRIOR
    mm eval coherence "$1" --classifiers "$OUT/clf" --n-joint "$N_JOINT" --prior "$3" --device "$DEVICE" --json \
        $EVAL_OPTS > "$R/$2.json"
    say "$2: coherence written"
}

train() {  # NAME train-options...
    local name=$1; shift
    mm train polymnist-mini "$@" --schedule compare --epochs "$EPOCHS" --device "$DEVICE" --out "$OUT/$name" \
        --overwrite --log-jsonl "$R/$name-train.jsonl" $TRAIN_OPTS
}

family() {  # NAME train-options...: base prior, post-hoc energy, joint energy
    local name=$1; shift
    train "$name" "$@"
    coherence "$OUT/$name" "$name" base
    mm fit-ebm "$OUT/$name" --out "$OUT/$name-posthoc" --epochs "$EBM_EPOCHS" --device "$DEVICE" --overwrite \
        --json > "$R/$name-posthoc-fit.json"
    coherence "$OUT/$name-posthoc" "$name-posthoc" ebm
    train "$name-joint" "$@" --prior ebm
    coherence "$OUT/$name-joint" "$name-joint" ebm
}

jobs_=()
for model in $MODELS; do
    case $model in
        mopoe) cmd=(family mopoe --fusion mopoe) ;;
        mmvae) cmd=(family mmvae --fusion moe) ;;
        mmvaeplus) cmd=(eval 'train mmvaeplus-joint --fusion moe --private-dim 32 --prior ebm && coherence "$OUT/mmvaeplus-joint" mmvaeplus-joint ebm') ;;
        *) echo "unknown model $model" >&2; exit 2 ;;
    esac
    if [ "$PARALLEL" = 1 ]; then "${cmd[@]}" & jobs_+=($!); else "${cmd[@]}"; fi
done
fail=0
for job in "${jobs_[@]}"; do wait "$job" || fail=1; done
say "all done (failures: $fail)"
exit $fail
