"""Fusion: how unimodal experts q(z | x_m) combine into q(z | X_A) for a set A of inputs.

Every fusion returns a uniform mixture whose components are products of experts
over subsets of A (a single component for PoE, singletons for MoE, all subsets
for MoPoE), so one vectorised code path serves all of them:

    q(z | X_A) = 1/S sum_s  PoE({q(z | x_m) : m in subset_s} [+ prior expert])

- poe   (MVAE, Wu & Goodman 2018): one component, the product of A's experts and the prior expert.
- moe   (MMVAE, Shi et al. 2019): one component per input, q_m itself.
- mopoe (MoPoE, Sutter et al. 2021): one component per non-empty subset of the inputs; as in
  the reference implementation the prior expert joins only the subset of all M modalities.
  The posterior given a strict subset A of the modalities (conditional generation) is that
  subset's own PoE, as the reference's evaluation uses.
- none  (EB-MVAE, the unimodal VAEs of an energy-based multimodal VAE): no shared latent; z is the
  concatenation (z_1, ..., z_M) of M unimodal latents and q(z | X_A) = prod_{m in A} q(z_m | x_m)
  prod_{m not in A} p(z_m): one component whose unobserved blocks are the prior's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import distributions as td

from .distributions import product_of_gaussians
from .errors import MMVAEError

FUSIONS = ("poe", "moe", "mopoe", "none")


def enumerate_subsets(n: int) -> torch.Tensor:
    """All 2^n - 1 non-empty subsets of n modalities as a bool mask (S, n), by size then lexicographic."""
    rows = [c for k in range(1, n + 1) for c in itertools.combinations(range(n), k)]
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, c in enumerate(rows):
        mask[i, list(c)] = True
    return mask


def parse_subsets(spec: str | None, modalities: list[str]) -> torch.Tensor:
    """Subsets for MoPoE's mixture: "all" (default), "unimodal+full", or explicit groups
    like "m0,m1;m2;m0,m1,m2,m3,m4". Returns a bool mask (S, M)."""
    M = len(modalities)
    if spec in (None, "", "all"):
        return enumerate_subsets(M)
    if spec in ("unimodal+full", "unimodal,full"):
        return torch.cat([torch.eye(M, dtype=torch.bool), torch.ones(1, M, dtype=torch.bool)])
    rows = []
    for group in spec.split(";"):
        names = [n.strip() for n in group.split(",") if n.strip()]
        unknown = [n for n in names if n not in modalities]
        if unknown or not names:
            raise MMVAEError(
                f"--subsets: unknown modality {unknown[0] if unknown else '(empty group)'!r}; "
                f"modalities are {', '.join(modalities)}"
            )
        rows.append([m in names for m in modalities])
    return torch.tensor(rows, dtype=torch.bool).unique(dim=0)


@dataclass
class Mixture:
    """A uniform mixture of S components with batch shape (S, B, D)."""

    components: td.Distribution  # Normal or Laplace, batch shape (S, B, D)
    mask: torch.Tensor  # (S, M): which experts each component multiplies

    @property
    def n_components(self) -> int:
        return int(self.mask.shape[0])

    def rsample_each(self, k: int = 1) -> torch.Tensor:
        """K reparameterised samples from every component: (S, K, B, D) (stratified sampling)."""
        z = self.components.rsample((k,))  # (K, S, B, D)
        return z.transpose(0, 1)

    def rsample_chunked(self) -> torch.Tensor:
        """One sample per batch item; the batch is split into S contiguous chunks and chunk s
        draws from component s (the MoPoE reference's stratified mixture sampling). (B, D)"""
        S, B = self.n_components, self.components.batch_shape[1]
        which = torch.div(torch.arange(B, device=self.mask.device) * S, B, rounding_mode="floor")
        c = self.components
        if type(c) is td.Normal:
            # the same noise draws (all S x B, as c.rsample()) and bit-identical values, without the
            # arithmetic of the S - 1 samples per item that are not picked (and their backward)
            eps = torch.empty(c.batch_shape, dtype=c.loc.dtype, device=c.loc.device).normal_()
            rows = torch.arange(B, device=c.loc.device)
            loc, scale = torch.broadcast_tensors(c.loc, c.scale)
            return loc[which, rows] + eps[which, rows] * scale[which, rows]
        z = c.rsample()  # (S, B, D)
        return z[which, torch.arange(B, device=z.device)]

    def sample(self) -> torch.Tensor:
        """One sample per batch item from a uniformly chosen component. (B, D)"""
        S, B = self.n_components, self.components.batch_shape[1]
        which = torch.randint(S, (B,), device=self.mask.device)
        z = self.components.rsample()
        return z[which, torch.arange(B, device=z.device)]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) = log (1/S) sum_s q_s(z). z: (..., B, D) -> (..., B)."""
        lp = self.components.log_prob(z.unsqueeze(-3)).sum(-1)  # (..., S, B)
        return torch.logsumexp(lp, dim=-2) - torch.log(torch.tensor(float(self.n_components)))

    def detached(self) -> Mixture:
        """Same mixture with parameters cut from the graph (for DReG's stop-gradients)."""
        c = self.components
        params = {k: getattr(c, k).detach() for k in ("loc", "scale")}
        return Mixture(type(c)(**params, validate_args=False), self.mask)


class Fusion:
    """Which products of experts form q(z | X_A). Subclasses set `name` and `components`."""

    name = ""

    def __init__(self, n_modalities: int, subsets: torch.Tensor | None = None):
        self.M = n_modalities
        self.subsets = subsets if subsets is not None else enumerate_subsets(n_modalities)

    def components(self, given: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For inputs `given` (bool (M,)), the component masks (S, M) and prior-expert flags (S,)."""
        raise NotImplementedError

    def combine(self, experts: td.Distribution, given: torch.Tensor, prior: td.Distribution) -> Mixture:
        """q(z | X_given) from unimodal experts with batch shape (M, B, D) (absent rows are ignored)."""
        mask, with_prior = self.components(given)
        mask = mask.to(experts.loc.device)
        if isinstance(experts, td.Normal):
            if not with_prior.any() and bool((mask.sum(1) == 1).all()):
                idx = mask.float().argmax(1)
                return Mixture(td.Normal(experts.loc[idx], experts.scale[idx], validate_args=False), mask)
            if not isinstance(prior, td.Normal):
                raise MMVAEError(f"fusion {self.name} multiplies the prior expert: it needs a Gaussian prior")
            comp = product_of_gaussians(
                experts.loc, experts.scale, mask, prior.loc, prior.scale, with_prior.to(experts.loc.device)
            )
            return Mixture(comp, mask)
        # Laplace (or any non-Gaussian) experts: only mixtures of single experts are closed form.
        if with_prior.any() or bool((mask.sum(1) != 1).any()):
            raise MMVAEError(
                f"fusion {self.name} needs Gaussian posteriors (a product of Laplace experts "
                "has no closed form); use --posterior gaussian or --fusion moe"
            )
        idx = mask.float().argmax(1)
        return Mixture(type(experts)(experts.loc[idx], experts.scale[idx], validate_args=False), mask)


class PoE(Fusion):
    """MVAE: q(z | X_A) ∝ p(z) prod_{m in A} q(z | x_m)."""

    name = "poe"

    def components(self, given):
        return given[None, :].clone(), torch.ones(1, dtype=torch.bool)


class MoE(Fusion):
    """MMVAE: q(z | X_A) = 1/|A| sum_{m in A} q(z | x_m)."""

    name = "moe"

    def components(self, given):
        idx = given.nonzero().flatten()
        mask = torch.zeros(len(idx), self.M, dtype=torch.bool)
        mask[torch.arange(len(idx)), idx] = True
        return mask, torch.zeros(len(idx), dtype=torch.bool)


class MoPoE(Fusion):
    """MoPoE: q(z | X) = 1/|S| sum_{s in S} PoE(X_s); given a strict subset A, PoE(X_A)."""

    name = "mopoe"

    def components(self, given):
        if bool(given.all()):
            mask = self.subsets
        else:
            mask = given[None, :].clone()
        with_prior = mask.all(dim=1)
        return mask, with_prior


class Independent(Fusion):
    """EB-MVAE's independent unimodal VAEs (Energy-Based Multimodal VAEs, sec. 2): z = (z_1, ..., z_M),

        q(z | X_A) = prod_{m in A} q(z_m | x_m) * prod_{m not in A} p(z_m),

    a single component with batch shape (1, B, M * d) built from experts of shape (M, B, d). With all
    modalities given, KL(q || p) is the sum of the M unimodal KLs, so the ELBO is the sum of M
    unimodal ELBOs (each decoder reads only its own block, see MultimodalVAE.decode)."""

    name = "none"

    def components(self, given):
        return given[None, :].clone(), torch.zeros(1, dtype=torch.bool)

    def combine(self, experts, given, prior):
        M, B, d = experts.loc.shape
        if type(prior) is not type(experts):
            raise MMVAEError(
                "fusion none needs the same family for posterior and prior "
                "(--posterior and --prior both gaussian or both laplace)"
            )
        g = given.to(experts.loc.device)[:, None, None]  # (M, 1, 1)
        loc = torch.where(g, experts.loc, prior.loc.reshape(M, 1, d))
        scale = torch.where(g, experts.scale, prior.scale.reshape(M, 1, d))
        cat = lambda t: t.permute(1, 0, 2).reshape(1, B, M * d)  # noqa: E731
        return Mixture(type(experts)(cat(loc), cat(scale)), given[None, :].clone())


def make_fusion(name: str, n_modalities: int, subsets: torch.Tensor | None = None) -> Fusion:
    classes = {"poe": PoE, "moe": MoE, "mopoe": MoPoE, "none": Independent}
    if name not in classes:
        raise MMVAEError(f"unknown fusion {name!r}; choose one of {', '.join(FUSIONS)}")
    return classes[name](n_modalities, subsets)
