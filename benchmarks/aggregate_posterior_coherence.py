"""Joint coherence of the aggregate posterior itself: z ~ q(z | X_i) for training tuples X_i (one draw each,
in a random order), decoded and classified as a prior's samples are. What a perfect density estimate of
q(z) would give: the ceiling of every post-hoc prior that does not sharpen q (docs/results/priors.md).
With --split test, the test tuples' posteriors instead (tuples the VAE never saw): what a density that
generalises from the training posteriors to new tuples at best gives, without copying training latents.

python benchmarks/aggregate_posterior_coherence.py RUN CLF [N] [--split test]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mmvae_cli.classifier import load_classifiers
from mmvae_cli.commands.train import run_training_data
from mmvae_cli.data import load_dataset
from mmvae_cli.evaluate.coherence import joint_coherence
from mmvae_cli.model_io import load_model
from mmvae_cli.priors.bank import ExpertBank
from mmvae_cli.recipe import TrainConfig


def main(run: Path, clf_run: Path, n: int = 1000, split: str = "train") -> None:
    model, manifest = load_model(run, "cpu")
    clf, _ = load_classifiers(clf_run, "cpu")
    if split == "train":
        train = TrainConfig.from_dict(manifest.get("settings", {}), str(run)).train
        data = run_training_data(manifest, None, train, run, "its training data changed since it was trained")
    else:
        data = load_dataset(manifest["dataset"]["name_or_path"], split)
    torch.manual_seed(0)
    bank = ExpertBank(model, data, torch.device("cpu"))
    order, at = torch.randperm(bank.n), [0]

    def draw(b: int) -> torch.Tensor:
        idx = order[at[0] : at[0] + b]
        at[0] += b
        return bank.sample(idx)

    r = joint_coherence(draw, model, clf, min(n, bank.n))
    h = r["coherent"]
    print(
        f"aggregate posterior ({split} split, {min(n, bank.n)} draws): joint coherence {r['joint']:.3f} ± {r['joint_se']:.3f}, class entropy {h['entropy']:.3f}"
    )


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a not in ("--split", "test", "train")]
    main(
        Path(args[0]), Path(args[1]), *(int(a) for a in args[2:3]), split="test" if "test" in sys.argv[3:] else "train"
    )
