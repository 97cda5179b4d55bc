"""Evaluation time of each metric on the current device, for a PolyMNIST-shaped MoPoE (5 x 3x28x28).

    python benchmarks/eval_time.py [--device auto] [--n-test 100] [--k 12] [--n-joint 1000]
                                   [--n-train 500] [--n-fid 50] [--latent-dim 512] [--metrics all]

The model, classifiers and data are random (a metric's cost does not depend on the weights or pixel
values); the numbers are seconds per call of the same functions `mmvae eval` runs, and a per-unit rate
to extrapolate to the papers' settings (10,000 test tuples, 10,000 joint samples, K up to 1000).
FID is timed in its two parts: Inception features per image (a randomly initialised FID Inception-v3,
for TIMING ONLY: same architecture and input size as pytorch-fid's, the real weights are never needed
here) and one 2048-d Frechet distance (a matrix square root; a model's FID needs 2 per modality). Prints a table; never asserts.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from mmvae_cli.classifier import Classifiers
from mmvae_cli.data.base import MultimodalData
from mmvae_cli.evaluate import suite
from mmvae_cli.model import ModalitySpec, ModelConfig, MultimodalVAE

NAMES = [f"m{i}" for i in range(5)]


def _data(n: int, split: str, seed: int) -> MultimodalData:
    g = torch.Generator().manual_seed(seed)
    t = {m: torch.randint(0, 256, (n, 3, 28, 28), dtype=torch.uint8, generator=g) for m in NAMES}
    return MultimodalData("random-polymnist", split, t, torch.arange(n) % 10, fingerprint=f"random{seed}")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n-test", type=int, default=100, help="evaluation tuples (coherence, likelihood, latent)")
    ap.add_argument("--k", type=int, default=12, help="importance samples for the likelihood")
    ap.add_argument("--n-joint", type=int, default=1000, help="prior samples for joint coherence")
    ap.add_argument("--n-train", type=int, default=500, help="training tuples for the latent probe")
    ap.add_argument("--n-fid", type=int, default=50, help="images pushed through the Inception for the FID timing")
    ap.add_argument("--latent-dim", type=int, default=512)
    ap.add_argument("--metrics", default="all", help="comma-separated from coherence,likelihood,latent,fid or all")
    a = ap.parse_args()
    device = torch.device(
        "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device)
    )
    metrics = list(suite.METRICS) if a.metrics == "all" else a.metrics.split(",")
    torch.manual_seed(0)
    model = (
        MultimodalVAE(ModelConfig([ModalitySpec(m, [3, 28, 28]) for m in NAMES], latent_dim=a.latent_dim))
        .to(device)
        .eval()
    )
    test, train = _data(a.n_test, "test", 1), _data(a.n_train, "train", 2)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    )
    print(f"device: {device} ({where}); torch {torch.__version__}; MoPoE, latent {a.latent_dim}, 5 x 3x28x28")
    print(f"{'metric':<11} {'setting':<44} {'seconds':>8}  rate")
    for metric in metrics:
        _sync(device)
        t0 = time.perf_counter()
        if metric == "coherence":
            clf = Classifiers({m: [3, 28, 28] for m in NAMES}).to(device).eval()
            suite.coherence(model, clf, test, device, a.n_joint, "base", 0)
            setting = f"{a.n_joint} joint samples + {a.n_test} tuples x 30 subsets"
        elif metric == "likelihood":
            suite.likelihood(model, test, device, a.k, 0)
            setting = f"{a.n_test} tuples x 31 subsets x K={a.k}"
            units = a.n_test * 31 * a.k
        elif metric == "latent":
            suite.latent(model, train, test, device, a.n_train, 0)
            setting = f"{a.n_train} train + {a.n_test} test tuples, 31 probes"
        elif metric == "fid":
            # two parts with different scaling: Inception features (per image) and the Frechet
            # distance (one 2048x2048 matrix square root per FID, 2 x modalities of them per model)
            from mmvae_cli.evaluate import fid as F

            extractor = F.FIDInceptionFeatures(F._build_fid_inception_net()).to(device).eval()  # random: timing only
            imgs = torch.rand(a.n_fid, 3, 28, 28, generator=torch.Generator().manual_seed(0))
            _sync(device)
            t0 = time.perf_counter()
            F.inception_features([imgs], extractor, device)
            _sync(device)
            s = time.perf_counter() - t0
            print(
                f"{'fid':<11} {f'Inception features of {a.n_fid} images (299x299)':<44} {s:>8.1f}  "
                f"{a.n_fid / s:.1f} images/s",
                flush=True,
            )
            g = torch.Generator().manual_seed(1)
            mu, sigma = F.statistics(torch.randn(3000, F.FEATURE_DIM, generator=g).numpy())
            mu2, sigma2 = F.statistics((torch.randn(3000, F.FEATURE_DIM, generator=g) + 0.1).numpy())
            t0 = time.perf_counter()
            F.frechet_distance(mu, sigma, mu2, sigma2)
            s = time.perf_counter() - t0
            print(
                f"{'fid':<11} {'one Frechet distance (2048-d, scipy sqrtm)':<44} {s:>8.1f}  "
                f"x {2 * len(NAMES)} per model (uncond. + cond.)",
                flush=True,
            )
            continue
        else:
            raise SystemExit(f"unknown metric {metric!r}")
        _sync(device)
        s = time.perf_counter() - t0
        rate = f"{units / s:.0f} decoded latents/s" if metric == "likelihood" else ""
        print(f"{metric:<11} {setting:<44} {s:>8.1f}  {rate}", flush=True)


if __name__ == "__main__":
    main()
