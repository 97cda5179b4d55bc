"""The table of benchmarks/ebm_budget.sh: joint coherence (± s.e.) and the coherent joint samples' class
entropy (nats; 2.303 is uniform over ten digits) by objective, fit epochs and sampler, with fit seconds.

python benchmarks/ebm_budget_table.py runs/budget
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from posthoc_priors_table import load  # the last JSON line of a result file (same folder)


def main(out: Path) -> None:
    r = out / "results"
    fits = sorted(
        (m.group(1), int(m.group(2))) for p in r.glob("*-fit.json") if (m := re.fullmatch(r"(\w+)-(\d+)-fit", p.stem))
    )
    print("| objective | epochs | fit seconds | sampler | joint coherence (± s.e.) | class entropy, coherent samples |")
    print("| --- | --- | --- | --- | --- | --- |")
    for obj, e in fits:
        fit = load(r / f"{obj}-{e}-fit.json") or {}
        for s in ("langevin", "sir"):
            c = load(r / f"{obj}-{e}-{s}.json")
            if c is None:
                continue
            ent = f"{c['coherent_class_entropy']:.3f} ± {c['coherent_class_entropy_se']:.3f}"
            sec = f"{fit['seconds']:.0f}" if "seconds" in fit else "-"
            print(f"| {obj} | {e} | {sec} | {s} | {c['joint']:.3f} ± {c['joint_se']:.3f} | {ent} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/budget"))
