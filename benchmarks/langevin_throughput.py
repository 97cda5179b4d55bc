"""Langevin throughput of the default EnergyNet (4 Linear layers of 400 units, GELU).

Prints (steps x batch) / seconds, i.e. sample-updates per second, for the prior
log-density -E(z) + log N(z; 0, I) on latent sizes 32 and 512 and batches 256
and 1024. One untimed warm-up run per configuration, then the median of
--repeats timed runs. Measures only; never asserts.

    python benchmarks/langevin_throughput.py [--device cpu|cuda|auto] [--steps 50] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mmvae_cli.priors.ebm.langevin import ebm_prior_log_prob, langevin, standard_normal_log_prob  # noqa: E402
from mmvae_cli.priors.ebm.net import EnergyNet  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_config(dim: int, batch: int, steps: int, repeats: int, device: torch.device, step_size: float) -> float:
    torch.manual_seed(0)
    net = EnergyNet(dim).to(device)
    log_prob = ebm_prior_log_prob(net, standard_normal_log_prob)
    z0 = torch.randn(batch, dim, device=device)
    langevin(log_prob, z0, steps, step_size)  # warm-up (allocator, kernels, caches)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        langevin(log_prob, z0, steps, step_size)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step-size", type=float, default=0.1)
    ap.add_argument("--dims", type=int, nargs="+", default=[32, 512])
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda requested but CUDA is not available")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"Langevin throughput, EnergyNet(dim, hidden=400, layers=4, gelu), {args.steps} steps, "
        f"median of {args.repeats}, device: {name}, torch {torch.__version__}"
    )
    print(f"{'latent':>7} {'batch':>6} {'seconds':>9} {'ms/step':>9} {'samples/s':>12}")
    for dim in args.dims:
        for batch in args.batches:
            sec = time_config(dim, batch, args.steps, args.repeats, device, args.step_size)
            print(
                f"{dim:>7} {batch:>6} {sec:>9.3f} {1e3 * sec / args.steps:>9.2f} {args.steps * batch / sec:>12,.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
