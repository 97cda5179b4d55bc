"""The energy's training losses: maximum likelihood (Yuan et al. eq. 10), noise-contrastive estimation,
score matching (EB-MVAE eq. 1: exact, sliced, denoising) and multi-scale denoising score matching (NCSN,
Song & Ermon 2019)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

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
        loss = mean E(z_pos) - mean E(z_neg) [+ reg * ((mean E(z_pos) + mean E(z_neg)) / 2)^2] (reg_on gauge)

    With f = -E, d(loss)/d(alpha) = -(E_q[df/dalpha] - E_p_alpha[df/dalpha]).
    z_pos: posterior samples (used as given: detach them if only the energy
    should learn from this loss, as in Algorithm 1's "learn alpha" step).
    z_neg: prior samples from Langevin; always detached here. eq. 10 is
    invariant to adding a constant to E, and so are p_alpha, Langevin and the
    VAE's gradients; the optional L2 term (`JointEnergySettings.reg`):
    "gauge" fixes that constant (the mean level of the energies) near 0 and
    leaves the gap between positives and negatives free; "energies" also bounds
    the gap (its optimum: E_pos = -1/(2 reg), E_neg = +1/(2 reg)).
    """
    if reg_on not in ("energies", "gauge"):
        raise ValueError(f"reg_on must be energies or gauge, got {reg_on!r}")
    e_pos = energy(z_pos)
    e_neg = energy(z_neg.detach())
    loss = e_pos.mean() - e_neg.mean()
    if reg and reg_on == "gauge":
        loss = loss + reg * (0.5 * (e_pos.mean() + e_neg.mean())).pow(2)
    elif reg:
        loss = loss + reg * (e_pos.pow(2).mean() + e_neg.pow(2).mean())
    return loss


# --------------------------------------------------------------------------- noise-contrastive estimation


def nce_loss(
    energy: Callable[[torch.Tensor], torch.Tensor],
    z_pos: torch.Tensor,
    z_noise: torch.Tensor,
    noise_ratio: float = 1.0,
) -> torch.Tensor:
    """Noise-contrastive estimation of a tilt (Gutmann & Hyvarinen 2010; Aneja et al. 2021, NCP-VAE eq. 4):
    logistic regression of data z_pos ~ q against nu = noise_ratio times as many noise samples
    z_noise ~ p_b with the logit G(z) = -E(z) - log nu,

        loss = mean softplus(E(z_pos) + log nu) + nu mean softplus(-E(z_noise) - log nu)
             = -E_q log sigmoid(G) - nu E_pb log(1 - sigmoid(G)),

    whose minimiser over all functions is sigmoid(G*) = q / (q + nu p_b), i.e. E* = -log(q / p_b) for
    every nu, with its constant too, so exp(-E*) p_b = q is normalised; a larger nu lowers the
    estimator's variance (Gutmann & Hyvarinen 2012). z_noise: always detached."""
    return nce_loss_of_energies(energy(z_pos), energy(z_noise.detach()), noise_ratio)


def nce_loss_of_energies(e_pos: torch.Tensor, e_noise: torch.Tensor, noise_ratio: float = 1.0) -> torch.Tensor:
    """`nce_loss` from the energies E(z_pos) and E(z_noise) already computed."""
    sp, log_nu = torch.nn.functional.softplus, math.log(noise_ratio)
    return sp(e_pos + log_nu).mean() + noise_ratio * sp(-e_noise - log_nu).mean()


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
