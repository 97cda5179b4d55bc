"""The table of benchmarks/prior_seeds.sh: per seed, the mixture's and its energy's joint coherence (± s.e.)
and class entropy, the paired gain, and the mean gain with its standard error over seeds.

python benchmarks/prior_seeds_table.py OUT             # the energies ebm-seedS
python benchmarks/prior_seeds_table.py OUT "" -nu8     # and those of TAG=-nu8, each paired with the first
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from posthoc_priors_table import load as load_file  # a result file's JSON, None while it is empty (same folder)

from mmvae_cli.evaluate.prior import mean_se as _mean_se


def mean_se(xs: list[float]) -> tuple[float, float]:
    """The mean over seeds and its standard error (evaluate.prior.mean_se)."""
    d = _mean_se(torch.tensor(xs))
    return d["mean"], d["se"]


def load(r: Path, name: str) -> dict | None:
    return load_file(r / f"{name}.json")


def main(out: Path, tags: list[str]) -> None:
    r = out / "results"
    seeds = sorted(int(f.stem[len("gmm-seed") :]) for f in r.glob("gmm-seed*.json") if f.stem[8:].isdigit())
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
        quality(r, t, list(done))


def quality(r: Path, tag: str, seeds: list[int]) -> None:
    """With QUALITY=1's results: the mean Frechet distance (classifier features) and memorisation ratio of
    the mixture and the energy per seed, and the energy's paired FD change."""
    fd = [(fid(r, f"gmm-seed{s}"), fid(r, f"ebm{tag}-seed{s}")) for s in seeds]
    mem = [(memo(r, f"gmm-seed{s}"), memo(r, f"ebm{tag}-seed{s}")) for s in seeds]
    have = [i for i, (a, b) in enumerate(fd) if a is not None and b is not None]
    if not have:
        return
    rows = ", ".join(f"{seeds[i]}: {fd[i][0]:.1f} -> {fd[i][1]:.1f}" for i in have)
    d = mean_se([fd[i][1] - fd[i][0] for i in have])
    print(f"  FD, classifier features (gmm -> energy{tag}), {rows}; change {d[0]:+.1f} ± {d[1]:.1f}")
    m = [f"{seeds[i]}: {a:.2f} -> {b:.2f}" for i, (a, b) in enumerate(mem) if a is not None and b is not None]
    if m:
        print(f"  memorisation ratio (gmm -> energy{tag}), {', '.join(m)}")


def fid(r: Path, name: str) -> float | None:
    d = load(r, f"{name}-fd")
    return None if d is None else d.get("unconditional_mean")


def memo(r: Path, name: str) -> float | None:
    d = load(r, f"{name}-prior")
    return None if d is None else (d.get("memorisation") or {}).get("ratio")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or [""])
