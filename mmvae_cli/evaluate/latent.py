"""Latent representation quality per subset of inputs (MoPoE paper, table 2 and figure 3, left).

For every non-empty subset A of the modalities, each tuple is represented by the mean of its
posterior q(z | X_A); for a uniform mixture of S components that is (1/S) sum_s mu_s. A logistic
regression (probe.logistic_probe) is fitted on `n_train` encoded training tuples (500 in the paper,
drawn class-balanced with a seed) and scored on the encoded evaluation split.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.base import MultimodalData
from ..errors import MMVAEError
from .likelihood import all_subsets, subset_key
from .probe import logistic_probe, sample_balanced_indices


@torch.no_grad()
def encode_means(
    model, data: MultimodalData, subsets: list[list[str]], device, batch_size: int = 500
) -> dict[str, np.ndarray]:
    """E_q[z | X_A] = mean of the mixture components' means, for every tuple and subset: key -> (N, D)."""
    out: dict[str, list[np.ndarray]] = {subset_key(s): [] for s in subsets}
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        x = data.batch(idx, device)
        for s in subsets:
            q = model.posterior({m: x[m] for m in s})
            out[subset_key(s)].append(q.components.mean.mean(0).cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def latent_probe(
    model,
    train: MultimodalData,
    test: MultimodalData,
    device,
    n_train: int,
    seed: int = 0,
    subsets: list[list[str]] | None = None,
) -> dict:
    """Probe accuracy on `test` per subset (per_subset), averaged by number of inputs (by_inputs)."""
    if train.labels is None or test.labels is None:
        raise MMVAEError(f"latent probe: {train.name} has no labels")
    n_train = min(n_train, len(train))
    subsets = subsets or all_subsets(list(model.names))
    idx = torch.from_numpy(sample_balanced_indices(train.labels, n_train, seed))
    tr = train.subset(idx)
    z_tr = encode_means(model, tr, subsets, device)
    z_te = encode_means(model, test, subsets, device)
    per_subset = {k: logistic_probe(z_tr[k], tr.labels, z_te[k], test.labels, seed=seed) for k in z_tr}
    by_size: dict[int, list[float]] = {}
    for k, v in per_subset.items():
        by_size.setdefault(len(k.split(",")), []).append(v)
    return {
        "by_inputs": {str(s): sum(v) / len(v) for s, v in sorted(by_size.items())},
        "per_subset": per_subset,
        "n_train": n_train,
        "n_test": len(test),
    }
