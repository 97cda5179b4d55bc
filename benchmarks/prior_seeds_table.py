"""The table of benchmarks/prior_seeds.sh: per seed, the mixture's and its energy's joint coherence (± s.e.)
and class entropy, the paired gain, and the mean gain with its standard error over seeds.

python benchmarks/prior_seeds_table.py OUT             # the energies ebm-seedS
python benchmarks/prior_seeds_table.py OUT "" -nu8     # and those of TAG=-nu8, each paired with the first
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def mean_se(xs: list[float]) -> tuple[float, float]:
    """The mean and its standard error over seeds (nan for one seed)."""
    n = len(xs)
    mean = sum(xs) / n
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n) if n > 1 else float("nan")


def load(r: Path, name: str) -> dict | None:
    f = r / f"{name}.json"
    return json.loads(f.read_text()) if f.exists() and f.stat().st_size else None  # empty: still running


def main(out: Path, tags: list[str]) -> None:
    r = out / "results"
    seeds = sorted(int(f.stem.split("seed")[1]) for f in r.glob("gmm-seed*.json") if not f.stem.endswith("-fit"))
    # a seed counts once every energy of every tag has its result
    done = {s: (load(r, f"gmm-seed{s}"), [load(r, f"ebm{t}-seed{s}") for t in tags]) for s in seeds}
    done = {s: (g, bs) for s, (g, bs) in done.items() if g is not None and all(b is not None for b in bs)}
    head = "| seed | gmm joint coherence | gmm class entropy |" + "".join(
        f" energy{t} joint coherence | energy{t} class entropy | gain{t} |" for t in tags
    )
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for s, (g, bs) in done.items():
        cells = "".join(
            f" {b['joint']:.3f} ± {b['joint_se']:.3f} | {b['coherent_class_entropy']:.3f} | {b['joint'] - g['joint']:+.3f} |"
            for b in bs
        )
        print(f"| {s} | {g['joint']:.3f} ± {g['joint_se']:.3f} | {g['coherent_class_entropy']:.3f} |{cells}")
    if not done:
        return
    print()
    for i, t in enumerate(tags):
        gain = mean_se([bs[i]["joint"] - g["joint"] for g, bs in done.values()])
        dh = mean_se([bs[i]["coherent_class_entropy"] - g["coherent_class_entropy"] for g, bs in done.values()])
        print(
            f"energy{t}: mean gain over {len(done)} seeds {gain[0]:+.3f} ± {gain[1]:.3f} (s.e. over seeds); "
            f"class entropy {dh[0]:+.3f}"
        )
        if i:
            d = mean_se([bs[i]["joint"] - bs[0]["joint"] for _, bs in done.values()])
            print(f"  energy{t} - energy{tags[0]}: {d[0]:+.3f} ± {d[1]:.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or [""])
