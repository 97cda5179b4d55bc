"""Our training step under speed variants, alternating in one process (ratios robust to a shared machine).

    python benchmarks/step_variants.py [--model mopoe] [--batch-sizes 32,64,256] [--rounds 5] [--steps 2]
                                       [--variants adam,fused,fused+grouped] [--threads N]

Variants (same model, same data: polymnist-mini's tuples, or random uint8 images without it):
  adam           torch.optim.Adam's default (per-parameter loop on the CPU), separate nets
  fused          Adam(fused=True), as train.make_optimizer now builds it, separate nets
  fused+grouped  the same with --grouped-nets (nets/grouped.py)
  fused+whole    fused, every net call on the whole batch (--cpu-chunk 0; the others use the default)
  fused+compile  fused, every encoder and decoder under torch.compile (--compile; runtime.speed_up)

    python benchmarks/step_variants.py --model mmvaeplus --variants fused+whole,fused --batch-sizes 64,256
Per batch size and round, every variant runs --steps steps in turn; prints the median seconds per
step (and the minimum: on a machine shared with other jobs the least disturbed round) and each
variant's speed relative to the first, from the medians. Never asserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer import OUR_MODELS, our_config  # noqa: E402

from mmvae_cli.config import TrainSettings  # noqa: E402
from mmvae_cli.data import load_dataset  # noqa: E402
from mmvae_cli.data.base import MultimodalData  # noqa: E402
from mmvae_cli.model import MultimodalVAE  # noqa: E402
from mmvae_cli.runtime import speed_up  # noqa: E402
from mmvae_cli.train import make_optimizer  # noqa: E402


def data_tuples() -> MultimodalData:
    try:
        return load_dataset("polymnist-mini", "train")
    except Exception:
        g = torch.Generator().manual_seed(0)
        t = {f"m{i}": torch.randint(0, 256, (4000, 3, 28, 28), dtype=torch.uint8, generator=g) for i in range(5)}
        return MultimodalData("random", "train", t)


def make(variant: str, model: str, batch: int):
    torch.manual_seed(0)
    net = MultimodalVAE(our_config(model)).train()
    net.grouped_nets = "grouped" in variant
    if "whole" in variant:
        net.cpu_chunk = 0
    if "compile" in variant:
        speed_up(net, compile=True)
    if "fused" in variant:
        opt = make_optimizer(net, TrainSettings(lr=1e-3, batch_size=batch))
    else:
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    return net, opt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mopoe", choices=list(OUR_MODELS))
    ap.add_argument("--batch-sizes", default="32,64,256")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--variants", default="adam,fused,fused+grouped")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    data, variants = data_tuples(), a.variants.split(",")
    print(f"cpu, {torch.get_num_threads()} torch threads; {a.model}; {a.rounds} rounds x {a.steps} steps")
    print(
        "| batch | "
        + " | ".join(f"{v} s/step" for v in variants)
        + " | "
        + " | ".join(f"{v} speed-up" for v in variants[1:])
        + " |"
    )
    print("|---:|" + "---:|" * (2 * len(variants) - 1))
    for b in (int(s) for s in a.batch_sizes.split(",")):
        sides = {v: make(v, a.model, b) for v in variants}
        times = {v: [] for v in variants}
        pos = 0

        def step(net, opt, b=b):
            nonlocal pos
            idx = torch.arange(pos, pos + b) % len(data)
            pos += b
            loss, _ = net(data.batch(idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for net, opt in sides.values():  # warm-up (compiled nets: two steps, compile and recompile)
            step(net, opt)
            step(net, opt)
        for _ in range(a.rounds):
            for v, (net, opt) in sides.items():
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    step(net, opt)
                times[v].append((time.perf_counter() - t0) / a.steps)
        med = {v: statistics.median(t) for v, t in times.items()}
        first = med[variants[0]]
        cells = [f"{med[v]:.3f} (min {min(times[v]):.3f})" for v in variants] + [
            f"{first / med[v]:.2f}x" for v in variants[1:]
        ]
        print(f"| {b} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
