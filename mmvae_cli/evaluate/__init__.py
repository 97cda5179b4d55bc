"""Evaluation building blocks: FID, latent probes, coherence, likelihood estimates and prior measures."""

import torch


def spread_indices(total: int, n: int) -> torch.Tensor:
    """min(n, total) indices spread evenly over range(total): floor(i * total / n).

    Used instead of "the first n" because splits may be sorted by class (polymnist-mini's are),
    so a prefix would hold only a few classes.
    """
    n = min(n, total)
    return torch.div(torch.arange(n) * total, n, rounding_mode="floor") if n else torch.zeros(0, dtype=torch.long)
