"""The README's table for benchmarks/posthoc_priors.sh.

python benchmarks/posthoc_priors_table.py runs/priors

Issue 25's columns appear when some prior has them: the coherent samples' class entropy (nats; 2.303
is uniform over ten digits), the mean Frechet distance in the classifiers' feature space (NAME-fd.json),
the held-out log-density and the memorisation ratio (NAME-prior.json; near 0: the prior copies the
training latents).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _pm(mean, se, digits: int = 3) -> str:
    return "-" if mean is None else f"{mean:.{digits}f} ± {se:.{digits}f}"


def _dig(d: dict | None, *path):
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
    return d


#: (header, cell of a prior's results {"coh", "fit", "fd", "prior"} or None when it lacks it)
EXTRA = [
    (
        "class entropy, coherent samples (nats)",
        lambda r: (
            None
            if _dig(r["coh"], "coherent_class_entropy") is None
            else _pm(r["coh"]["coherent_class_entropy"], r["coh"]["coherent_class_entropy_se"])
        ),
    ),
    (
        "FD, classifier features (mean over modalities)",
        lambda r: None if _dig(r["fd"], "unconditional_mean") is None else f"{r['fd']['unconditional_mean']:.3f}",
    ),
    (
        "held-out log p(z) (nats)",
        lambda r: (
            None
            if _dig(r["prior"], "log_density", "test") is None
            else _pm(r["prior"]["log_density"]["test"]["mean"], r["prior"]["log_density"]["test"]["se"], 2)
        ),
    ),
    (
        "memorisation ratio",
        lambda r: (
            None if _dig(r["prior"], "memorisation", "ratio") is None else f"{r['prior']['memorisation']['ratio']:.3f}"
        ),
    ),
]


ENERGIES = {  # benchmarks/posthoc_priors.sh's energy rows, as the table names them
    "ebm-p0-ml": "energy over p0, ml, Langevin (0.3's default)",
    "ebm-gmm-ml": "energy over the gmm, ml, Langevin",
    "ebm": "**`mmvae fit-ebm RUN`: energy over the gmm, nce, importance resampling**",
    "ebm-langevin": "the same energy, Langevin (50 steps)",
    "ebm-flow": "energy over the flow, nce, importance resampling",
    "ncsn": "noise-conditional energy (ncsn), annealed Langevin",
}


def main(out: Path) -> None:
    r = out / "results"
    names = (
        ["base"]
        + sorted((p.stem for p in r.glob("gmm*.json") if re.fullmatch(r"gmm\d+", p.stem)), key=lambda s: int(s[3:]))
        + ["flow", *ENERGIES]
    )
    rows = []
    for name in names:
        res = load(r / f"{name}.json")
        if res is not None:
            parts = {"coh": res, "fit": load(r / f"{name}-fit.json")}
            parts.update(fd=load(r / f"{name}-fd.json"), prior=load(r / f"{name}-prior.json"))
            rows.append((name, parts))
    extra = [(h, f) for h, f in EXTRA if any(f(parts) is not None for _, parts in rows)]
    head = ["prior", "fit seconds", "joint coherence (± s.e.)", "conditional coherence, 1 / 2 / 3 / 4 inputs"]
    head += [h for h, _ in extra]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for name, parts in rows:
        res, fit = parts["coh"], parts["fit"]
        p, n = res["joint"], res["n_joint"]
        se = res.get("joint_se", math.sqrt(p * (1 - p) / n))
        seconds = "-" if fit is None or "seconds" not in fit else f"{fit['seconds']:.1f}"
        cond = " / ".join(f"{v:.3f}" for _, v in sorted(res["conditional"].items(), key=lambda kv: int(kv[0])))
        cells = [ENERGIES.get(name, name), seconds, _pm(p, se), cond] + [f(parts) or "-" for _, f in extra]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/priors"))
