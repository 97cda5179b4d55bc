"""How a prior's samples sit among the aggregate posterior's (issue 25): measures that a prior which
emits a few clean modes, or copies the training latents, cannot game.

held-out log-density (normalised priors only: base, gmm, flow):

    L = (1/N) sum_i log p(z_i),   z_i ~ q(z | X_i), one draw per tuple X_i,

on the evaluation (test) split, with its standard error s / sqrt(N) (s the standard deviation of the
log p(z_i)); the same on the training split beside it (a gap: the prior fits the training latents
better than held-out ones). An energy-based prior's normaliser is unknown, so it has none.

memorisation: the Euclidean distance from a latent to its nearest training posterior mean,

    d(z) = min_j || z - mu_j ||_2,   mu_j = E_q[z | X_j] over the training tuples X_j,

for n prior samples z ~ p(z), beside the same for the test tuples' posterior means mu_i (held-out
data: how far a latent that is not a copy lies). Reported: mean (with standard error), quantiles,
ratio = mean d(prior) / mean d(test), and the fraction of prior samples nearer to a training mean than
95% of the test means are (0.05 when the prior's samples are no closer to the training latents than
held-out data). A prior that resamples the training latents has ratio near 0 and that fraction near 1.

Posteriors are the full ones, q(z | X) given every modality (complete tuples).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..data.base import MultimodalData
from ..errors import MMVAEError, NumericalError

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@torch.no_grad()
def encode(model, data: MultimodalData, device, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(draws, means) of the full posteriors of every tuple: z_i ~ q(z | X_i) and E_q[z | X_i], each (N, D)."""
    draws, means = [], []
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        x = data.batch(idx, device)
        q = model.posterior(x)
        draws.append(q.sample())
        means.append(q.component_mean(q.components.mean))
    if not draws:
        raise MMVAEError(f"eval prior: the {data.split} split is empty")
    return torch.cat(draws), torch.cat(means)


def mean_se(values: torch.Tensor) -> dict:
    """{mean, se, n} of a sample: se = s / sqrt(n) with s the sample standard deviation (0 for n = 1)."""
    v = values.double().flatten()
    n = v.numel()
    se = float(v.std() / math.sqrt(n)) if n > 1 else 0.0
    return {"mean": float(v.mean()), "se": se, "n": n}


def log_density(prior, z: torch.Tensor, batch_size: int = 2000) -> dict:
    """{mean, se, n} of log p(z) over the rows of z (prior.log_prob, nats)."""
    lp = torch.cat([prior.log_prob(c).detach().double().cpu() for c in z.split(batch_size)])
    if not torch.isfinite(lp).all():
        raise NumericalError(f"eval prior: the {prior.name()} gives a non-finite log-density")
    return mean_se(lp)


def nearest_distances(queries: torch.Tensor, reference: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """d_i = min_j ||q_i - r_j||_2 for every query row (float64), the reference in chunks of queries."""
    if len(reference) == 0:
        raise MMVAEError("nearest distances: no reference points")
    ref = reference.double()
    out = [torch.cdist(q.double(), ref).min(1).values for q in queries.split(batch_size)]
    return torch.cat(out).cpu()


def distance_summary(d: torch.Tensor) -> dict:
    """{mean, se, n, quantiles: {"0.05": ..., ...}} of nearest-neighbour distances."""
    qs = np.quantile(d.numpy(), QUANTILES)
    return {**mean_se(d), "quantiles": {f"{q:g}": float(v) for q, v in zip(QUANTILES, qs)}}


def memorisation(prior_samples: torch.Tensor, test_means: torch.Tensor, train_means: torch.Tensor) -> dict:
    """Nearest-training-mean distances of prior samples and of test posterior means, side by side."""
    d_prior = nearest_distances(prior_samples, train_means)
    d_test = nearest_distances(test_means, train_means)
    p, t = distance_summary(d_prior), distance_summary(d_test)
    return {
        "prior": p,
        "test": t,
        "ratio": p["mean"] / t["mean"] if t["mean"] > 0 else None,
        "prior_below_test_q05": float((d_prior < t["quantiles"]["0.05"]).double().mean()),
        "n_train": len(train_means),
    }


@torch.no_grad()
def prior_measures(
    model,
    prior: str,
    train: MultimodalData,
    test: MultimodalData,
    device,
    n_samples: int,
    batch_size: int = 500,
    langevin: dict | None = None,
) -> dict:
    """Held-out log-density (None with the reason for an unnormalised prior) and the memorisation check
    of the prior named `prior`, from `n_samples` prior samples drawn in batches of `batch_size`."""
    p = model.latent_prior(prior, "this bundle")
    z_train, mu_train = encode(model, train, device)
    z_test, mu_test = encode(model, test, device)
    samples = torch.cat(
        [
            model.sample_latents(min(batch_size, n_samples - s), prior=prior, **(langevin or {}))
            for s in range(0, n_samples, batch_size)
        ]
    )
    if not torch.isfinite(samples).all():
        raise NumericalError(f"eval prior: the {p.name()} drew non-finite latents")
    out = {"prior": prior, "n_samples": n_samples, "langevin": dict(langevin or {})}
    if p.tractable:
        out["log_density"] = {
            "test": log_density(p, z_test),
            "train": log_density(p, z_train),
            "unit": "nats",
        }
        out["log_density_unavailable"] = None
    else:
        out["log_density"] = None
        out["log_density_unavailable"] = f"the {p.name()}'s density has no known normaliser"
    out["memorisation"] = memorisation(samples.to(mu_train.device), mu_test, mu_train)
    return out
