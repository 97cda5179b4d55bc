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
- joint (JMVAE, Suzuki et al. 2016): all M modalities: the joint encoder's q(z | X); a strict subset:
  the product of its unimodal experts without the prior expert (`Joint`). Complete tuples only.

Partially observed tuples (`present`, bool (B, M): which modalities each tuple has) stay in the same
vectorised computation: with O_b the modalities tuple b observes (and that are given),

- poe:   one component per tuple, the product over O_b and the prior expert (absent experts get precision 0);
- moe:   component m is valid for tuple b iff m in O_b;
- mopoe: component s is valid iff subset_s is within O_b (the mixture over the subsets of O_b), and the prior
  expert joins the subset equal to O_b (for complete tuples: the subset of all modalities, as above);
- none:  the blocks of absent modalities are the prior's.

The mixture then carries `valid` (S, B), and every average over components is over the valid ones.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import distributions as td

from . import registry
from .distributions import product_of_gaussians
from .errors import MMVAEError


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
    """A uniform mixture of S components with batch shape (S, B, D); with `valid` (S, B), item b's
    mixture runs over its valid components only: q_b(z) = 1/|V_b| sum_{s in V_b} q_s(z)."""

    components: td.Distribution  # Normal or Laplace, batch shape (S, B, D)
    mask: torch.Tensor  # (S, M): which experts each component multiplies
    valid: torch.Tensor | None = None  # (S, B) bool; None = every component of every item

    @property
    def n_components(self) -> int:
        return int(self.mask.shape[0])

    def component_mean(self, t: torch.Tensor) -> torch.Tensor:
        """1/|V_b| sum_{s in V_b} t_s: (S, ..., B) -> (..., B), invalid entries never read (where, not * 0)."""
        if self.valid is None:
            return t.mean(0)
        v = self.valid.reshape(self.valid.shape[:1] + (1,) * (t.dim() - 2) + self.valid.shape[1:])
        return torch.where(v, t, torch.zeros((), dtype=t.dtype, device=t.device)).sum(0) / v.sum(0)

    def valid_samples(self, z: torch.Tensor) -> torch.Tensor:
        """The samples of valid components as rows (n, D), from z of shape (S, K, B, D) or (B, D)."""
        if self.valid is None or z.dim() == 2:
            return z.reshape(-1, z.shape[-1])
        return z[self.valid[:, None, :].expand(z.shape[:-1])]

    def _pick(self, which: torch.Tensor) -> torch.Tensor:
        """For item b, the which[b]-th of its valid components (which < |V_b|): component indices (B,)."""
        rank = self.valid.long().cumsum(0) - 1  # (S, B): rank of each valid component
        return ((rank == which[None]) & self.valid).float().argmax(0)

    def rsample_each(self, k: int = 1) -> torch.Tensor:
        """K reparameterised samples from every component: (S, K, B, D) (stratified sampling)."""
        z = self.components.rsample((k,))  # (K, S, B, D)
        return z.transpose(0, 1)

    def rsample_chunked(self) -> torch.Tensor:
        """One sample per batch item; the batch is split into S contiguous chunks and chunk s
        draws from component s (the MoPoE reference's stratified mixture sampling). (B, D)"""
        S, B = self.n_components, self.components.batch_shape[1]
        if self.valid is None:
            which = torch.div(torch.arange(B, device=self.mask.device) * S, B, rounding_mode="floor")
        else:  # item b in chunk j of its own |V_b| chunks draws from its j-th valid component
            n = self.valid.sum(0)
            which = self._pick(torch.div(torch.arange(B, device=n.device) * n, B, rounding_mode="floor"))
        c = self.components
        if type(c) is td.Normal:
            # the same noise draws (all S x B, as c.rsample()) and bit-identical values, without the
            # arithmetic of the S - 1 samples per item that are not picked (and their backward)
            eps = td.normal._standard_normal(c.batch_shape, dtype=c.loc.dtype, device=c.loc.device)  # as rsample
            rows = torch.arange(B, device=c.loc.device)
            loc, scale = torch.broadcast_tensors(c.loc, c.scale)
            return loc[which, rows] + eps[which, rows] * scale[which, rows]
        z = c.rsample()  # (S, B, D)
        return z[which, torch.arange(B, device=z.device)]

    def sample(self) -> torch.Tensor:
        """One sample per batch item from a uniformly chosen component. (B, D)"""
        S, B = self.n_components, self.components.batch_shape[1]
        if self.valid is None:
            which = torch.randint(S, (B,), device=self.mask.device)
        else:
            which = torch.multinomial(self.valid.T.float(), 1).flatten()
        z = self.components.rsample()
        return z[which, torch.arange(B, device=z.device)]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) = log (1/S) sum_s q_s(z) (s over the valid components). z: (..., B, D) -> (..., B)."""
        lp = self.components.log_prob(z.unsqueeze(-3)).sum(-1)  # (..., S, B)
        if self.valid is None:
            return torch.logsumexp(lp, dim=-2) - torch.log(torch.tensor(float(self.n_components)))
        lp = torch.where(self.valid, lp, torch.full((), -torch.inf, dtype=lp.dtype, device=lp.device))
        return torch.logsumexp(lp, dim=-2) - self.valid.sum(0).to(lp.dtype).log()

    def detached(self) -> Mixture:
        """Same mixture with parameters cut from the graph (for DReG's stop-gradients)."""
        c = self.components
        params = {k: getattr(c, k).detach() for k in ("loc", "scale")}
        return Mixture(type(c)(**params, validate_args=False), self.mask, self.valid)


class Fusion:
    """Which products of experts form q(z | X_A). Subclasses set `name` (their key in registry.FUSIONS,
    which declares what they are: `spec`) and `components`."""

    name = ""

    def __init__(self, n_modalities: int, subsets: torch.Tensor | None = None):
        self.M = n_modalities
        self.subsets = subsets if subsets is not None else enumerate_subsets(n_modalities)

    @property
    def spec(self) -> registry.Fusion:
        return registry.FUSIONS[self.name]

    def components(self, given: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For inputs `given` (bool (M,)), the component masks (S, M) and prior-expert flags (S,)."""
        raise NotImplementedError

    def per_item(
        self, mask: torch.Tensor, with_prior: torch.Tensor, observed: torch.Tensor, given: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """For tuples observing `observed` (B, M): expert weights (S, M, B), prior-expert flags (S,) or
        (S, B), and component validity (S, B) (None = all valid). Default: a component is valid iff all its
        experts are observed."""
        valid = ~(mask[:, None, :] & ~observed[None]).any(-1)  # (S, B)
        return mask[:, :, None].expand(-1, -1, observed.shape[0]), with_prior, valid

    def combine(
        self,
        experts: td.Distribution,
        given: torch.Tensor,
        prior: td.Distribution,
        present: torch.Tensor | None = None,
    ) -> Mixture:
        """q(z | X_given) from unimodal experts with batch shape (M, B, D) (absent rows are ignored);
        `present` (B, M) bool: per-tuple observed modalities (None = all of `given` for every tuple)."""
        mask, with_prior = self.components(given)
        dev = experts.loc.device
        mask = mask.to(dev)
        weights, valid = mask, None
        if present is not None:
            observed = given.to(dev)[None, :] & present.to(dev)
            weights, with_prior, valid = self.per_item(mask, with_prior.to(dev), observed, given)
            custom = self.spec.subsets and self.subsets.shape[0] != 2**self.M - 1  # only then can none be valid
            if custom and bool(
                (~valid.any(0)).any()
            ):  # (commands.train.check_observed_sets refuses such data up front)
                raise MMVAEError(
                    f"fusion {self.name}: a tuple observes none of the mixture's subsets (--subsets); "
                    "include every modality alone or use --subsets all"
                )
        if isinstance(experts, td.Normal):
            if not with_prior.any() and bool((mask.sum(1) == 1).all()):
                idx = mask.float().argmax(1)
                return Mixture(td.Normal(experts.loc[idx], experts.scale[idx], validate_args=False), mask, valid)
            if not isinstance(prior, td.Normal):
                raise MMVAEError(f"fusion {self.name} multiplies the prior expert: it needs a Gaussian prior")
            comp = product_of_gaussians(
                experts.loc, experts.scale, weights, prior.loc, prior.scale, with_prior.to(experts.loc.device)
            )
            return Mixture(comp, mask, valid)
        # Laplace (or any non-Gaussian) experts: only mixtures of single experts are closed form.
        if with_prior.any() or bool((mask.sum(1) != 1).any()):
            raise MMVAEError(
                f"fusion {self.name} needs Gaussian posteriors (a product of Laplace experts "
                "has no closed form); use --posterior gaussian or --fusion moe"
            )
        idx = mask.float().argmax(1)
        return Mixture(type(experts)(experts.loc[idx], experts.scale[idx], validate_args=False), mask, valid)


class PoE(Fusion):
    """MVAE: q(z | X_A) ∝ p(z) prod_{m in A} q(z | x_m); a partial tuple: the product over what it observes."""

    name = "poe"

    def components(self, given):
        return given[None, :].clone(), torch.ones(1, dtype=torch.bool)

    def per_item(self, mask, with_prior, observed, given):
        return mask[:, :, None] & observed.T[None], with_prior, None


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

    def per_item(self, mask, with_prior, observed, given):
        """Subsets within the tuple's observed set O_b; the prior expert joins subset O_b itself."""
        weights, with_prior, valid = super().per_item(mask, with_prior, observed, given)
        if bool(given.all()):
            with_prior = (mask[:, None, :] == observed[None]).all(-1)  # (S, B)
        return weights, with_prior, valid


class Independent(Fusion):
    """EB-MVAE's independent unimodal VAEs (Energy-Based Multimodal VAEs, sec. 2): z = (z_1, ..., z_M),

        q(z | X_A) = prod_{m in A} q(z_m | x_m) * prod_{m not in A} p(z_m),

    a single component with batch shape (1, B, M * d) built from experts of shape (M, B, d). With all
    modalities given, KL(q || p) is the sum of the M unimodal KLs, so the ELBO is the sum of M
    unimodal ELBOs (each decoder reads only its own block, see MultimodalVAE.decode)."""

    name = "none"

    def components(self, given):
        return given[None, :].clone(), torch.zeros(1, dtype=torch.bool)

    def combine(self, experts, given, prior, present=None):
        M, B, d = experts.loc.shape
        if type(prior) is not type(experts):
            raise MMVAEError(
                "fusion none needs the same family for posterior and prior "
                "(--posterior and --prior both gaussian or both laplace)"
            )
        g = given.to(experts.loc.device)[:, None, None]  # (M, 1, 1)
        if present is not None:  # (M, B, 1): the blocks of absent modalities are the prior's
            g = g & present.to(g.device).T[:, :, None]
        loc = torch.where(g, experts.loc, prior.loc.reshape(M, 1, d))
        scale = torch.where(g, experts.scale, prior.scale.reshape(M, 1, d))
        cat = lambda t: t.permute(1, 0, 2).reshape(1, B, M * d)  # noqa: E731
        return Mixture(type(experts)(cat(loc), cat(scale)), given[None, :].clone())


class Joint(Fusion):
    """JMVAE (Suzuki et al. 2016): q(z | X) is the joint encoder's own expert, row M of the experts that
    MultimodalVAE.encode appends when every modality is given; for a strict subset A of the modalities

        q(z | X_A) ∝ prod_{m in A} q(z | x_m)   (no prior expert; for |A| = 1 the unimodal encoder itself),

    the inference MultiVae uses (the JMVAE paper, with M = 2, has only the unimodal case). The joint
    encoder reads every modality, so a tuple missing one has no q(z | X): partial tuples are refused."""

    name = "joint"

    def components(self, given):
        return given[None, :].clone(), torch.zeros(1, dtype=torch.bool)

    def combine(self, experts, given, prior, present=None):
        if present is not None and not bool(present.to(given.device)[:, given].all()):
            raise MMVAEError("fusion joint (JMVAE) needs complete tuples: its q(z | X) reads every modality")
        if experts.loc.shape[0] > self.M:  # the joint expert is there (every modality given)
            rows = slice(self.M, self.M + 1) if bool(given.all()) else slice(0, self.M)
            experts = type(experts)(experts.loc[rows], experts.scale[rows], validate_args=False)
            if bool(given.all()):
                return Mixture(experts, given[None, :].clone())
        return super().combine(experts, given, prior)


def make_fusion(name: str, n_modalities: int, subsets: torch.Tensor | None = None) -> Fusion:
    """The fusion registered as `name` (registry.FUSIONS) over n modalities."""
    return registry.load(registry.fusion(name).code)(n_modalities, subsets)
