"""The table of benchmarks/prior_seeds.sh: per seed, the mixture's and its energy's joint coherence (± s.e.)
and class entropy, the paired gain, and the mean gain with its standard error over seeds.

python benchmarks/prior_seeds_table.py OUT
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def main(out: Path) -> None:
    r = out / "results"
    rows, gains, dh = [], [], []
    for f in sorted(r.glob("gmm-seed*.json"), key=lambda p: int(p.stem.split("seed")[1].split("-")[0])):
        if f.stem.endswith("-fit"):
            continue
        s = f.stem.split("seed")[1]
        e = r / f"ebm-seed{s}.json"
        if not e.exists() or not e.stat().st_size or not f.stat().st_size:  # a seed still running
            continue
        g, b = json.loads(f.read_text()), json.loads(e.read_text())
        gains.append(b["joint"] - g["joint"])
        dh.append(b["coherent_class_entropy"] - g["coherent_class_entropy"])
        rows.append(
            f"| {s} | {g['joint']:.3f} ± {g['joint_se']:.3f} | {g['coherent_class_entropy']:.3f} | "
            f"{b['joint']:.3f} ± {b['joint_se']:.3f} | {b['coherent_class_entropy']:.3f} | {gains[-1]:+.3f} |"
        )
    print("| seed | gmm joint coherence | gmm class entropy | energy joint coherence | energy class entropy | gain |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    n = len(gains)
    if n:
        mean = sum(gains) / n
        se = math.sqrt(sum((x - mean) ** 2 for x in gains) / (n - 1) / n) if n > 1 else float("nan")
        print(f"\nmean gain over {n} seeds: {mean:+.3f} ± {se:.3f} (s.e. over seeds); class entropy {sum(dh) / n:+.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
