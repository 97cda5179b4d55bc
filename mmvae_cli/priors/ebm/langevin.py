"""Sampling an energy-based density: short-run Langevin, annealed Langevin over noise levels, and a
last Tweedie step.

* Yuan et al. (eq. 11): z ~ p_alpha(z) ∝ exp(-E(z)) p0(z) by short-run Langevin from p0 (`langevin` on
  `ebm_prior_log_prob`).
* EB-MVAE (eq. 2-3): conditional generation by Langevin on the unobserved latents with the observed
  ones clamped (`langevin(..., mask=...)`) on p ∝ exp(-E) (`ebm_log_prob`).
* NCSN (Song & Ermon 2019): annealed Langevin over geometric noise levels (`annealed_langevin`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ...errors import MMVAEError, NumericalError

LogProb = Callable[[torch.Tensor], torch.Tensor]


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


def check_tweedie_level(sigma: float, smallest: float | None) -> None:
    """A noise-conditional energy's Tweedie step uses the score of its smallest level (the data smoothed
    by N(0, smallest^2 I)), and Tweedie's formula holds only at that noise: `--denoise sigma` must be 0
    or that level (relative 1e-4, so the level as printed passes). smallest None: not known yet (a fit
    that sets it from the posterior). MMVAEError otherwise."""
    if not sigma or (smallest is not None and math.isclose(sigma, smallest, rel_tol=1e-4)):
        return
    if smallest is None:
        raise MMVAEError(
            f"--denoise {sigma:g} with --objective ncsn: the Tweedie step is taken at the smallest noise level, "
            "which this fit sets from the posterior; give --sigma-min with the same value, or --denoise when sampling"
        )
    raise MMVAEError(
        f"--denoise {sigma:g}: a noise-conditional energy's Tweedie step uses the score of its smallest noise "
        f"level, here {smallest:.6g} (in its standardised coordinates); give --denoise {smallest:.6g}, or 0 for none"
    )


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
