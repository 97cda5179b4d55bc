"""The README's table (and plot, with matplotlib) for benchmarks/missing_ratio.sh: conditional coherence
by number of inputs, and its mean over subsets, against the training missing ratio.

    python benchmarks/missing_ratio_table.py runs/missing        # prints markdown; writes OUT/missing_ratio.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = {"mopoe": "MoPoE", "mmvae": "MMVAE"}


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def collect(out: Path) -> dict[str, list[tuple[float, dict, dict]]]:
    """{model: [(ratio, conditional coherence by number of inputs, manifest's missing section)]}, by ratio."""
    found: dict[str, list] = {}
    for path in sorted((out / "results").glob("*-r*.json")):
        model, _, ratio = path.stem.rpartition("-r")
        res = load(path)
        if model not in MODELS or res is None or "conditional" not in res:
            continue
        manifest = json.loads((out / path.stem / "manifest.json").read_text())
        cond = {int(k): float(v) for k, v in res["conditional"].items()}
        found.setdefault(model, []).append((float(ratio), cond, manifest.get("missing") or {}))
    return {m: sorted(rows, key=lambda r: r[0]) for m, rows in found.items()}


def table(found: dict) -> str:
    n_mod = 1 + max(k for rows in found.values() for _, cond, _ in rows for k in cond)  # inputs go to M - 1
    sizes = "/".join(str(k) for k in range(1, n_mod + 1))
    inputs = " / ".join(str(k) for k in range(1, n_mod))
    lines = [
        f"| model | training missing ratio | observed modalities per training tuple ({sizes}) "
        f"| conditional coherence, {inputs} inputs | mean |",
        "| --- | --- | --- | --- | --- |",
    ]
    for model, rows in found.items():
        for ratio, cond, missing in rows:
            hist = missing.get("observed_per_tuple")
            h = " / ".join(str(hist.get(str(k), 0)) for k in range(1, n_mod + 1)) if hist else "complete"
            c = " / ".join(f"{cond[k]:.3f}" for k in sorted(cond))
            mean = sum(cond.values()) / len(cond)
            lines.append(f"| {MODELS[model]} | {ratio:g} | {h} | {c} | {mean:.3f} |")
    return "\n".join(lines)


def plot(found: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.5))
    most = max(k for rows in found.values() for _, cond, _ in rows for k in cond)
    for model, rows in found.items():
        ratios = [r for r, _, _ in rows]
        for k, style in ((1, ":"), (most, "--")):
            ax.plot(
                ratios,
                [c.get(k, float("nan")) for _, c, _ in rows],
                style,
                marker="o",
                label=f"{MODELS[model]}, {k} input(s)",
            )
    ax.set_xlabel("training missing ratio")
    ax.set_ylabel("conditional coherence")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(out: Path) -> None:
    found = collect(out)
    if not found:
        print(f"no results under {out / 'results'}", file=sys.stderr)
        sys.exit(1)
    print(table(found))
    if plot(found, out / "missing_ratio.png"):
        print(f"\n![conditional coherence against the training missing ratio]({out / 'missing_ratio.png'})")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/missing"))
