"""Does the energy that models the aggregate posterior better give the more coherent prior? For each seed of
benchmarks/prior_seeds.sh's OUT, the fitted energy's noise-contrastive loss (losses.nce_loss, one noise
sample per posterior sample)

    L = mean softplus(E(z)) over z ~ q(z | X_i)  +  mean softplus(-E(z')) over z' ~ p_b,

on the training tuples it was fitted to and on the test tuples (never used to fit or choose anything:
a diagnostic of how well E generalises as -log(q / p_b)), beside its joint-coherence gain over its
mixture. A lower test loss is a better estimate of the ratio q / p_b; prints the per-seed rows and the
rank correlation of the test loss with the gain.

python benchmarks/energy_heldout_nce.py OUT [TAG]      # TAG as prior_seeds.sh's (energies ebmTAG-seedS)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from scipy.stats import spearmanr

from mmvae_cli.commands.train import run_training_data
from mmvae_cli.data import load_dataset
from mmvae_cli.evaluate.prior import mean_se
from mmvae_cli.model_io import load_model
from mmvae_cli.priors.bank import ExpertBank
from mmvae_cli.priors.ebm.losses import nce_loss
from mmvae_cli.recipe import TrainConfig

REPEATS = 20  # fresh posterior and base draws per loss


def heldout_loss(prior, bank: ExpertBank) -> dict:
    """The nce loss of prior.energy on every tuple of bank, one posterior draw each, against as many base
    draws: {mean, se, n} over REPEATS draws (evaluate.prior.mean_se)."""
    torch.manual_seed(0)
    with torch.no_grad():
        return mean_se(
            torch.tensor(
                [
                    float(nce_loss(prior.energy, z, prior.start(len(z))))
                    for z in (bank.sample(torch.arange(bank.n)) for _ in range(REPEATS))
                ]
            )
        )


def main(out: Path, tag: str = "") -> None:
    res, rows = out / "results", []
    for e in sorted(out.glob(f"ebm{tag}-seed*"), key=lambda p: int(p.name.split("seed")[1])):
        s = e.name.split("seed")[1]
        model, manifest = load_model(e, "cpu")
        train = TrainConfig.from_dict(manifest.get("settings", {}), str(e)).train
        splits = {
            "train": run_training_data(manifest, None, train, e, "its training data changed since it was trained"),
            "test": load_dataset(manifest["dataset"]["name_or_path"], "test"),
        }
        loss = {
            k: heldout_loss(model.priors["ebm"], ExpertBank(model, d, torch.device("cpu"))) for k, d in splits.items()
        }
        gain = (
            json.loads((res / f"ebm{tag}-seed{s}.json").read_text())["joint"]
            - json.loads((res / f"gmm-seed{s}.json").read_text())["joint"]
        )
        rows.append((s, gain, loss["train"], loss["test"]))
    print("| seed | gain over the mixture | nce loss, training tuples | nce loss, test tuples |")
    print("| --- | --- | --- | --- |")
    for s, gain, tr, te in rows:
        print(f"| {s} | {gain:+.3f} | {tr['mean']:.4f} ± {tr['se']:.4f} | {te['mean']:.4f} ± {te['se']:.4f} |")
    if len(rows) > 2:
        rho = spearmanr([r[3]["mean"] for r in rows], [r[1] for r in rows]).statistic
        print(f"\nSpearman rank correlation of the test loss with the gain: {rho:+.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:3])
