"""Seconds per epoch of the real `mmvae train` on full-PolyMNIST-sized data (60,000 tuples).

    python benchmarks/epoch_time.py [--tuples 60000] [--epochs 2] [--batch-size 256] [--device auto]
                                    [--variants fp32,bf16,bf16+channels-last,bf16+compile]
                                    [--fusion mopoe] [--data-root DIR] [--workdir DIR]

The official PolyMNIST zip cannot be downloaded where this was written, so the tuples are
polymnist-mini's 4,000 training tuples (real PolyMNIST-format images) repeated up to --tuples: the cost
of a step does not depend on the pixel values. They are written once as a dataset file of our own
format (5 modalities of 3x28x28 uint8 + labels), which `mmvae train FILE.safetensors` reads with the
PolyMNIST reference conv nets; every variant then runs `mmvae train` in a subprocess with the MoPoE
recipe (`recipes/polymnist-mopoe.toml`: latent 512, beta 2.5, Laplace 0.75, Adam 5e-4, batch 256) and
--log-jsonl, and the epoch seconds are read back from that log. The first epoch includes the warm-up
(CUDA context, cuDNN autotuning, torch.compile), so the table reports the last epoch as the steady
state. Prints the table; never asserts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from mmvae_cli.data import load_dataset

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "polymnist-mopoe.toml"


def write_tuples(path: Path, n: int, data_root: str | None) -> None:
    """polymnist-mini's training tuples repeated to `n` tuples, as one safetensors dataset file."""
    mini = load_dataset("polymnist-mini", "train", data_root)
    idx = torch.arange(n) % len(mini)
    tensors = {m: mini.tensors[m][idx].contiguous() for m in mini.tensors}
    tensors["label"] = mini.labels[idx].long()
    save_file(tensors, str(path))


def run_variant(data: Path, run: Path, variant: str, a) -> list[float]:
    flags = ["--precision", "bf16" if "bf16" in variant else ("fp16" if "fp16" in variant else "fp32")]
    flags += ["--compile"] if "compile" in variant else []
    flags += ["--channels-last"] if "channels-last" in variant else []
    log = run.with_suffix(".jsonl")
    cmd = [
        sys.executable,
        "-m",
        "mmvae_cli",
        "train",
        str(data),
        "--fusion",
        a.fusion,
        "--recipe",
        str(RECIPE),
        "--epochs",
        str(a.epochs),
        "--batch-size",
        str(a.batch_size),
        "--device",
        a.device,
        "--out",
        str(run),
        "--overwrite",
        "--log-jsonl",
        str(log),
        *flags,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(f"{variant}: mmvae train failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
        return []
    secs = [json.loads(line)["seconds"] for line in log.read_text().splitlines() if '"epoch"' in line]
    print(f"{variant}: epochs {secs} s, process wall {wall:.1f} s", flush=True)
    return secs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tuples", type=int, default=60000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--fusion", default="mopoe")
    ap.add_argument("--variants", default="fp32,bf16,bf16+channels-last,bf16+compile")
    ap.add_argument("--data-root", default=None, help="where polymnist-mini is (or is built)")
    ap.add_argument("--workdir", default=None, help="folder for the dataset file and runs (default: a temp folder)")
    a = ap.parse_args()
    tmp = None if a.workdir else tempfile.TemporaryDirectory()
    work = Path(a.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"polymnist-{a.tuples}.safetensors"
    if not data.exists():
        write_tuples(data, a.tuples, a.data_root)
    cuda = torch.cuda.is_available() and a.device != "cpu"
    where = torch.cuda.get_device_name(0) if cuda else f"cpu, {torch.get_num_threads()} torch threads"
    print(
        f"device: {where}; torch {torch.__version__}; {a.tuples} tuples, batch {a.batch_size}, "
        f"{a.fusion}, {a.epochs} epochs per variant",
        flush=True,
    )
    rows = [(v, run_variant(data, work / f"run-{v.replace('+', '-')}", v, a)) for v in a.variants.split(",")]
    print(f"{'variant':<24} {'first epoch s':>14} {'last epoch s':>13} {'samples/s':>10}")
    for v, secs in rows:
        if secs:
            print(f"{v:<24} {secs[0]:>14.2f} {secs[-1]:>13.2f} {a.tuples / secs[-1]:>10.0f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
