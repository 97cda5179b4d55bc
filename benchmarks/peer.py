"""Seconds per training epoch: ours against the peer library MultiVae (PyPI `multivae`), side by side.

    python benchmarks/peer.py [--quick] [--models mopoe,mmvae,mvae,mmvaeplus,mvtcae,jmvae] [--batch-sizes 32,64,256]
                              [--tuples 4000] [--rounds 2] [--threads N] [--workdir DIR]

One command from a fresh clone. On first use it creates benchmarks/.peer-venv (git-ignored) with
a .pth file that puts *this* interpreter's site-packages on its path (so the peer runs on our torch
build, the same kernels) and installs `multivae==1.0.3` there from the package index; multivae is never
a dependency of ours. The peer side runs in a subprocess in that venv (`--peer-worker`), kept alive
for all rounds of one (model, batch) and driven over stdin/stdout.

Data: the first --tuples training tuples of polymnist-mini (real PolyMNIST images; random uint8
images when it cannot be loaded), written once as MMNIST/train/m{i}.pt (float32 in [0, 1]) + labels.pt,
the layout multivae's MMNISTDataset loads; ours reads the same images as uint8 tensors (our format).

Per (model, batch): rounds alternate peer epoch, ours epoch, floor epoch; the first round is
preceded by a few warm-up steps on each side. The table gives the median over rounds.

  peer   the peer's own epoch loop, BaseTrainer.train_step (DataLoader over the dataset, shuffle,
         model forward, Adam step, loss.item()); the trainer's per-epoch best-model copy, evaluation
         and checkpointing are outside the timing.
  ours   the loop of mmvae_cli.train.fit (epoch permutation, uint8 gather + float conversion,
         model(x), finiteness check, zero_grad, backward, optimizer from train.make_optimizer, stats);
         bundle and checkpoint writing at the end of the epoch are outside the timing.
  floor  the bare forward + backward + Adam step of the same ten nets (our conv28 encoders and
         decoders as ten separate modules) on random data: no fusion, no likelihood, no data path.

Settings (both sides: 5 modalities of 3x28x28, Laplace likelihood scale 0.75, beta 2.5, Adam lr 1e-3
betas (0.9, 0.999), no learning-rate schedule; ours/peer mapping):

  mopoe      ours fusion mopoe, objective elbo, 31 subsets, Gaussian posterior/prior, latent 512
             peer MoPoE(MoPoEConfig(latent_dim=512, beta=2.5)), all 31 subsets by default
  mvae       ours fusion poe, objective mvae (joint ELBO + the 5 unimodal ELBOs, no random subsets)
             peer MVAE(MVAEConfig(latent_dim=512, beta=2.5, use_subsampling=True, k=0, warmup=0))
             (warmup 0: the peer's KL annealing off, as ours)
  mmvae      ours fusion moe, objective iwae, k 1 (stratified IWAE), Gaussian posterior/prior, latent 512
             peer MMVAE(MMVAEConfig(latent_dim=512, K=1, loss="iwae_looser",
             prior_and_posterior_dist="normal", learn_prior=False, beta=2.5))
  mmvaeplus  ours fusion moe, objective dreg, k 1, Laplace posterior/prior, z 32 + w_m 32 (the recipe)
             peer MMVAEPlus(MMVAEPlusConfig(latent_dim=32, modalities_specific_dim=32, K=1,
             loss="dreg_looser", prior_and_posterior_dist="laplace_with_softmax", beta=2.5))
  mvtcae     ours fusion poe, objective mvtcae (alpha 5/6), Gaussian posterior/prior, latent 512
             peer MVTCAE(MVTCAEConfig(latent_dim=512, alpha=5/6, beta=2.5))
  jmvae      ours fusion joint, objective jmvae (alpha 0.1), joint encoder: five conv28 embedding encoders of
             their own and two ReLU layers of 512 units; latent 512; no KL warm-up on either side
             peer JMVAE(JMVAEConfig(latent_dim=512, alpha=0.1, warmup=0, beta=2.5)) with its default joint
             encoder (MultipleHeadJointEncoder over copies of the unimodal encoders, 512 hidden units)

Nets: ours are the PolyMNIST reference conv nets (nets/conv.py: Conv28Encoder/Decoder: 3 stride-2
convs, Linear(2048, 512), Linear heads; mirrored decoder). The peer's are its
EncoderConvMMNIST/DecoderConvMMNIST: the same layers (Linear(2048, latent) hidden, bias-free heads);
for MMVAE+ the peer needs EncoderConvMMNIST_multilatents (two conv bodies, one for z and one for w, conv
heads) and DecoderConvMMNIST over [z, w]; ours has one body with [z, w] heads, so the peer's MMVAE+
encoder does about twice our encoder arithmetic there (noted, not corrected).

Prints a markdown table: model, batch, peer s/epoch, ours s/epoch, peer/ours, floor s/epoch,
ours/floor. `--quick`: 256 tuples, 1 round, batch 64, for checking that it runs. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".peer-venv"
PEER_VERSION = "1.0.3"
M, SCALE, BETA, LR = 5, 0.75, 2.5, 1e-3
MODELS = ("mopoe", "mmvae", "mvae", "mmvaeplus", "mvtcae", "jmvae")
WARMUP_STEPS = 3
# multivae's and pythae's requirements other than torch and torchvision (and torchmetrics' own); not
# `dataclasses`, a backport for Python 3.6 that they still list
PEER_DEPS = (
    "cloudpickle>=2.1.0",
    "pydantic>=2.0",
    "scikit-learn",
    "scipy>=1.7.1",
    "numpy>=1.19",
    "tqdm",
    "typing_extensions",
    "pandas",
    "nltk",
    "matplotlib",
    "imageio",
    "lightning-utilities",
)


# --- the peer's venv -------------------------------------------------------------------------------
def peer_python() -> Path:
    """benchmarks/.peer-venv/bin/python with multivae installed (created on first use)."""
    py = VENV / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import multivae"], capture_output=True).returncode == 0:
        return py
    import sysconfig

    print(f"creating {VENV} and installing multivae=={PEER_VERSION} (first use; a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # our interpreter's packages (torch, torchvision, numpy, ...) after the venv's own: its purelib and
    # every site-packages on its path (a venv made with --system-site-packages has torch in its base's)
    ours = [sysconfig.get_paths()["purelib"]] + [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    Path(site, "_mmvae_ours.pth").write_text("".join(p + "\n" for p in dict.fromkeys(ours)))
    # --no-deps for the packages that require torch: pip would otherwise resolve our torch build's own
    # requirements (its CUDA wheels) and download them; torch and torchvision come through the .pth
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", f"multivae=={PEER_VERSION}", "pythae", "torchmetrics"], check=True)
    subprocess.run([*pip, *PEER_DEPS], check=True)
    return py


# --- the peer worker (runs in the peer's venv; imports only multivae and torch) ----------------------
def peer_worker(cfg: dict) -> None:
    import torch

    torch.set_num_threads(cfg["threads"])
    from multivae.data.datasets import MMNISTDataset
    from multivae.data.utils import set_inputs_to_device
    from multivae.models import (
        JMVAE,
        MMVAE,
        MVAE,
        MVTCAE,
        JMVAEConfig,
        MMVAEConfig,
        MMVAEPlus,
        MMVAEPlusConfig,
        MoPoE,
        MoPoEConfig,
        MVAEConfig,
        MVTCAEConfig,
    )
    from multivae.models.base import BaseAEConfig
    from multivae.models.nn.mmnist import DecoderConvMMNIST, EncoderConvMMNIST, EncoderConvMMNIST_multilatents
    from multivae.trainers import BaseTrainer, BaseTrainerConfig

    torch.manual_seed(0)
    name, mods = cfg["model"], [f"m{i}" for i in range(M)]
    common = dict(
        n_modalities=M,
        input_dims={m: (3, 28, 28) for m in mods},
        decoders_dist={m: "laplace" for m in mods},
        decoder_dist_params={m: {"scale": SCALE} for m in mods},
        beta=BETA,
    )
    if name == "mmvaeplus":
        zc = BaseAEConfig(latent_dim=32, style_dim=32)
        encoders = {m: EncoderConvMMNIST_multilatents(zc) for m in mods}
        decoders = {m: DecoderConvMMNIST(BaseAEConfig(latent_dim=64)) for m in mods}
        model = MMVAEPlus(
            MMVAEPlusConfig(
                latent_dim=32,
                modalities_specific_dim=32,
                K=1,
                loss="dreg_looser",
                prior_and_posterior_dist="laplace_with_softmax",
                **common,
            ),
            encoders,
            decoders,
        )
    else:
        zc = BaseAEConfig(latent_dim=512)
        encoders = {m: EncoderConvMMNIST(zc) for m in mods}
        decoders = {m: DecoderConvMMNIST(zc) for m in mods}
        if name == "mopoe":
            model = MoPoE(MoPoEConfig(latent_dim=512, **common), encoders, decoders)
        elif name == "mvae":
            model = MVAE(MVAEConfig(latent_dim=512, use_subsampling=True, k=0, warmup=0, **common), encoders, decoders)
        elif name == "mmvae":
            conf = MMVAEConfig(
                latent_dim=512, K=1, loss="iwae_looser", prior_and_posterior_dist="normal", learn_prior=False, **common
            )
            model = MMVAE(conf, encoders, decoders)
        elif name == "mvtcae":
            model = MVTCAE(MVTCAEConfig(latent_dim=512, alpha=5 / 6, **common), encoders, decoders)
        elif name == "jmvae":
            model = JMVAE(JMVAEConfig(latent_dim=512, alpha=0.1, warmup=0, **common), encoders, decoders)
        else:
            raise SystemExit(f"unknown model {name}")
    data = MMNISTDataset(cfg["data"], split="train")
    out = tempfile.mkdtemp(prefix="peer-trainer-", dir=cfg["data"])
    tc = BaseTrainerConfig(
        output_dir=out,
        per_device_train_batch_size=cfg["batch"],
        num_epochs=10**6,
        learning_rate=LR,
        optimizer_cls="Adam",
        steps_saving=None,
        no_cuda=True,
        seed=0,
    )
    trainer = BaseTrainer(model, train_dataset=data, training_config=tc)
    epoch = 0

    def warmup():
        model.train()
        for i, inputs in enumerate(trainer.train_loader):
            if i >= WARMUP_STEPS:
                break
            inputs = set_inputs_to_device(inputs, device=trainer.device)
            output = model(inputs, epoch=1, dataset_size=len(data), uses_ddp=False, batch_ratio=0.0)
            trainer._optimizers_step(output)

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "warmup":
            warmup()
            print(json.dumps({"ok": True}), flush=True)
        elif cmd == "epoch":
            epoch += 1
            t0 = time.perf_counter()
            trainer.train_step(epoch)
            print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
        elif cmd == "quit":
            break


class Peer:
    """The peer worker subprocess for one (model, batch)."""

    def __init__(self, py: Path, cfg: dict, log: Path):
        self.log = log
        with open(log, "w") as err:  # the peer's logging and progress bars
            self.proc = subprocess.Popen(
                [str(py), str(Path(__file__).resolve()), "--peer-worker", json.dumps(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={**os.environ, "PYTHONPATH": ""},
            )
        self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                tail = "\n".join(self.log.read_text().splitlines()[-15:])
                raise RuntimeError(f"peer worker exited (rc {self.proc.wait()}); end of {self.log}:\n{tail}")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)


# --- our side -----------------------------------------------------------------------------------------
OUR_MODELS = {
    "mopoe": dict(fusion="mopoe", objective="elbo"),
    "mvae": dict(fusion="poe", objective="mvae"),
    "mmvae": dict(fusion="moe", objective="iwae", k=1),
    "mmvaeplus": dict(
        fusion="moe", objective="dreg", k=1, latent_dim=32, private_dim=32, posterior="laplace", prior="laplace"
    ),
    "mvtcae": dict(fusion="poe", objective="mvtcae", extra={"mvtcae_alpha": 5 / 6}),
    "jmvae": dict(fusion="joint", objective="jmvae", extra={"jmvae_alpha": 0.1, "joint_hidden": 512}),
}


def our_config(name: str):
    from mmvae_cli.model import ModalitySpec, ModelConfig

    kw = {"latent_dim": 512, **OUR_MODELS[name]}
    specs = [ModalitySpec(f"m{i}", [3, 28, 28], "laplace", SCALE, arch="conv28") for i in range(M)]
    return ModelConfig(specs, beta=BETA, **kw)


def our_epoch_fn(name: str, data, batch: int):
    """(warmup(), epoch() -> seconds): the loop of train.fit on `data`."""
    import torch

    from mmvae_cli.config import TrainSettings
    from mmvae_cli.model import MultimodalVAE
    from mmvae_cli.train import epoch_permutation, make_optimizer

    torch.manual_seed(0)
    model = MultimodalVAE(our_config(name)).train()
    opt = make_optimizer(model, TrainSettings(lr=LR, batch_size=batch))
    n = len(data)
    state = {"epoch": 0}

    def steps(limit=None):
        perm = epoch_permutation(n, 0, state["epoch"])
        sums, seen = {}, 0
        for step in range((n + batch - 1) // batch):
            if limit is not None and step >= limit:
                break
            idx = perm[step * batch : (step + 1) * batch]
            x = data.batch(idx, "cpu")
            loss, stats = model(x)
            if not bool(torch.isfinite(loss)):
                raise RuntimeError("ours: non-finite loss")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
            seen += len(idx)

    def epoch():
        t0 = time.perf_counter()
        steps()
        state["epoch"] += 1
        return time.perf_counter() - t0

    return (lambda: steps(WARMUP_STEPS)), epoch


def floor_epoch_fn(name: str, n: int, batch: int):
    """(warmup(), epoch() -> seconds): forward + backward + Adam of the ten nets, random data."""
    import torch

    from mmvae_cli.nets.conv import Conv28Decoder, Conv28Encoder

    torch.manual_seed(0)
    cfg = our_config(name)
    width = cfg.latent_dim + cfg.private_dim
    encs = [Conv28Encoder(3, width) for _ in range(M)]
    decs = [Conv28Decoder(3, width) for _ in range(M)]
    params = [p for net in encs + decs for p in net.parameters()]
    opt = torch.optim.Adam(params, lr=LR)

    def step(b):
        x = [torch.rand(b, 3, 28, 28) for _ in range(M)]
        z = torch.randn(b, width)
        loss = sum(sum(h.pow(2).mean() for h in e(xi)) for e, xi in zip(encs, x))
        loss = loss + sum((d(z) - xi).pow(2).mean() for d, xi in zip(decs, x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def warmup():
        for _ in range(WARMUP_STEPS):
            step(batch)

    def epoch():
        t0 = time.perf_counter()
        for s in range(0, n, batch):
            step(min(batch, n - s))
        return time.perf_counter() - t0

    return warmup, epoch


# --- data ---------------------------------------------------------------------------------------------
def write_data(work: Path, n: int, data_root: str | None):
    """The same n tuples for both sides: MMNIST/train/m{i}.pt (float32) for the peer, uint8 for us."""
    import torch

    from mmvae_cli.data import load_dataset
    from mmvae_cli.data.base import MultimodalData

    try:
        mini = load_dataset("polymnist-mini", "train", data_root)
        tensors = {m: mini.tensors[f"m{m[1:]}"][:n].contiguous() for m in [f"m{i}" for i in range(M)]}
        labels, source = mini.labels[:n].long(), "polymnist-mini"
    except Exception as e:  # no polymnist-mini here: the step's cost does not depend on pixel values
        g = torch.Generator().manual_seed(0)
        tensors = {f"m{i}": torch.randint(0, 256, (n, 3, 28, 28), dtype=torch.uint8, generator=g) for i in range(M)}
        labels, source = torch.randint(0, 10, (n,), generator=g), f"random uint8 ({type(e).__name__})"
    folder = work / "MMNIST" / "train"
    folder.mkdir(parents=True, exist_ok=True)
    for m, t in tensors.items():
        torch.save(t.float().div(255.0), folder / f"{m}.pt")
    torch.save(labels, folder / "labels.pt")
    return MultimodalData("peer-bench", "train", tensors, labels), source


# --- the run ------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="256 tuples, 1 round, batch 64: a check that it runs")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated from {', '.join(MODELS)}")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated (default 32,64,256; --quick: 64)")
    ap.add_argument("--tuples", type=int, default=None, help="training tuples (default 4000; --quick: 256)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 2; --quick: 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: torch's)")
    ap.add_argument("--data-root", default=None, help="where polymnist-mini is (or is built)")
    ap.add_argument("--workdir", default=None, help="folder for the data files (default: a temp folder)")
    ap.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peer_worker is not None:
        return peer_worker(json.loads(a.peer_worker))

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    tuples = a.tuples or (256 if a.quick else 4000)
    rounds = a.rounds or (1 if a.quick else 2)
    batches = [int(b) for b in (a.batch_sizes or ("64" if a.quick else "32,64,256")).split(",")]
    models = a.models.split(",")
    py = peer_python()
    tmp = None if a.workdir else tempfile.TemporaryDirectory()
    work = Path(a.workdir or tmp.name)
    data, source = write_data(work, tuples, a.data_root)
    peer_ver = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m, torch; print(m.version('multivae'), torch.__version__)"],
        capture_output=True,
        text=True,
    ).stdout.split()
    print(
        f"cpu, {threads} torch threads ({os.cpu_count()} cores visible); ours torch {torch.__version__}; "
        f"peer multivae {peer_ver[0] if peer_ver else '?'} on torch {peer_ver[1] if len(peer_ver) > 1 else '?'}; "
        f"{tuples} tuples ({source}); {rounds} round(s)",
        flush=True,
    )
    rows = []
    for name in models:
        for b in batches:
            cfg = {"model": name, "batch": b, "data": str(work), "threads": threads}
            peer = Peer(py, cfg, work / f"peer-{name}-{b}.log")
            ours_warm, ours = our_epoch_fn(name, data, b)
            floor_warm, floor = floor_epoch_fn(name, tuples, b)
            peer.ask("warmup")
            ours_warm()
            floor_warm()
            t = {"peer": [], "ours": [], "floor": []}
            for r in range(rounds):
                t["peer"].append(peer.ask("epoch")["seconds"])
                t["ours"].append(ours())
                t["floor"].append(floor())
                print(
                    f"{name} batch {b} round {r + 1}: peer {t['peer'][-1]:.2f} s, ours {t['ours'][-1]:.2f} s, "
                    f"floor {t['floor'][-1]:.2f} s",
                    flush=True,
                )
            peer.close()
            rows.append((name, b, *(statistics.median(t[k]) for k in ("peer", "ours", "floor"))))
    print()
    print("| model | batch | peer s/epoch | ours s/epoch | peer/ours | floor s/epoch | ours/floor |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, b, p, o, f in rows:
        print(f"| {name} | {b} | {p:.2f} | {o:.2f} | {p / o:.2f}x | {f:.2f} | {o / f:.2f} |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
