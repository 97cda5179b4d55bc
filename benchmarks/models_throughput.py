"""Training throughput (samples/s) of every model on PolyMNIST-shaped data (5 x 3x28x28 uint8), current device.

    python benchmarks/models_throughput.py [--batch-size 256] [--steps 10] [--device auto]
                                          [--models mopoe,...]

Prints a table; never asserts. Data is random uint8 on the device (the step's cost does not
depend on the pixel values); each model gets warm-up steps before the timed ones.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from mmvae_cli.data.base import to_float
from mmvae_cli.model import ModalitySpec, ModelConfig, MultimodalVAE

MODELS = {  # every model of the papers (recipes/polymnist-*.toml), at --latent-dim (MMVAE+: 32 + 32)
    "mvae": dict(fusion="poe", objective="mvae"),
    "mmvae-elbo": dict(fusion="moe", objective="elbo"),
    "mmvae-iwae-k1": dict(fusion="moe", objective="iwae", k=1),
    "mmvae-iwae-k10": dict(fusion="moe", objective="iwae", k=10),
    "mmvae-dreg-k10": dict(fusion="moe", objective="dreg", k=10),
    "mopoe": dict(fusion="mopoe", objective="elbo"),
    "mmvaeplus-k1": dict(fusion="moe", objective="dreg", k=1, private_dim=32, posterior="laplace", prior="laplace"),
    "mmvaeplus-k10": dict(fusion="moe", objective="dreg", k=10, private_dim=32, posterior="laplace", prior="laplace"),
    # the peer models (recipes/polymnist-{jmvae,mmjsd,mvtcae,dmvae,cmvae}.toml, docs/peer-models.md)
    "jmvae": dict(fusion="joint", objective="jmvae"),
    "mmjsd": dict(fusion="moe", objective="mmjsd"),
    "mvtcae": dict(fusion="poe", objective="mvtcae"),
    "dmvae": dict(fusion="poe", objective="dmvae", private_dim=32, latent_dim=512),
    "cmvae": dict(
        fusion="moe", objective="cmvae", private_dim=32, posterior="laplace", prior="laplace", extra={"clusters": 40}
    ),
}


def measure(name: str, kw: dict, batch: int, steps: int, device: torch.device, latent: int) -> float:
    torch.manual_seed(0)
    kw = dict(kw)
    if kw.get("private_dim"):
        latent = kw.pop("latent_dim", 32)  # MMVAE+ paper: z 32-d, w_m 32-d (DMVAE's recipe: z 512-d)
    cfg = ModelConfig([ModalitySpec(f"m{i}", [3, 28, 28]) for i in range(5)], latent_dim=latent, **kw)
    model = MultimodalVAE(cfg).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    data = {f"m{i}": torch.randint(0, 256, (batch * 4, 3, 28, 28), dtype=torch.uint8, device=device) for i in range(5)}

    def step(i):
        idx = torch.randint(0, batch * 4, (batch,), device=device)
        x = {k: to_float(v[idx]) for k, v in data.items()}
        loss, _ = model(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(2):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--latent-dim", type=int, default=512)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", default="all", help=f"comma-separated from {', '.join(MODELS)} or 'all'")
    a = ap.parse_args()
    device = torch.device(
        "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device)
    )
    names = list(MODELS) if a.models == "all" else a.models.split(",")
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    )
    print(f"device: {device} ({where}); torch {torch.__version__}; batch {a.batch_size}; {a.steps} timed steps")
    print(f"{'model':<16} {'samples/s':>10}")
    for n in names:
        print(f"{n:<16} {measure(n, MODELS[n], a.batch_size, a.steps, device, a.latent_dim):>10.1f}", flush=True)


if __name__ == "__main__":
    main()
