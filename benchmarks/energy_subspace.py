"""Does the nce energy over a mixture gain when it sees only the aggregate posterior's leading directions?

An energy E(z) = MLP(W (z - mean)) whose input is the top-K principal directions of q(z), whitened
(W = Lambda_K^{-1/2} V_K^T from one draw per training tuple), is fitted by noise-contrastive estimation
against the bundle's gmm for 20 epochs (batch 256, Adam 1e-3, 4 layers of 400 GELU units: fit-ebm's nce
settings) and sampled by importance resampling of 100 gmm draws; K = 0 is the full latent (fit-ebm's
energy). Such an energy cannot see the mixture's covariance-estimation noise in the other directions
(docs/results/priors.md, MoPoE). Prints the classifier's accuracy at the end of the fit and joint
coherence with the coherent samples' class entropy per K; never asserts.

python benchmarks/energy_subspace.py RUN CLF [--dims 8,32,0] [--n-joint 2000]     (RUN has a gmm)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from mmvae_cli.classifier import load_classifiers
from mmvae_cli.commands.train import run_training_data
from mmvae_cli.evaluate.coherence import joint_coherence
from mmvae_cli.model_io import load_model
from mmvae_cli.priors.bank import ExpertBank
from mmvae_cli.priors.ebm import importance_resample
from mmvae_cli.priors.ebm.losses import nce_loss
from mmvae_cli.recipe import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("clf", type=Path)
    ap.add_argument("--dims", default="8,32,0")
    ap.add_argument("--n-joint", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=20)
    a = ap.parse_args()
    model, manifest = load_model(a.run, "cpu")
    clf, _ = load_classifiers(a.clf, "cpu")
    train = TrainConfig.from_dict(manifest.get("settings", {}), str(a.run)).train
    data = run_training_data(manifest, None, train, a.run, "its training data changed since it was trained")
    bank = ExpertBank(model, data, torch.device("cpu"))
    gmm = model.priors["gmm"]
    torch.manual_seed(0)
    z = bank.sample(torch.arange(bank.n))
    mean = z.mean(0)
    lam, vecs = torch.linalg.eigh(torch.cov((z - mean).T))
    lam, vecs = lam.flip(0), vecs.flip(1)
    print(f"q's covariance: top eigenvalues {[round(v, 2) for v in lam[:8].tolist()]}, trace {lam.sum():.1f}")
    for k in (int(d) for d in a.dims.split(",")):
        torch.manual_seed(0)
        w = (vecs[:, :k] / lam[:k].sqrt()).T if k else None
        width = k or z.shape[1]
        layers = [nn.Linear(width, 400), nn.GELU(), nn.Linear(400, 400), nn.GELU(), nn.Linear(400, 400), nn.GELU()]
        net = nn.Sequential(*layers, nn.Linear(400, 1))

        def energy(x, net=net, w=w):
            return net((x - mean) @ w.T if w is not None else x).squeeze(-1)

        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        t0, accs = time.perf_counter(), []
        for _ in range(a.epochs):
            perm = torch.randperm(bank.n)
            for s in range(0, bank.n, 256):
                idx = perm[s : s + 256]
                pos = bank.sample(idx)
                with torch.no_grad():
                    noise = gmm.sample(len(idx))
                with torch.no_grad():  # the classifier's accuracy before the step
                    e_pos, e_noise = energy(pos), energy(noise)
                accs.append(0.5 * ((e_pos < 0).float().mean() + (e_noise > 0).float().mean()).item())
                loss = nce_loss(energy, pos, noise)  # fit-ebm's loss
                opt.zero_grad()
                loss.backward()
                opt.step()
        fit_s = time.perf_counter() - t0
        torch.manual_seed(0)
        with torch.no_grad():
            r = joint_coherence(
                lambda b: importance_resample(lambda m: (gmm.sample(m), None), lambda x, c: -energy(x), b, 100)[0],
                model,
                clf,
                a.n_joint,
            )
        print(
            f"K {k or 'all'}: classifier accuracy {sum(accs[-5:]) / 5:.2f}, fit {fit_s:.0f} s, joint coherence "
            f"{r['joint']:.3f} ± {r['joint_se']:.3f}, class entropy {r['coherent']['entropy']:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
