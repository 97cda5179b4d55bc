"""Importance-sampled test log-likelihoods (MoPoE paper, table 4 and figure 3, right).

For a test tuple X = (x_1..x_M) and a subset X_k of its modalities, with z_1..z_K drawn from the
subset's posterior q(z | X_k) (a uniform mixture: each z_k from a uniformly chosen component),

    log p^(X ; X_k) = log (1/K) sum_k  p(z_k) prod_{m=1..M} p(x_m | z_k) / q(z_k | X_k),

in nats, with the unweighted likelihoods p(x_m | z) of *all* M modalities (the training-time
rescale weights are not used) and q(z | X_k) the whole mixture density (`Mixture.log_prob`).
This is the paper's "log-likelihood of the joint generative model conditioned on the variational
posterior of subset X_k": an estimate of log p(X) whose proposal only sees X_k. X_k = X gives the
joint log-likelihood. p(z) is the density of the prior named by `prior`: the model's base prior
p0 by default, or a fitted prior with a tractable density (priors/: gmm, flow); an energy-based
prior's normaliser is unknown, so its tilted density is refused here. The result names its prior. Each estimate is a stochastic lower bound on log p(X) in expectation
(Jensen) and converges to it as K grows. Reported numbers are means over the test tuples.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import distributions as td

from ..data.base import MultimodalData
from ..errors import MMVAEError
from ..fusion import Mixture


def subset_key(names) -> str:
    return ",".join(names)


def all_subsets(names: list[str]) -> list[list[str]]:
    """Every non-empty subset of `names`, by size then in order."""
    return [list(c) for k in range(1, len(names) + 1) for c in itertools.combinations(names, k)]


def sample_mixture(q: Mixture, k: int) -> torch.Tensor:
    """K independent samples per batch item from a uniform mixture: (K, B, D)."""
    comps = q.components
    S, B = q.n_components, comps.batch_shape[-2]
    z = comps.sample((k,))  # (K, S, B, D)
    if S == 1:
        return z[:, 0]
    which = torch.randint(S, (k, B), device=z.device)  # component per (k, b)
    return z.gather(1, which[:, None, :, None].expand(k, 1, B, z.shape[-1])).squeeze(1)


def importance_log_likelihood(
    q: Mixture,
    log_px_given_z: Callable[[torch.Tensor], torch.Tensor],
    prior: td.Distribution | Callable[[torch.Tensor], torch.Tensor],
    k: int,
) -> torch.Tensor:
    """log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k), z_k ~ q, per batch item: (B,).

    `log_px_given_z` maps latents (K, B, D) to log p(x | z) of shape (K, B); `prior` is a distribution
    over each coordinate (summed over the last axis) or a callable z (K, B, D) -> log p(z) (K, B).
    """
    if k < 1:
        raise MMVAEError(f"the number of importance samples must be >= 1, got {k}")
    z = sample_mixture(q, k)
    log_pz = prior.log_prob(z).sum(-1) if isinstance(prior, td.Distribution) else prior(z)
    log_w = log_px_given_z(z) + log_pz - q.log_prob(z)  # (K, B)
    return torch.logsumexp(log_w, dim=0) - math.log(k)


def model_log_px_given_z(model, x: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """z (K, B, D) -> sum_m log p(x_m | z) over every modality of `x`, unweighted (no rescale)."""

    def f(z: torch.Tensor) -> torch.Tensor:
        outs = model.decode(z, list(x))
        return sum(model.modalities[m].log_likelihood(outs[m], x[m]) for m in x)

    return f


@torch.no_grad()
def subset_log_likelihoods(
    model,
    data: MultimodalData,
    device,
    k: int,
    batch_size: int = 100,
    subsets: list[list[str]] | None = None,
    prior: str = "base",
) -> dict:
    """Mean over `data` of log p^(X ; X_k) for every subset X_k (default: all 2^M - 1), in nats.

    Streams the split in chunks of `batch_size` tuples (K * batch_size latents decoded at once).
    Returns per_subset (key "m0,m2"), by_inputs (mean over subsets of equal size, keys "1".."M"),
    joint (the full set), k, n_test and prior (the name of p(z)).
    """
    names = list(model.names)
    subsets = subsets or all_subsets(names)
    p = model.latent_prior(prior, "this bundle")
    if not p.tractable:
        raise MMVAEError(f"likelihood: the {prior} prior's density has no known normaliser")
    prior_name, prior = prior, p.log_prob
    sums = {subset_key(s): 0.0 for s in subsets}
    n = len(data)
    if n == 0:
        raise MMVAEError("likelihood: the evaluation split is empty")
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        x = data.batch(idx, device)
        log_px = model_log_px_given_z(model, x)
        for s in subsets:
            q = model.posterior({m: x[m] for m in s})
            ll = importance_log_likelihood(q, log_px, prior, k)
            if not torch.isfinite(ll).all():
                from ..errors import NumericalError

                raise NumericalError(f"likelihood: non-finite estimate for subset {subset_key(s)}")
            sums[subset_key(s)] += float(ll.double().sum())
    per_subset = {key: v / n for key, v in sums.items()}
    by_size: dict[int, list[float]] = {}
    for key, v in per_subset.items():
        by_size.setdefault(len(key.split(",")), []).append(v)
    return {
        "joint": per_subset.get(subset_key(names)),
        "by_inputs": {str(s): sum(v) / len(v) for s, v in sorted(by_size.items())},
        "per_subset": per_subset,
        "k": k,
        "n_test": n,
        "unit": "nats",
        "prior": prior_name,
    }
