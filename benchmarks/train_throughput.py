"""Training throughput of our MoPoE step against a straightforward baseline, in the same run.

    python benchmarks/train_throughput.py [--png-root DIR] [--batch-size 256] [--steps 5] [--rounds 3]
                                          [--threads N] [--device auto] [--variants fp32,channels-last,bf16]
                                          [--baseline-workers 0] [--epoch-size 60000]

Both sides train the same model (MoPoE over all 31 subsets of 5 PolyMNIST modalities, conv28
encoders/decoders, Laplace likelihood with scale 0.75, beta 2.5, latent 512, Adam 5e-4) with the
same batch size on the same device and thread budget:

  ours      mmvae_cli: uint8 tensors decoded once (our PNG cache), batches are index gathers
            converted to float on the device; all subsets' products of experts in one batched
            computation; one decoder call per modality for the whole batch (stratified chunks).
  baseline  a torchvision-style Dataset that opens and decodes the five PNG files of a tuple on every
            access (PIL + ToTensor) behind a DataLoader (shuffle, --baseline-workers workers), one
            product of experts per subset in a Python loop, and per-subset reconstruction: each
            subset's chunk of the batch is decoded and scored by every decoder separately.

Rounds alternate ours/baseline and the median step time of each is reported (robust to load from
other processes). Prints samples/s, the ratio, and the projected seconds per epoch of
--epoch-size tuples. Never asserts. Data: the official layout DIR/train/m0..m4/*.png
(e.g. <root>/polymnist-mini/MMNIST), else 1,024 random tuples written to a temporary folder.
"""

from __future__ import annotations

import argparse
import itertools
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from mmvae_cli.data import load_dataset
from mmvae_cli.model import ModalitySpec, ModelConfig, MultimodalVAE
from mmvae_cli.nets.conv import Conv28Decoder, Conv28Encoder
from mmvae_cli.train import place_data

M, LATENT, BETA, SCALE, LR = 5, 512, 2.5, 0.75, 5e-4


# --- the baseline: a straightforward implementation ---------------------------------------------------
class PNGTuples(torch.utils.data.Dataset):
    """PolyMNIST tuples read from PNG files on every access (matched by file name, as the release)."""

    def __init__(self, root: Path):
        from torchvision import transforms

        self.dirs = [root / f"m{m}" for m in range(M)]
        self.names = sorted(p.name for p in self.dirs[0].glob("*.png"))
        self.to_tensor = transforms.ToTensor()

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        return [self.to_tensor(Image.open(d / self.names[i]).convert("RGB")) for d in self.dirs]


class BaselineMoPoE(nn.Module):
    def __init__(self, latent: int):
        super().__init__()
        self.enc = nn.ModuleList(Conv28Encoder(3, latent) for _ in range(M))
        self.dec = nn.ModuleList(Conv28Decoder(3, latent) for _ in range(M))
        self.subsets = [list(c) for k in range(1, M + 1) for c in itertools.combinations(range(M), k)]

    def poe(self, mus, logvars):
        """Product of Gaussian experts (with the prior expert N(0, I) added by the caller)."""
        precision = [torch.exp(-lv) for lv in logvars]
        total = sum(precision)
        mu = sum(p * m for p, m in zip(precision, mus)) / total
        return mu, -torch.log(total)

    def loss(self, xs):
        B = xs[0].shape[0]
        heads = [self.enc[m](xs[m]) for m in range(M)]
        rec = xs[0].new_zeros(B)
        kls = []
        for s, subset in enumerate(self.subsets):
            mus = [heads[m][0] for m in subset]
            lvs = [heads[m][1] for m in subset]
            if len(subset) == M:  # the prior expert joins the full set
                mus.append(torch.zeros_like(mus[0]))
                lvs.append(torch.zeros_like(lvs[0]))
            mu, lv = self.poe(mus, lvs)
            kls.append(0.5 * (mu.pow(2) + lv.exp() - 1 - lv).sum(-1))
            lo, hi = math.ceil(s * B / len(self.subsets)), math.ceil((s + 1) * B / len(self.subsets))
            if hi <= lo:
                continue
            z = mu[lo:hi] + torch.randn_like(mu[lo:hi]) * torch.exp(0.5 * lv[lo:hi])
            for m in range(M):
                out = self.dec[m](z)
                lp = -(xs[m][lo:hi] - out).abs() / SCALE - math.log(2 * SCALE)
                rec[lo:hi] = rec[lo:hi] + lp.flatten(1).sum(-1)
        kl = torch.stack(kls).mean(0)
        return -(rec - BETA * kl).mean()


def baseline_steps(root: Path, batch: int, device, workers: int):
    torch.manual_seed(0)
    model = BaselineMoPoE(LATENT).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loader = torch.utils.data.DataLoader(
        PNGTuples(root),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    batches = iter(())

    def step():
        nonlocal batches
        try:
            xs = next(batches)
        except StopIteration:
            batches = iter(loader)
            xs = next(batches)
        xs = [x.to(device) for x in xs]
        loss = model.loss(xs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


# --- ours ---------------------------------------------------------------------------------------------
def our_steps(root: Path, batch: int, device, variant: str):
    data = place_data(load_dataset(str(root.parent), "train"), device)  # on the GPU when it fits
    on = next(iter(data.tensors.values())).device
    torch.manual_seed(0)
    cfg = ModelConfig(
        [ModalitySpec(f"m{i}", [3, 28, 28], "laplace", SCALE) for i in range(M)],
        latent_dim=LATENT,
        fusion="mopoe",
        objective="elbo",
        beta=BETA,
    )
    model = MultimodalVAE(cfg).to(device).train()
    if "channels-last" in variant:
        model.to(memory_format=torch.channels_last)
        model.channels_last = True
    if "bf16" in variant:
        model.amp_dtype = torch.bfloat16
    if "compile" in variant:
        for nets in (model.encoders, model.decoders):
            for net in nets.values():
                net.compile()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    n, state = len(data), {"perm": torch.randperm(len(data)), "pos": 0}

    def step():
        if state["pos"] + batch > n:
            state["perm"], state["pos"] = torch.randperm(n), 0
        idx = state["perm"][state["pos"] : state["pos"] + batch]
        state["pos"] += batch
        loss, _ = model(data.batch(idx.to(on), device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def write_random_pngs(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    for m in range(M):
        (folder / "train" / f"m{m}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(
                folder / "train" / f"m{m}" / f"{i}.{i % 10}.png"
            )
    return folder


def timed(step, steps: int, device) -> float:
    """Seconds per step over `steps` steps."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--png-root", default=None, help="folder with train/m0..m4/*.png (official layout)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both sides")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--variants",
        default="fp32",
        help="ours: comma-separated from fp32, channels-last, bf16, "
        "compile, or combinations joined by '+' (e.g. channels-last+bf16)",
    )
    ap.add_argument("--baseline-workers", type=int, default=0, help="DataLoader workers of the baseline")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--epoch-size", type=int, default=60000, help="tuples per epoch for the projection")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(
        "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device)
    )
    tmp = None
    if a.png_root is None:
        tmp = tempfile.TemporaryDirectory()
        root = write_random_pngs(Path(tmp.name) / "MMNIST", 1024) / "train"
    else:
        root = Path(a.png_root) / "train"
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    )
    print(
        f"device: {device} ({where}); torch {torch.__version__}; batch {a.batch_size}; data {root}; "
        f"{a.rounds} rounds x {a.steps} timed steps; baseline DataLoader workers {a.baseline_workers}"
    )
    sides = {f"ours[{v}]": our_steps(root, a.batch_size, device, v) for v in a.variants.split(",")}
    if not a.no_baseline:
        sides["baseline"] = baseline_steps(root, a.batch_size, device, a.baseline_workers)
    times: dict[str, list[float]] = {k: [] for k in sides}
    for step in sides.values():  # warm-up (first PNG reads, allocator, compilation)
        for _ in range(2):
            step()
    for _ in range(a.rounds):
        for name, step in sides.items():
            times[name].append(timed(step, a.steps, device))
    print(f"{'side':<28} {'samples/s':>10} {'s/epoch':>9} {'vs baseline':>12}")
    base = statistics.median(times["baseline"]) if "baseline" in times else None
    for name, ts in times.items():
        t = statistics.median(ts)
        ratio = f"{base / t:11.2f}x" if base else ""
        print(f"{name:<28} {a.batch_size / t:>10.1f} {t * a.epoch_size / a.batch_size:>9.1f} {ratio:>12}", flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
