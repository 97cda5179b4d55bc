"""Energy-based models over latents: energy MLP, Langevin sampler, training losses.

Sign convention (used everywhere in the project): an energy network returns the
energy E(z) of each sample, shape (B,), and LOWER energy means MORE likely.

* Shared-latent EBM prior (Yuan et al., "Learning multimodal latent generative
  models with energy-based prior", eq. 3):
      log p_alpha(z) = -E(z) + log p0(z) - log Z(alpha),
  i.e. the paper's f_alpha(z) is -E(z) here. Trained by maximum likelihood
  (eq. 10, `maximum_likelihood_loss`) with negatives from short-run Langevin
  (eq. 11, `langevin`) started from p0 = N(0, I) (Algorithm 1).
* EB-MVAE (Yuan/Daunhawer-style joint latent EBM, eq. 1-3):
      p(z) ∝ exp(-E(z)),   score S(z) = -grad_z E(z),
  trained by score matching (eq. 1, `score_matching_loss`); conditional
  generation by Langevin on the unobserved latents with the observed ones
  clamped (eq. 2-3, `langevin(..., mask=...)`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
from torch import nn

from .config import JointEnergySettings
from .errors import BundleError, MMVAEError, NumericalError

LogProb = Callable[[torch.Tensor], torch.Tensor]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "elu": nn.ELU,
}


# --------------------------------------------------------------------------- energy net


@dataclass(frozen=True)
class EnergyConfig:
    """Architecture of an `EnergyNet`, JSON-serialisable so a bundle can rebuild it.

    dim: latent size; hidden: units per hidden layer; layers: number of Linear
    layers (>= 1; the paper's best is 4 layers of 400 units:
    dim-400-400-400-1); activation: one of gelu | silu | softplus | leaky_relu
    (slope 0.2) | elu. Score matching needs a twice-differentiable energy: use a
    smooth activation (gelu, silu, softplus, elu) there, not leaky_relu.
    """

    dim: int
    hidden: int = 400
    layers: int = 4
    activation: str = "gelu"
    noise_levels: int = 0  # > 0: noise-conditional energy E(z, sigma) over that many levels (ncsn)
    standardise: bool = False  # the energy sees u = (z - shift) / scale (aggregate mean and std)

    def __post_init__(self):
        for name in ("dim", "hidden", "layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise MMVAEError(f"energy {name} must be a positive integer, got {v!r}")
        v = self.noise_levels
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise MMVAEError(f"energy noise_levels must be a non-negative integer, got {v!r}")
        if not isinstance(self.standardise, bool):
            raise MMVAEError(f"energy standardise must be true or false, got {self.standardise!r}")
        if self.activation not in ACTIVATIONS:
            raise MMVAEError(f"unknown energy activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")

    def to_dict(self) -> dict:
        """JSON form; the ncsn fields only when set, so plain energies' manifests are as before."""
        d = asdict(self)
        if not d["noise_levels"]:
            del d["noise_levels"]
        if not d["standardise"]:
            del d["standardise"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EnergyConfig:
        """Inverse of `to_dict`; a malformed dict raises BundleError."""
        if not isinstance(d, dict):
            raise BundleError(f"energy config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise BundleError(f"energy config has unknown keys: {', '.join(sorted(unknown))}")
        if "dim" not in d:
            raise BundleError("energy config lacks 'dim'")
        try:
            return cls(**d)
        except MMVAEError as e:
            raise BundleError(f"bad energy config: {e}") from None


class EnergyNet(nn.Module):
    """MLP energy E(z): dim -> hidden -> ... -> hidden -> 1 with `layers` Linear layers.

    forward(z) with z of shape (..., dim) returns E(z) of shape (...), i.e. (B,)
    for a batch. Lower energy = more likely (log p = -E + const).

    standardise: the MLP sees u = (z - shift) / scale (buffers, set by the fit to the aggregate
    posterior's per-dimension mean and std), so dimensions of very different spread are
    conditioned alike; p(z) ∝ exp(-E) is unchanged in meaning (a constant Jacobian).
    noise_levels L > 0 (Song & Ermon 2019, NCSN): a noise-conditional energy
        E(u, sigma) = MLP([u, log sigma]) / sigma
    over the L levels of the buffer `sigmas` (geometric, largest first, in u units), the energy of
    the data smoothed by N(0, sigma^2 I). forward(z) without sigma is the smallest level's energy,
    so every plain use (log densities, plain Langevin) sees the least smoothed density.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 400,
        layers: int = 4,
        activation: str = "gelu",
        noise_levels: int = 0,
        standardise: bool = False,
    ):
        super().__init__()
        self.config = EnergyConfig(
            dim=dim,
            hidden=hidden,
            layers=layers,
            activation=activation,
            noise_levels=noise_levels,
            standardise=standardise,
        )
        sizes = [dim + (1 if noise_levels else 0)] + [hidden] * (layers - 1) + [1]
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < layers - 1:
                mods.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*mods)
        if standardise:
            self.register_buffer("shift", torch.zeros(dim))
            self.register_buffer("scale", torch.ones(dim))
        if noise_levels:
            self.register_buffer("sigmas", torch.ones(noise_levels))

    @property
    def noise_conditional(self) -> bool:
        return self.config.noise_levels > 0

    def to_u(self, z: torch.Tensor) -> torch.Tensor:
        """z -> u, the MLP's coordinates (identity without standardise)."""
        return (z - self.shift) / self.scale if self.config.standardise else z

    def from_u(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.scale + self.shift if self.config.standardise else u

    def energy_u(self, u: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        """E in u coordinates: (B, dim) -> (B,); sigma: a float or (B,) tensor of noise levels
        (noise-conditional energies; None = the smallest level)."""
        if u.shape[-1] != self.config.dim:
            raise ValueError(f"EnergyNet expects latents of size {self.config.dim}, got shape {tuple(u.shape)}")
        if not self.noise_conditional:
            return self.net(u).squeeze(-1)
        if sigma is None:
            sigma = self.sigmas[-1]
        sig = torch.as_tensor(sigma, dtype=u.dtype, device=u.device)
        sig = torch.broadcast_to(sig, u.shape[:-1]).unsqueeze(-1)
        return (self.net(torch.cat([u, sig.log()], -1)) / sig).squeeze(-1)

    @classmethod
    def from_config(cls, config: EnergyConfig | dict) -> EnergyNet:
        if isinstance(config, dict):
            config = EnergyConfig.from_dict(config)
        return cls(**config.to_dict())

    def forward(self, z: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        if z.shape[-1] != self.config.dim:
            raise ValueError(f"EnergyNet expects latents of size {self.config.dim}, got shape {tuple(z.shape)}")
        return self.energy_u(self.to_u(z), sigma)


# --------------------------------------------------------------------------- log densities


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over all non-batch dimensions: -0.5||z||^2 - (d/2) log 2π."""
    zf = z.flatten(1)
    return -0.5 * zf.pow(2).sum(1) - 0.5 * zf.shape[1] * math.log(2 * math.pi)


def ebm_prior_log_prob(energy: Callable[[torch.Tensor], torch.Tensor], base_log_prob: LogProb) -> LogProb:
    """Unnormalised log of the exponentially tilted prior (Yuan et al. eq. 3).

    Returns z -> -E(z) + log p0(z) (= f_alpha(z) + log p0(z); log Z(alpha) omitted).
    """

    def log_prob(z: torch.Tensor) -> torch.Tensor:
        return -energy(z) + base_log_prob(z)

    return log_prob


def ebm_log_prob(energy: Callable[[torch.Tensor], torch.Tensor]) -> LogProb:
    """Unnormalised log density of EB-MVAE's joint latent model: z -> -E(z) (p ∝ exp(-E))."""

    def log_prob(z: torch.Tensor) -> torch.Tensor:
        return -energy(z)

    return log_prob


# --------------------------------------------------------------------------- Langevin


class LangevinResult(NamedTuple):
    z: torch.Tensor  # final state, detached, same shape as z0
    chain: list[torch.Tensor]  # every `every`-th state from the start (empty when every == 0)


MAX_ABS = 1e4  # a chain (or Tweedie step) counts as diverged when any |z| exceeds it


def langevin(
    log_prob: LogProb,
    z0: torch.Tensor,
    steps: int,
    step_size: float,
    noise_scale: float = 1.0,
    clip_grad: float | None = None,
    mask: torch.Tensor | None = None,
    every: int = 0,
    max_abs: float = MAX_ABS,
) -> LangevinResult:
    """Unadjusted Langevin dynamics (Yuan et al. eq. 11; EB-MVAE eq. 3), batched over chains:

        z <- z + (s^2 / 2) * grad_z log p(z) + noise_scale * s * eps,   eps ~ N(0, I).

    log_prob: callable z -> (B,) unnormalised log density (e.g. `ebm_prior_log_prob`
      for p_alpha, `ebm_log_prob` for EB-MVAE); its batch sum is differentiated
      w.r.t. z only (torch.autograd.grad), so no gradient ever reaches the
      energy's parameters' .grad and no graph survives a step (z is detached).
      Works inside callers' torch.no_grad()/inference_mode blocks.
    z0: (B, ...) start states. Short-run sampling starts from p0 samples;
      persistent chains simply pass the previous result's z as z0.
    noise_scale: 1 is proper Langevin; 0 gives noiseless gradient ascent.
    clip_grad: if set, each sample's gradient is rescaled so its norm (over all
      non-batch dimensions) is at most clip_grad.
    mask: bool or float, broadcastable to z0; True/non-zero = free, False/0 =
      clamped. Clamped coordinates keep their z0 values exactly, so the free
      ones sample the conditional p(z_u | z_o) (EB-MVAE eq. 2-3).
    every: if > 0, `chain` holds the states at steps 0, every, 2*every, ...
      (detached copies; step 0 is z0) for figures.
    max_abs: a chain counts as diverged when any |z| exceeds it.

    Raises NumericalError (exit code 3) if z becomes NaN/Inf or exceeds max_abs.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if every < 0:
        raise ValueError(f"every must be >= 0, got {every}")
    half = 0.5 * step_size**2
    sigma = noise_scale * step_size

    with torch.inference_mode(False), torch.enable_grad():
        z = z0.detach().clone()
        free = None
        if mask is not None:
            try:
                free = torch.broadcast_to(mask.to(device=z.device) != 0, z.shape)
            except RuntimeError:
                raise ValueError(
                    f"mask of shape {tuple(mask.shape)} does not broadcast to z of shape {tuple(z.shape)}"
                ) from None
        _check(z, 0, steps, step_size, max_abs)
        chain = [z.clone()] if every > 0 else []
        for t in range(1, steps + 1):
            zr = z.detach().requires_grad_(True)
            lp = log_prob(zr)
            if lp.shape != (z.shape[0],):
                raise ValueError(f"log_prob must return shape ({z.shape[0]},), got {tuple(lp.shape)}")
            (grad,) = torch.autograd.grad(lp.sum(), zr, create_graph=False)
            if clip_grad is not None:
                norm = grad.flatten(1).norm(dim=1)
                factor = (clip_grad / (norm + 1e-12)).clamp(max=1.0)
                grad = grad * factor.view(-1, *([1] * (grad.dim() - 1)))
            with torch.no_grad():
                new = z + half * grad
                if sigma != 0:
                    new = new + sigma * torch.randn_like(z)
                z = new if free is None else torch.where(free, new, z)
            _check(z, t, steps, step_size, max_abs)
            if every > 0 and t % every == 0:
                chain.append(z.clone())
    return LangevinResult(z.detach(), chain)


def _divergence(z: torch.Tensor, max_abs: float) -> str | None:
    """What is wrong with z, or None: one reduction, `not (max|z| <= max_abs)` is also true for NaN and Inf."""
    if z.numel() == 0:
        return None
    zmax = z.detach().abs().max()
    if bool(zmax <= max_abs):
        return None
    if torch.isnan(z).any():
        return "NaN in z"
    if torch.isinf(z).any():
        return "Inf in z"
    return f"|z| reached {float(zmax):.3g} > {max_abs:g}"


def _check(z: torch.Tensor, t: int, steps: int, step_size: float, max_abs: float) -> None:
    """Raise NumericalError if Langevin's state z at step t diverged (`_divergence`)."""
    what = _divergence(z, max_abs)
    if what is not None:
        where = "in the start state" if t == 0 else f"at step {t} of {steps}"
        raise NumericalError(f"Langevin chain diverged {where} ({what}); try a smaller --step-size (now {step_size:g})")


def tweedie_denoise(log_prob: LogProb, z: torch.Tensor, sigma: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One noise-free Tweedie step on the free coordinates (mask as in `langevin`):

        z <- z + sigma^2 * grad_z log p(z),

    which is E[x | z] when p is the density of x + N(0, sigma^2 I) (Tweedie's formula), e.g. an
    energy fitted by denoising score matching at sigma. Langevin samples of such an energy carry that
    noise; this step removes its expectation (the "denoising last step" of Jolicoeur-Martineau et
    al. 2021; Song & Ermon 2020). sigma 0 returns z unchanged. Detached, same shape as z."""
    if not sigma >= 0:
        raise ValueError(f"denoise must be >= 0, got {sigma}")
    if sigma == 0 or z.numel() == 0:
        return z.detach()
    with torch.inference_mode(False), torch.enable_grad():
        zr = z.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_prob(zr).sum(), zr)
    new = (zr + sigma**2 * grad).detach()
    if mask is not None:
        new = torch.where(torch.broadcast_to(mask.to(device=z.device) != 0, z.shape), new, z.detach())
    what = _divergence(new, MAX_ABS)
    if what is not None:
        raise NumericalError(f"the Tweedie step diverged ({what}); try a smaller --denoise (now {sigma:g})")
    return new


def geometric_sigmas(sigma_max: float, sigma_min: float, levels: int) -> torch.Tensor:
    """NCSN's noise levels: `levels` values from sigma_max down to sigma_min, geometric. (L,)"""
    if not (sigma_max > 0 and sigma_min > 0):
        raise ValueError(f"noise levels must be > 0, got sigma_max {sigma_max}, sigma_min {sigma_min}")
    if sigma_min > sigma_max:
        raise ValueError(f"sigma_min {sigma_min:g} must not exceed sigma_max {sigma_max:g}")
    if levels < 1:
        raise ValueError(f"noise levels must be >= 1, got {levels}")
    if levels == 1:
        return torch.tensor([float(sigma_min)])
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), levels))


def level_steps(steps: int, levels: int) -> list[int]:
    """`steps` Langevin steps spread over `levels` noise levels (the last levels take the remainder)."""
    base, extra = divmod(steps, levels)
    return [base + (1 if i >= levels - extra else 0) for i in range(levels)]


def annealed_langevin(
    log_prob: Callable[[torch.Tensor, float], torch.Tensor],
    z0: torch.Tensor,
    sigmas,
    steps: int,
    step_ratio: float,
    noise_scale: float = 1.0,
    clip_grad: float | None = None,
    mask: torch.Tensor | None = None,
    every: int = 0,
    max_abs: float = MAX_ABS,
    noise_clamped: bool = True,
) -> LangevinResult:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) in this module's convention:
    for each noise level sigma_i (largest first), `langevin` on z -> log_prob(z, sigma_i) with step
    size s_i = step_ratio * sigma_i, i.e. Song's alpha_i = s_i^2 = eps * sigma_i^2 / sigma_L^2 with
    eps = (step_ratio * sigma_L)^2. `steps` is the total over all levels (`level_steps`), so it costs
    as many energy gradients as plain Langevin with the same `steps`.
    mask clamps as in `langevin`; with noise_clamped (Song & Ermon's inpainting, their Appendix B.3)
    the clamped coordinates are held at z0 + sigma_i * eps_i during level i (fresh eps_i per level), so
    the free ones see the observed values at the noise level the energy expects; the result (and the
    chain) carries the clamped coordinates exactly as in z0.
    `every` > 0: the chain holds the start and each level's snapshots."""
    sig = [float(x) for x in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    if not sig:
        raise ValueError("annealed Langevin needs at least one noise level")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not step_ratio > 0:
        raise ValueError(f"step_size must be > 0, got {step_ratio}")
    z = z0.detach().clone()
    chain = [z.clone()] if every > 0 else []
    free = None if mask is None else torch.broadcast_to(mask.to(device=z.device) != 0, z.shape)
    for s_i, t_i in zip(sig, level_steps(steps, len(sig)), strict=True):
        if t_i == 0:
            continue
        if free is not None and noise_clamped:
            z = torch.where(free, z, z0 + s_i * torch.randn_like(z0))
        res = langevin(
            lambda x, s_i=s_i: log_prob(x, s_i),
            z,
            t_i,
            step_ratio * s_i,
            noise_scale,
            clip_grad,
            mask=mask,
            every=every,
            max_abs=max_abs,
        )
        z = res.z
        chain.extend(res.chain[1:])
    if free is not None:
        z, chain = torch.where(free, z, z0), [torch.where(free, c, z0) for c in chain]
    return LangevinResult(z, chain)


# --------------------------------------------------------------------------- maximum likelihood (Yuan et al.)


def maximum_likelihood_loss(
    energy: Callable[[torch.Tensor], torch.Tensor],
    z_pos: torch.Tensor,
    z_neg: torch.Tensor,
    reg: float = 0.0,
    reg_on: str = "energies",
) -> torch.Tensor:
    """Loss whose gradient w.r.t. the energy's parameters is minus Yuan et al. eq. 10:

        loss = mean E(z_pos) - mean E(z_neg) [+ reg * (mean E(z_pos)^2 + mean E(z_neg)^2)]   (reg_on energies)
        loss = mean E(z_pos) - mean E(z_neg) [+ reg * ((mean E(z_pos) + mean E(z_neg)) / 2)^2] (reg_on level)

    ("level" pins only the mean level of the energies, leaving the gap between positives and negatives free.)

    With f = -E, d(loss)/d(alpha) = -(E_q[df/dalpha] - E_p_alpha[df/dalpha]).
    z_pos: posterior samples (used as given: detach them if only the energy
    should learn from this loss, as in Algorithm 1's "learn alpha" step).
    z_neg: prior samples from Langevin; always detached here. The optional L2
    term keeps the energies near zero so they cannot drift to large
    magnitudes (the loss is invariant to adding a constant to E); joint
    training turns it on (`JointEnergySettings.reg`).
    """
    e_pos = energy(z_pos)
    e_neg = energy(z_neg.detach())
    loss = e_pos.mean() - e_neg.mean()
    if reg and reg_on == "level":
        loss = loss + reg * (0.5 * (e_pos.mean() + e_neg.mean())).pow(2)
    elif reg:
        loss = loss + reg * (e_pos.pow(2).mean() + e_neg.pow(2).mean())
    return loss


# --------------------------------------------------------------------------- score matching (EB-MVAE)


def _score(energy, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z with grad, S(z) = -grad_z E(z)) with the graph kept for second derivatives."""
    z = z.detach().requires_grad_(True)
    e = energy(z)
    (g,) = torch.autograd.grad(e.sum(), z, create_graph=True)
    return z, -g


def score_matching_loss(
    energy: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    objective: str = "exact",
    sigma: float = 0.1,
    projections: int = 1,
    variance_reduced: bool = True,
) -> torch.Tensor:
    """Score-matching loss for p ∝ exp(-E) with score S(z) = -grad_z E(z); z: (B, D) data latents.

    exact (Hyvärinen 2005; EB-MVAE eq. 1):
        mean_b [ tr(grad_z S(z_b)) + 0.5 ||S(z_b)||^2 ]
      the trace takes one autograd pass per dimension (fine for small D).
    sliced (Song et al. 2019), v ~ N(0, I), `projections` draws per sample:
        mean [ v^T (grad_z S) v + 0.5 ||S||^2 ]     (variance_reduced=True, default)
        mean [ v^T (grad_z S) v + 0.5 (v^T S)^2 ]   (variance_reduced=False)
      Both have the exact objective as expectation over v.
    denoising (Vincent 2011), z~ = z + sigma * eps, `projections` noise draws per sample:
        mean 0.5 ||S(z~) + eps / sigma||^2
      Equals the exact objective of the sigma-smoothed data (up to a constant),
      so its optimum is biased by O(sigma^2): e.g. Gaussian data with covariance
      C gives precision (C + sigma^2 I)^-1.
    All graphs are built with create_graph=True so the energy's parameters get gradients.
    """
    if z.dim() != 2:
        raise ValueError(f"score matching expects z of shape (B, D), got {tuple(z.shape)}")
    if projections < 1:
        raise ValueError(f"projections must be >= 1, got {projections}")
    if objective == "exact":
        zr, s = _score(energy, z)
        trace = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        if s.requires_grad:
            for i in range(z.shape[1]):
                (row,) = torch.autograd.grad(s[:, i].sum(), zr, create_graph=True, allow_unused=True)
                if row is not None:
                    trace = trace + row[:, i]
        return (trace + 0.5 * s.pow(2).sum(1)).mean()
    if objective == "sliced":
        zr, s = _score(energy, z.repeat(projections, 1))
        v = torch.randn_like(zr)
        vs = (v * s).sum(1)
        quad = torch.zeros_like(vs)
        if s.requires_grad:
            (jv,) = torch.autograd.grad(vs.sum(), zr, create_graph=True, allow_unused=True)
            if jv is not None:
                quad = (jv * v).sum(1)
        second = 0.5 * s.pow(2).sum(1) if variance_reduced else 0.5 * vs.pow(2)
        return (quad + second).mean()
    if objective == "denoising":
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        zz = z.detach().repeat(projections, 1)
        eps = torch.randn_like(zz)
        _, s = _score(energy, zz + sigma * eps)
        return 0.5 * (s + eps / sigma).pow(2).sum(1).mean()
    raise ValueError(f"unknown score-matching objective {objective!r}; choose exact, sliced or denoising")


def ncsn_loss(
    energy_u: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    u: torch.Tensor,
    sigmas: torch.Tensor,
    levels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-scale denoising score matching (Song & Ermon 2019, eq. 5-6) with lambda(sigma) = sigma^2:

        mean_b 0.5 * sigma_b^2 * || S(u_b + sigma_b eps, sigma_b) + eps / sigma_b ||^2
          = mean_b 0.5 * || sigma_b S(u~_b, sigma_b) + eps ||^2,

    S(u, sigma) = -grad_u E(u, sigma), each sample at one level sigma_b drawn uniformly from `sigmas`
    (or given as indices `levels`, (B,)). Its minimiser is the score of the data smoothed by
    N(0, sigma^2 I) at every level (Vincent 2011): Gaussian data N(m, c^2) give -(u - m) / (c^2 + sigma^2).
    u: (B, D) data (in the energy's own coordinates)."""
    if u.dim() != 2:
        raise ValueError(f"ncsn loss expects u of shape (B, D), got {tuple(u.shape)}")
    sigmas = sigmas.to(u)
    if levels is None:
        levels = torch.randint(len(sigmas), (u.shape[0],), device=u.device)
    sig = sigmas[levels]
    eps = torch.randn_like(u)
    ur = (u.detach() + sig[:, None] * eps).requires_grad_(True)
    e = energy_u(ur, sig)
    (g,) = torch.autograd.grad(e.sum(), ur, create_graph=True)
    return 0.5 * (eps - sig[:, None] * g).pow(2).sum(1).mean()


# --------------------------------------------------------------------------- an energy attached to a model

DENSITIES = ("tilted", "gibbs")


class LatentEBM(nn.Module):
    """An energy over a model's latent z together with the density it defines:

      tilted (Yuan et al. eq. 3, fitted by maximum likelihood, eq. 10):
          log p_alpha(z) = -E(z) + log p0(z) - log Z,   chains start at z0 ~ p0;
      gibbs (EB-MVAE eq. 1-3, fitted by score matching):
          log p(z) = -E(z) - log Z,   chains start at z0 ~ N(init_loc, diag(init_scale^2)),
          the diagonal Gaussian moment-matched to the latents the energy was fitted on (score
          matching learns the density only where the data are, so chains start there).

    `joint` marks an energy trained jointly with the VAE (Algorithm 1), which the objectives then
    use in their prior term. Its state (energy weights, init_loc, init_scale) is `ebm.safetensors`.
    """

    def __init__(
        self,
        config: EnergyConfig | dict,
        density: str = "tilted",
        joint: bool = False,
        joint_settings: JointEnergySettings | None = None,
    ):
        super().__init__()
        self.joint_settings = joint_settings or JointEnergySettings()
        self.joint_step = 0  # training steps taken (warm-up; not saved)
        self.chains: torch.Tensor | None = None  # persistent negatives (not saved)
        if density not in DENSITIES:
            raise BundleError(f"unknown energy density {density!r}; expected one of {', '.join(DENSITIES)}")
        self.energy = EnergyNet.from_config(config)
        self.density = density
        self.joint = joint
        dim = self.energy.config.dim
        self.register_buffer("init_loc", torch.zeros(dim))
        self.register_buffer("init_scale", torch.ones(dim))

    def log_prob(self, base_log_prob: LogProb) -> LogProb:
        """The unnormalised log density z -> (B,) for `langevin`."""
        if self.density == "tilted":
            return ebm_prior_log_prob(self.energy, base_log_prob)
        return ebm_log_prob(self.energy)

    def sample(
        self, z0: torch.Tensor, base_log_prob: LogProb, steps: int, step_size: float, denoise: float = 0.0, **kw
    ) -> LangevinResult:
        """Langevin from z0 on this density: plain (`langevin`) for an ordinary energy; for a
        noise-conditional one (gibbs), annealed Langevin (`annealed_langevin`) in the energy's u
        coordinates over its levels, `steps` in all, step_size the ratio s_i / sigma_i. Same
        keywords as `langevin` (noise_scale, clip_grad, mask, every). denoise > 0: a last
        `tweedie_denoise` step at that noise level (noise-conditional energies: in u, on the
        smallest level's energy); the chain's snapshots are the Langevin states before it."""
        net = self.energy
        mask = kw.get("mask")
        if not self._annealed:
            res = langevin(self.log_prob(base_log_prob), z0, steps, step_size, **kw)
            return res._replace(z=self.denoise(res.z, base_log_prob, denoise, mask))
        res = annealed_langevin(lambda u, s: -net.energy_u(u, s), net.to_u(z0), net.sigmas, steps, step_size, **kw)
        z, chain = self.denoise(net.from_u(res.z), base_log_prob, denoise, mask), [net.from_u(c) for c in res.chain]
        if mask is not None:  # clamped coordinates exactly as given (u -> z may round)
            free = torch.broadcast_to(mask.to(device=z.device) != 0, z.shape)
            z, chain = torch.where(free, z, z0), [torch.where(free, c, z0) for c in chain]
        return LangevinResult(z, chain)

    @property
    def _annealed(self) -> bool:
        """A noise-conditional Gibbs energy: sampled by annealed Langevin in its u coordinates."""
        return getattr(self.energy, "noise_conditional", False) and self.density != "tilted"

    def denoise(
        self, z: torch.Tensor, base_log_prob: LogProb, sigma: float, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`tweedie_denoise` on this density at noise level sigma (free coordinates only): in z for an
        ordinary energy; in u on the smallest level's energy for a noise-conditional one."""
        if not self._annealed:
            return tweedie_denoise(self.log_prob(base_log_prob), z, sigma, mask)
        if not sigma:
            return z.detach()
        net = self.energy
        new = net.from_u(tweedie_denoise(lambda x: -net.energy_u(x), net.to_u(z), sigma, mask)).detach()
        if mask is None:
            return new
        free = torch.broadcast_to(mask.to(device=z.device) != 0, z.shape)
        return torch.where(free, new, z.detach())  # clamped coordinates exactly as given (u -> z may round)


class DivergenceTest:
    """Per-epoch test that a jointly trained energy prior has run away (pure: no I/O, no torch).

    `update(row)` takes each epoch's summary (train.fit's keys: "loss", "kl" = KL(q || p0) per sample,
    "energy_q" = E_q[E], "energy_neg" = mean E over the Langevin negatives, "ebm_ml") and returns None,
    or a one-line reason with a suggestion when the run has diverged (tests in this order).
    Rows without "energy_q" (no joint energy) are ignored. With g_t = E_neg - E_q, K_t = kl, and
    k_t = max(K_t, kl_floor), the run diverged at epoch t when any of:

    1. non-finite: loss, kl, energy_q, energy_neg or ebm_ml is NaN or infinite;
    2. gap: g_t > gap_ratio * k_t (the energy separates positives from negatives by more than the
       posterior's whole information about the data: the negatives no longer sample p_alpha);
    3. energy scale: max(|E_q|, |E_neg|) > energy_ratio * k_t. A correct tilt is
       E(z) = -log(q_agg(z) / p0(z)) + c, so |E_q - c| <= KL(q_agg || p0) <= K_t, and the L2 term of
       `JointEnergySettings.reg` keeps c near 0; energies far beyond the KL are the runaway;
    4. drift: over the last `window` epochs E_q fell by more than max(drift_floor, K_t - K_{t-window})
       while K rose by at least the factor (1 + kl_growth): the energy's level on the posterior's region
       sinks (eq. 10 is blind to it, see `JointEnergySettings`) and the posterior follows the deepening
       well away from p0. A shift of the energy at a steady KL is harmless (log Z absorbs it) and is
       not flagged.
    The epoch in the message is row["epoch"] when present, else the number of rows seen. On --resume,
    feed the manifest's history first so the window spans the restart.
    Calibration (measured): the PolyMNIST runs without the L2 term are flagged at epoch 3 (drift), with
    reg 0.01 at epoch 4; with the default reg 0.1 (8 epochs) and in the joint test nothing is flagged.
    """

    def __init__(
        self,
        energy_ratio: float = 1.5,
        gap_ratio: float = 1.0,
        kl_floor: float = 10.0,
        window: int = 2,
        drift_floor: float = 5.0,
        kl_growth: float = 0.1,
    ):
        self.energy_ratio, self.gap_ratio, self.kl_floor = energy_ratio, gap_ratio, kl_floor
        self.window, self.drift_floor, self.kl_growth = window, drift_floor, kl_growth
        self.rows: list[dict] = []

    def update(self, row: dict) -> str | None:
        if "energy_q" not in row:
            return None
        r = {k: float(row.get(k, 0.0)) for k in ("loss", "kl", "energy_q", "energy_neg", "ebm_ml")}
        self.rows.append(r)
        t = int(row.get("epoch", len(self.rows)))
        bad = [k for k, v in r.items() if not math.isfinite(v)]
        if bad:
            return self._say(t, f"non-finite {', '.join(bad)}")
        e_q, e_neg, kl = r["energy_q"], r["energy_neg"], r["kl"]
        k = max(kl, self.kl_floor)
        if e_neg - e_q > self.gap_ratio * k:
            return self._say(
                t, f"energy gap E_neg - E_q = {e_neg - e_q:.4g} beyond {self.gap_ratio:g} x KL(q||p0) {kl:.4g}"
            )
        if max(abs(e_q), abs(e_neg)) > self.energy_ratio * k:
            return self._say(
                t, f"energy scale: E_q {e_q:.4g}, E_neg {e_neg:.4g} beyond {self.energy_ratio:g} x KL(q||p0) {kl:.4g}"
            )
        if len(self.rows) > self.window:
            old = self.rows[-1 - self.window]
            drop, rise = old["energy_q"] - e_q, kl - old["kl"]
            if drop > max(self.drift_floor, rise) and kl >= (1 + self.kl_growth) * old["kl"] > 0:
                return self._say(
                    t,
                    f"drift: E_q fell {drop:.4g} ({old['energy_q']:.4g} -> {e_q:.4g}) while "
                    f"KL(q||p0) rose {old['kl']:.4g} -> {kl:.4g} over {self.window} epochs",
                )
        return None

    @staticmethod
    def _say(t: int, what: str) -> str:
        return (
            f"the jointly trained energy prior diverged at epoch {t} ({what}); try a lower --ebm-feedback, "
            f"a larger --ebm-reg or a lower --ebm-lr; the last good checkpoint is kept"
        )
