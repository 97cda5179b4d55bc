"""Experts, priors and likelihoods: Gaussian and Laplace densities, products of experts, KL, p(x | z).

Conventions: latent tensors are (..., B, D); `log_prob` results are summed over the
last (latent) dimension; image log-likelihoods are summed over (C, H, W).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import distributions as td

LOGVAR_BOUND = 30.0


def expert(kind: str, loc: torch.Tensor, raw: torch.Tensor) -> td.Distribution:
    """A unimodal posterior q(z | x_m) from an encoder's two heads.

    gaussian: N(loc, exp(r)), r = raw - softplus(raw - 30) + softplus(-raw - 30), the log-variance
              softly bounded to (-30, 30) (equal to raw within 1e-13 at |raw| <= 0, 1e-4 at 20): under
              a PoE with the prior expert an expert can opt out at no cost, and Adam then drives its
              log-variance up without bound until exp overflows (MVAE on PolyMNIST did within 100
              steps). The soft bound keeps a gradient, so such an expert can come back.
    laplace:  Laplace(loc, softmax(raw) * D + 1e-6), the MMVAE/MMVAE+ scale parameterisation
              (the scales average to 1 over the D latent dimensions).
    """
    if kind == "gaussian":
        r = raw - F.softplus(raw - LOGVAR_BOUND) + F.softplus(-raw - LOGVAR_BOUND)
        return td.Normal(loc, torch.exp(0.5 * r), validate_args=False)
    if kind == "laplace":
        return td.Laplace(loc, F.softmax(raw, dim=-1) * raw.shape[-1] + 1e-6, validate_args=False)
    raise ValueError(f"unknown posterior {kind!r}")


def product_of_gaussians(
    loc: torch.Tensor,
    scale: torch.Tensor,
    mask: torch.Tensor,
    prior_loc: torch.Tensor | None = None,
    prior_scale: torch.Tensor | None = None,
    with_prior: torch.Tensor | None = None,
) -> td.Normal:
    """Products of Gaussian experts for S subsets at once.

    For subset s with experts {m : mask[s, m]} (and the prior expert where with_prior[s]):
        T_m = 1 / (sigma_m^2 + eps),   sigma_s^2 = 1 / sum_m T_m,   mu_s = sigma_s^2 * sum_m T_m mu_m,
    eps = 1e-8 (as MVAE's reference) so that a collapsing expert cannot overflow T_m to inf.
    loc, scale: (M, B, D); mask: (S, M) bool, or (S, M, B) per tuple (partially observed tuples: an
    absent expert has weight 0, i.e. precision 0); with_prior: (S,) or (S, B) bool; prior_*:
    broadcastable to (B, D). Returns Normal with batch shape (S, B, D).
    """
    w = mask.to(loc.dtype)  # (S, M) or (S, M, B)
    precision = 1.0 / (scale.pow(2) + 1e-8)  # (M, B, D)
    eq = "sm,mbd->sbd" if w.dim() == 2 else "smb,mbd->sbd"
    total = torch.einsum(eq, w, precision)
    weighted = torch.einsum(eq, w, precision * loc)
    if with_prior is not None:
        p = with_prior.to(loc.dtype)
        p = p[:, None, None] if p.dim() == 1 else p[:, :, None]  # (S, 1, 1) or (S, B, 1)
        prior_precision = prior_scale.pow(-2).expand_as(loc[0])
        total = total + p * prior_precision
        weighted = weighted + p * prior_precision * prior_loc.expand_as(loc[0])
    var = 1.0 / total
    return td.Normal(weighted * var, var.sqrt(), validate_args=False)


def kl(q: td.Distribution, p: td.Distribution) -> torch.Tensor:
    """KL(q || p) summed over the latent dimension; closed form for Normal/Normal and Laplace/Laplace."""
    return td.kl_divergence(q, p).sum(-1)


def log_mean_exp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log (1/K) sum_k exp(x_k), stably."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


class Likelihood:
    """p(x | z) from a decoder output `out` (x's shape, with leading sample dimensions): `log_prob` per
    element, `mean` for people and classifiers. A modality kind names the likelihoods it accepts
    (modalities/, `ModalityKind.likelihoods`); a new one is a subclass there."""

    name = ""

    def log_prob(self, out: torch.Tensor, x: torch.Tensor, scale: float) -> torch.Tensor:
        """log p(x | out) per element, (..., B, *shape)."""
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[x | out]."""
        return out

    def log_likelihood(self, out: torch.Tensor, x: torch.Tensor, scale: float) -> torch.Tensor:
        """log p(x | z) summed over each sample's dimensions. out: (..., B, *shape), x: (B, *shape) -> (..., B)."""
        lp = self.log_prob(out, x, scale)
        return lp.flatten(start_dim=lp.dim() - x.dim() + 1).sum(-1)


class Laplace(Likelihood):
    """Laplace(out, scale): -|x - out| / scale - log(2 scale) (PolyMNIST reference: scale 0.75, no sigmoid)."""

    name = "laplace"

    def log_prob(self, out, x, scale):
        return (x - out).abs().mul_(-1.0 / scale).sub_(math.log(2.0 * scale))


class Gaussian(Likelihood):
    """Normal(out, scale): -(x - out)^2 / (2 scale^2) - log(scale) - log(2 pi) / 2."""

    name = "gaussian"

    def log_prob(self, out, x, scale):
        return (x - out).pow(2) * (-0.5 / scale**2) - (math.log(scale) + 0.5 * math.log(2 * math.pi))


class Bernoulli(Likelihood):
    """Bernoulli(logits=out): x log sigmoid(out) + (1 - x) log sigmoid(-out); mean sigmoid(out)."""

    name = "bernoulli"

    def log_prob(self, out, x, scale):
        return td.Bernoulli(logits=out).log_prob(x.expand_as(out))

    def mean(self, out):
        return torch.sigmoid(out)


class Categorical(Likelihood):
    """Categorical(logits=out) over the last axis; x one-hot (or class probabilities): sum_c x_c log softmax(out)_c."""

    name = "categorical"

    def log_prob(self, out, x, scale):
        return x * F.log_softmax(out, dim=-1)

    def mean(self, out):
        return F.softmax(out, dim=-1)


LIKELIHOODS: dict[str, Likelihood] = {lik.name: lik for lik in (Laplace(), Gaussian(), Bernoulli(), Categorical())}


def log_likelihood(name: str, out: torch.Tensor, x: torch.Tensor, scale: float) -> torch.Tensor:
    """`Likelihood.log_likelihood` of the likelihood named `name` (one of LIKELIHOODS)."""
    return LIKELIHOODS[name].log_likelihood(out, x, scale)
