"""The README's table for benchmarks/posthoc_priors.sh.

python benchmarks/posthoc_priors_table.py runs/priors
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def main(out: Path) -> None:
    r = out / "results"
    names = (
        ["base"]
        + sorted((p.stem for p in r.glob("gmm*.json") if not p.stem.endswith("-fit")), key=lambda s: int(s[3:]))
        + ["flow", "ebm"]
    )
    print("| prior | fit seconds | joint coherence (± s.e.) | conditional coherence, 1 / 2 / 3 / 4 inputs |")
    print("| --- | --- | --- | --- |")
    for name in names:
        res, fit = load(r / f"{name}.json"), load(r / f"{name}-fit.json")
        if res is None:
            continue
        p, n = res["joint"], res["n_joint"]
        seconds = "-" if fit is None or "seconds" not in fit else f"{fit['seconds']:.1f}"
        cond = " / ".join(f"{v:.3f}" for _, v in sorted(res["conditional"].items(), key=lambda kv: int(kv[0])))
        print(f"| {name} | {seconds} | {p:.3f} ± {math.sqrt(p * (1 - p) / n):.3f} | {cond} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/priors"))
