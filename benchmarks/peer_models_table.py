"""The peer models' comparison table from benchmarks/peer_models.sh's results.

    python benchmarks/peer_models_table.py runs/peer-models

Per model: conditional coherence by number of inputs (mean over the subsets of that size), the mean
over the 20 single-source pairs, joint coherence with its standard error and the coherent joint
samples' class entropy, and the mean seconds per training epoch (the bundle's history).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from posthoc_priors_table import _pm, load  # a result file's JSON, a mean ± s.e. (same folder)

MODELS = [
    ("mopoe", "MoPoE"),
    ("mvtcae", "MVTCAE"),
    ("jmvae", "JMVAE"),
    ("mmjsd", "mmJSD"),
    ("dmvae", "DMVAE"),
    ("mmvaeplus", "MMVAE+"),
    ("cmvae", "CMVAE, all 40 clusters"),
    ("cmvae-pruned", "CMVAE, clusters selected"),
]


def fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def seconds_per_epoch(bundle: Path) -> str:
    try:
        m = json.loads((bundle / "manifest.json").read_text())
    except (OSError, ValueError):
        m = None
    secs = [e["seconds"] for e in (m or {}).get("history", []) if "seconds" in e]
    return f"{statistics.mean(secs):.1f}" if secs else "-"


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/peer-models")
    r = out / "results"
    print(
        "| model | 1 input | 2 inputs | 3 inputs | 4 inputs | cross (pairs) | joint (± s.e.) "
        "| class entropy, coherent joint samples | s/epoch |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for key, label in MODELS:
        c = load(r / f"{key}.json")
        if not c:
            continue
        cond = c.get("conditional", {})
        joint = _pm(c.get("joint"), c.get("joint_se"))
        print(
            f"| {label} | "
            + " | ".join(fmt(cond.get(str(k))) for k in range(1, 5))
            + f" | {fmt(c.get('cross_pairs_mean'))} | {joint} | {fmt(c.get('coherent_class_entropy'))}"
            + f" | {seconds_per_epoch(out / key.split('-')[0])} |"
        )
    sel = load(r / "cmvae-clusters.json")
    if sel:
        print(
            f"\nCMVAE's selection: {sel.get('selected')} of {sel.get('clusters_before')} clusters kept "
            f"({sel.get('kept')}), purity {fmt(sel.get('purity'))}, NMI {fmt(sel.get('nmi'))}"
        )


if __name__ == "__main__":
    main()
