"""The tilt inside joint training (issue 25): does the VAE gain when its own prior term is the energy's
tilt of a fitted mixture, trained with it?

From a trained bundle RUN holding a gmm (`mmvae fit-prior RUN --kind gmm ...`), OUT gets RUN's VAE
fine-tuned for --epochs more passes with the prior

    p(z) = exp(-E(z)) p_gmm(z),    KL(q || p) = KL(q || p0) + E_q[E(z) + log p0(z) - log p_gmm(z)] + log Z,

weighted by --feedback f in the VAE's loss (f = 1: exactly this prior; f = 0: the VAE keeps p0, the
control with the same extra epochs), while E learns by noise-contrastive estimation against the mixture's
samples on each batch's posterior samples (fit-ebm's nce loss, whose optimum E = -log(q / p_gmm) + c has
log Z = 0: the tilt is self-normalised, so the VAE's KL above needs no log Z). E starts from a post-hoc
nce fit on RUN's frozen VAE (--warm-epochs, fit-ebm's 20 by default), so the VAE never trains against a
random energy. The mixture stays as fitted to RUN's aggregate posterior.

OUT is a bundle like any other: its energy (training "joint", base gmm, sampled by importance
resampling of 100 mixture draws as fit-ebm's) is `--prior ebm`; `mmvae eval coherence OUT --prior ebm`,
`eval fid`, `eval prior` measure it. Prints one JSON line per epoch on stderr and a summary on stdout;
never asserts.

    mmvae fit-prior runs/mopoe-g50 --kind gmm --components 50 --covariance diag
    python benchmarks/joint_tilt.py runs/mopoe-g50 runs/tilt-f1 --epochs 20 --feedback 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from mmvae_cli.commands.train import run_training_data
from mmvae_cli.config import NCE_SAMPLER, JointEnergySettings
from mmvae_cli.model_io import load_model, save_bundle
from mmvae_cli.priors.bank import ExpertBank
from mmvae_cli.priors.ebm import EnergyPrior
from mmvae_cli.priors.ebm.losses import nce_loss
from mmvae_cli.priors.ebm.net import EnergyConfig
from mmvae_cli.recipe import TrainConfig
from mmvae_cli.train import make_optimizer


class TiltedGmmPrior(EnergyPrior):
    """The energy over the bundle's gmm as the VAE's training prior: its term for the VAE is
    E(z) + log p0(z) - log p_gmm(z) (the objectives add f times it to KL(q || p0)); it learns by nce."""

    def energy_term(self, z: torch.Tensor) -> torch.Tensor:
        return super().energy_term(z) + self.model.base_log_prob(z) - self.base_prior().log_prob(z).to(z.dtype)

    def learn(self, model, z_pos, loss, stats, prior_terms: float = 1.0):
        z_pos = z_pos.detach().reshape(-1, z_pos.shape[-1])
        with torch.no_grad():
            noise = self.base_prior().sample(z_pos.shape[0]).to(z_pos)
        nce = nce_loss(self.energy, z_pos, noise)
        self.joint_step += 1
        return loss + nce, {**stats, "nce": nce.item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--feedback", type=float, default=1.0)
    ap.add_argument("--warm-epochs", type=int, default=20)
    ap.add_argument("--ebm-lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.out.exists():
        sys.exit(f"error: {a.out} exists")
    tmp = a.out.with_name(a.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(a.run, tmp)
    model, manifest = load_model(tmp, "cpu")
    if "gmm" not in model.priors:
        shutil.rmtree(tmp)
        sys.exit(f"error: {a.run} has no gmm; fit one with `mmvae fit-prior {a.run} --kind gmm`")
    gmm = model.priors["gmm"]
    model.detach_prior("ebm")
    train = TrainConfig.from_dict(manifest.get("settings", {}), str(a.run)).train
    data = run_training_data(manifest, None, train, a.run, "its training data changed since it was trained")
    torch.manual_seed(a.seed)
    js = JointEnergySettings(feedback=a.feedback, ebm_lr=a.ebm_lr, ebm_betas=(0.9, 0.999))
    net = EnergyConfig(dim=model.z_dim, hidden=400, layers=4, activation="gelu")
    prior = TiltedGmmPrior(
        net,
        "tilted",
        joint=True,
        joint_settings=js,
        langevin=dict(NCE_SAMPLER),
        base="gmm",
        base_sha256=gmm.fingerprint(),
    )
    model.attach_prior(prior)
    # warm start: the post-hoc nce fit on the frozen VAE (fit-ebm's loss, batch 256, Adam 1e-3)
    t0 = time.perf_counter()
    model.eval()
    bank = ExpertBank(model, data, torch.device("cpu"))
    opt_e = torch.optim.Adam(prior.energy.parameters(), lr=1e-3)
    for _ in range(a.warm_epochs):
        perm = torch.randperm(bank.n)
        for s in range(0, bank.n, 256):
            idx = perm[s : s + 256]
            with torch.no_grad():
                noise = gmm.sample(len(idx))
            loss = nce_loss(prior.energy, bank.sample(idx), noise)
            opt_e.zero_grad()
            loss.backward()
            opt_e.step()
    warm_s = time.perf_counter() - t0
    print(json.dumps({"warm_epochs": a.warm_epochs, "seconds": round(warm_s, 1), "nce": loss.item()}), file=sys.stderr)
    # joint: the VAE with f x the tilt in its prior term, E by nce on each batch's posterior samples
    opt = make_optimizer(model, train, js)
    model.train()
    n, bs = len(data), train.batch_size
    for epoch in range(1, a.epochs + 1):
        t0, sums, steps = time.perf_counter(), {}, 0
        g = torch.Generator().manual_seed(a.seed * 1000 + epoch)
        for idx in torch.randperm(n, generator=g).split(bs):
            loss, stats = model(data.batch(idx, "cpu"))
            opt.zero_grad()
            loss.backward()
            opt.step()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
        row = {"epoch": epoch, **{k: round(v / steps, 4) for k, v in sums.items()}}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), file=sys.stderr, flush=True)
    model.eval()
    save_bundle(tmp, model, manifest)
    tmp.rename(a.out)
    print(json.dumps({"out": str(a.out), "epochs": a.epochs, "feedback": a.feedback, "last": row}))


if __name__ == "__main__":
    main()
