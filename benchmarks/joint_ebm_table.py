"""The README's tables for benchmarks/joint_ebm.sh and benchmarks/joint_ebm_ablation.sh: joint coherence
(binomial standard error) and conditional coherence by number of inputs, for each model and prior
(Table 3's rows: D, L, S, sampled from the energy and from the base prior); the joint runs' energy trace.

    python benchmarks/joint_ebm_table.py runs/joint
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROWS = [
    ("mopoe", "MoPoE", "base prior"),
    ("mopoe-posthoc", "MoPoE", "post-hoc energy"),
    ("mopoe-joint", "MoPoE", "joint energy (Algorithm 1)"),
    ("mmvae", "MMVAE", "base prior"),
    ("mmvae-posthoc", "MMVAE", "post-hoc energy"),
    ("mmvae-joint", "MMVAE", "joint energy (Algorithm 1)"),
    ("mmvaeplus-joint", "MMVAE+", 'joint energy ("Ours+")'),
]


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def main(out: Path) -> None:
    r = out / "results"
    print("| model | prior | joint coherence (± s.e.) | conditional coherence, 1 / 2 / 3 / 4 inputs |")
    print("| --- | --- | --- | --- |")
    ablation = sorted(p.stem for p in r.glob("ablation-*.json") if not p.stem.endswith("-base"))
    for name, model, prior in ROWS + [
        (f"{a}{suffix}", "Table 3: " + " ".join(a.split("-")[1:]), what)
        for a in ablation
        for suffix, what in (("", "joint energy (Algorithm 1)"), ("-base", "the same model, base prior"))
    ]:
        res = load(r / f"{name}.json")
        if res is None:
            continue
        res = res.get("coherence", res)
        p, n = res["joint"], res["n_joint"]
        se = math.sqrt(p * (1 - p) / n)
        cond = " / ".join(f"{v:.3f}" for _, v in sorted(res["conditional"].items(), key=lambda kv: int(kv[0])))
        print(f"| {model} | {prior} | {p:.3f} ± {se:.3f} (n = {n}) | {cond} |")
    for name in ["mopoe-joint", "mmvae-joint", "mmvaeplus-joint"] + ablation:
        log = r / f"{name}-train.jsonl"
        if not log.exists():
            continue
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        trace = ", ".join(
            f"{row['epoch']}: {row['energy_q']:.2f}/{row['energy_neg']:.2f}/{row['kl']:.1f}"
            for row in rows
            if row["epoch"] in (1, 2, 5, 10, 20, 30, 45, 60, 80, 100)
        )
        print(f"\n{name}: epoch: E_q[E] / E_neg[E] / KL(q||p0) -- {trace}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/joint"))
