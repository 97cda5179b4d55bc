"""Markdown tables from the JSON results of benchmarks/paper_claims.sh.

python benchmarks/claims_table.py runs/claims
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = [("mvae", "MVAE"), ("mmvae", "MMVAE"), ("mopoe", "MoPoE"), ("mmvaeplus", "MMVAE+")]


def load(path: Path):
    try:
        text = path.read_text().strip()
        return json.loads(text.splitlines()[-1]) if text else None
    except (OSError, ValueError):
        return None


def fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def train_info(results: Path, name: str) -> str:
    lines = (
        (results / f"{name}-train.jsonl").read_text().splitlines() if (results / f"{name}-train.jsonl").exists() else []
    )
    epochs = [json.loads(line) for line in lines if line.strip()]
    if not epochs:
        return ""
    secs = sum(e.get("seconds", 0) for e in epochs)
    return f"{epochs[-1]['epoch']} epochs, {secs / 60:.1f} min"


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/claims")
    r = out / "results"
    clf = load(r / "clf.json")
    if clf:
        print(f"classifiers: {json.dumps(clf.get('test_accuracy', clf))}\n")
    epochs = sorted(
        {int(p.stem.rsplit("-e", 1)[1]) for p in r.glob("*-e*.json") if p.stem.rsplit("-e", 1)[1].isdigit()}
    )
    print("| model | epochs | 1 input | 2 inputs | 3 inputs | 4 inputs | cross (pairs) | joint |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for e in epochs:
        for key, label in MODELS:
            c = load(r / f"{key}-e{e}.json")
            if not c:
                continue
            cond = c.get("conditional", {})
            print(
                f"| {label} | {e} | "
                + " | ".join(fmt(cond.get(str(k))) for k in range(1, 5))
                + f" | {fmt(c.get('cross_pairs_mean'))} | {fmt(c.get('joint'))} |"
            )
    for key, label in MODELS:
        info = train_info(r, key)
        if info:
            print(f"\n{label} training: {info}", end="")
    print("\n")
    for key, label in MODELS:
        f = load(r / f"{key}-fit-ebm.json")
        if f:
            coh = f.get("joint_coherence", {})
            print(
                f"{label} + post-hoc energy: joint coherence base {fmt(coh.get('base'))} -> energy {fmt(coh.get('ebm'))}"
                f"  ({json.dumps({k: v for k, v in f.items() if k != 'joint_coherence'})[:300]})"
            )
    rows = [
        ("EB-MVAE, independent unimodal VAEs", load(r / "ebmvae-independent.json")),
        ("EB-MVAE, with the energy (Langevin on the unobserved latents)", load(r / "ebmvae-energy.json")),
    ]
    if any(c for _, c in rows):
        print("\n| EB-MVAE conditional coherence by observed modalities | 1 | 2 | 3 | 4 | joint |")
        print("| --- | --- | --- | --- | --- | --- |")
        for label, c in rows:
            if c:
                cond = c.get("conditional", {})
                print(
                    f"| {label} | "
                    + " | ".join(fmt(cond.get(str(k))) for k in range(1, 5))
                    + f" | {fmt(c.get('joint'))} |"
                )


if __name__ == "__main__":
    main()
