"""Issue 16's laptop target: minutes of training until MoPoE on polymnist-mini reaches conditional
coherence 0.5 from one input (test split, the project's classifiers).

Trains one run through the CLI in stages (`mmvae train ... --epochs E`, then `--resume --epochs E'`,
bit-identical to one uninterrupted run), and after each stage measures conditional coherence on the
1,000 test tuples (`mmvae eval coherence --n-joint 1`). Minutes are the training epochs' own wall-clock
seconds from the manifest's history (start-up and the evaluations excluded). Prints one row per stage,
the first stage that reaches --target, and, with --plot, draws coherence against minutes for every
run named in --runs (one run per line of the figure).

    python benchmarks/time_to_useful.py --out runs/laptop --classifiers runs/clf    # the CPU schedule, at its end
    python benchmarks/time_to_useful.py --out runs/laptop-flat --classifiers runs/clf --stages 10,20,30,40 \
        -- --lr-decay none                  (a decayed schedule ends at --epochs: stages need a constant rate)
    python benchmarks/time_to_useful.py --plot docs/figures/time-to-useful.png --runs runs/laptop-flat
    (--epoch-seconds S: minutes = epochs x S, for runs timed while other jobs shared the cores)

Time it on an otherwise idle machine: two torch processes on 2 cores stall each other.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def mmvae(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "mmvae_cli", *args], capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        sys.exit(f"mmvae {' '.join(args)} failed: {last}")
    return r.stdout


def train_minutes(run: Path) -> tuple[int, float]:
    """(epochs done, minutes of training) from the manifest's per-epoch history."""
    m = json.loads((run / "manifest.json").read_text())
    history = m.get("history", [])
    return len(history), sum(h["seconds"] for h in history) / 60


def stage_rows(run: Path) -> list[dict]:
    f = run / "time_to_useful.json"
    return json.loads(f.read_text()) if f.exists() else []


def measure(a, train_opts: list[str]) -> None:
    out = Path(a.out)
    rows = stage_rows(out)
    done = rows[-1]["epochs"] if rows else 0
    for e in (int(s) for s in a.stages.split(",")):
        if e <= done:
            continue
        common = ["--epochs", str(e), "--device", a.device, "--out", str(out)]
        if done == 0:
            mmvae("train", a.data, "--fusion", "mopoe", *common, "--overwrite", "--seed", str(a.seed), *train_opts)
        else:
            mmvae("train", a.data, *common, "--resume")
        coh = json.loads(
            mmvae(
                "eval",
                "coherence",
                str(out),
                "--classifiers",
                a.classifiers,
                "--n-joint",
                "1",
                "--json",
                "--device",
                a.device,
            )
        )
        epochs, minutes = train_minutes(out)
        row = {
            "epochs": epochs,
            "minutes": round(minutes, 2),
            **{f"inputs_{k}": v for k, v in coh["conditional"].items()},
        }
        rows.append(row)
        (out / "time_to_useful.json").write_text(json.dumps(rows, indent=1))
        print(
            f"{out.name}: epoch {epochs:3d}  {minutes:6.2f} min  conditional coherence "
            + " / ".join(f"{row[f'inputs_{k}']:.3f}" for k in sorted(coh["conditional"])),
            flush=True,
        )
        done = e
    hit = next((r for r in rows if r["inputs_1"] >= a.target), None)
    print(
        f"{out.name}: "
        + (
            f"reached {a.target} from one input at epoch {hit['epochs']} after {hit['minutes']:.1f} training minutes"
            if hit
            else f"did not reach {a.target} from one input"
        ),
        flush=True,
    )


def plot(a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for run in a.runs.split(","):
        rows = stage_rows(Path(run))
        minutes = [r["epochs"] * a.epoch_seconds / 60 if a.epoch_seconds else r["minutes"] for r in rows]
        ax.plot(minutes, [r["inputs_1"] for r in rows], marker="o", label=Path(run).name)
    ax.axhline(a.target, color="grey", ls="--", lw=0.8)
    ax.axvline(10, color="grey", ls=":", lw=0.8)
    ax.set_xlabel(
        f"training minutes, 2 CPU cores ({a.epoch_seconds:g} s per epoch, idle)"
        if a.epoch_seconds
        else "training minutes, 2 CPU cores"
    )
    ax.set_ylabel("conditional coherence, 1 input")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.plot, dpi=120)
    print(f"wrote {a.plot}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="the run folder (created; stages already measured are kept)")
    ap.add_argument("--classifiers", help="classifier bundle (mmvae classifier train polymnist-mini)")
    ap.add_argument("--data", default="polymnist-mini")
    ap.add_argument(
        "--stages", help="comma-separated epochs after which to measure (default: the schedule's end alone)"
    )
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--plot", help="draw coherence against minutes for --runs into this PNG")
    ap.add_argument("--runs", default="", help="comma-separated run folders for --plot")
    ap.add_argument(
        "--epoch-seconds",
        type=float,
        help="--plot: minutes = epochs x this (an idle epoch time measured separately) instead of the "
        "measured ones, for runs timed while other jobs shared the cores",
    )
    ap.add_argument("train_opts", nargs="*", help="after --: extra `mmvae train` options (e.g. --lr 1e-3)")
    a = ap.parse_args()
    if a.plot:
        plot(a)
    else:
        if not (a.out and a.classifiers):
            ap.error("--out and --classifiers are needed to measure")
        resolved = json.loads(mmvae("train", a.data, "--fusion", "mopoe", "--dry-run", *a.train_opts))
        a.stages = a.stages or str(resolved["train"]["epochs"])
        if resolved["train"]["lr_decay"] != "none" and "," in a.stages:
            ap.error(
                f"the schedule decays the rate (lr_decay {resolved['train']['lr_decay']}) and its horizon is the "
                "run's --epochs, so stages of one resumed run would stretch it: measure one stage per run "
                "(--stages E), or the curve at a constant rate (-- --lr-decay none)"
            )
        measure(a, a.train_opts)


if __name__ == "__main__":
    main()
