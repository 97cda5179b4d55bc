"""Training objectives. Each maps (model, X) to (loss to minimise, stats dict of floats).

All are per-sample averages over the batch; log-likelihood terms carry each
modality's `rescale` weight, and beta multiplies the prior/posterior terms.
"""

from __future__ import annotations

from typing import Callable

import torch

from .distributions import kl, log_mean_exp
from .ebm import maximum_likelihood_loss
from .errors import MMVAEError


def _kl_to_prior(model, q) -> torch.Tensor:
    """Mean over mixture components of KL(q_s || p): (B,). By convexity of KL this upper-bounds
    KL(1/S sum_s q_s || p), so the ELBO below stays a lower bound (MoPoE paper, Lemma 1)."""
    return kl(q.components, model.prior.dist()).mean(0)


def _joint_ebm(model) -> bool:
    return model.ebm is not None and model.ebm.joint


def _prior_energy(model, z: torch.Tensor) -> torch.Tensor:
    """E_alpha(z) with the energy's parameters detached, z: (..., D) -> (...).

    With the energy-based prior p_alpha(z) = exp(-E(z)) p0(z) / Z(alpha) (Yuan et al. eq. 3),
        KL(q || p_alpha) = KL(q || p0) + E_q[E(z)] + log Z(alpha),
    and log Z(alpha) does not depend on the encoder or decoder: this is the term eq. 9 adds for
    them. alpha learns only from eq. 10 (`_ebm_learning`), hence the detached parameters."""
    params = {k: v.detach() for k, v in model.ebm.energy.named_parameters()}
    return torch.func.functional_call(model.ebm.energy, params, (z,))


def _ebm_learning(model, z_pos: torch.Tensor, loss, stats):
    """Algorithm 1's "learn alpha" step added to the loss: eq. 10 as
    mean E(z_pos) - mean E(z_neg), z_pos posterior samples (detached), z_neg short-run Langevin
    samples from p0 (eq. 11). Only while training with gradients on; touches only alpha."""
    if not (_joint_ebm(model) and model.training and torch.is_grad_enabled()):
        return loss, stats
    z_pos = z_pos.detach().reshape(-1, z_pos.shape[-1])
    z_neg = model.run_langevin(model.ebm_start(z_pos.shape[0])).z
    ml = maximum_likelihood_loss(model.ebm.energy, z_pos, z_neg)
    return loss + ml, {**stats, "ebm_ml": ml.item()}


def elbo(model, x):
    """Generalised multimodal ELBO (MoPoE paper eq. 5; MVAE/MMVAE as special cases):

        L = E_{z ~ q(z|X)} [ sum_m log p(x_m | z) ] - beta * 1/S sum_s KL(q_s(z|X_s) || p(z))

    The mixture expectation is stratified: with many components (MoPoE) the batch is split in
    contiguous chunks, one per component, as the reference; with few (MoE) every component
    reconstructs every item and the results are averaged.
    """
    q = model.posterior(x)
    S = q.n_components
    if S == 1 or model.config.fusion == "mopoe":
        z = q.rsample_chunked()                        # (B, D)
        rec = model.log_likelihoods(model.decode(z), x)
    else:
        z = q.rsample_each(1)                          # (S, 1, B, D)
        rec = model.log_likelihoods(model.decode(z), x).mean((0, 1))
    kld = _kl_to_prior(model, q)
    stats = {"kl": kld.mean().item()}                  # KL(q || p0)
    if _joint_ebm(model):                              # KL(q || p_alpha) up to log Z (see _prior_energy)
        e = _prior_energy(model, z)
        e = e if e.dim() == 1 else e.mean((0, 1))
        kld = kld + e
        stats["energy_q"] = e.mean().item()
    loss = -(rec - model.config.beta * kld).mean()
    return _ebm_learning(model, z, loss, {"loss": loss.item(), "rec": -rec.mean().item(), **stats})


def _log_weights(model, x, q, z, q_for_density):
    """log w = sum_m log p(x_m | z) + beta (log p(z) - log q(z | X)) for z: (S, K, B, D) -> (S, K, B).
    With a jointly trained energy, log p(z) = log p0(z) - E(z) (unnormalised: log Z(alpha) is constant
    for the encoder and decoder, so the reported bound is off by beta * log Z)."""
    lpx = model.log_likelihoods(model.decode(z), x)
    lpz = model.prior.dist().log_prob(z).sum(-1)
    if _joint_ebm(model):
        lpz = lpz - _prior_energy(model, z)
    lqz = q_for_density.log_prob(z)
    return lpx + model.config.beta * (lpz - lqz)


def iwae(model, x):
    """Stratified ("looser") IWAE of Shi et al. 2019, eq. 4:

        L = 1/S sum_s E_{z^{1:K} ~ q_s} [ log 1/K sum_k p(z^k, X) / q(z^k | X) ],

    q(z | X) the whole mixture. With K = 1 this is the stratified mixture ELBO."""
    q = model.posterior(x)
    z = q.rsample_each(model.config.k)
    lw = _log_weights(model, x, q, z, q)
    obj = log_mean_exp(lw, dim=1)                      # (S, B)
    loss = -obj.mean()
    return _ebm_learning(model, z, loss, {"loss": loss.item(), "iwae": obj.mean().item()})


def dreg(model, x):
    """Doubly-reparameterised gradient estimator (Tucker et al. 2019) of the stratified IWAE,
    as Shi et al. use it: same objective value as `iwae`; gradients

        decoder/prior:  sum_k  w~_k      d/dtheta log w_k
        encoder:        sum_k  w~_k^2    d/dz log w_k  dz/dphi     (q's parameters stopped in log q)

    with w~ the normalised importance weights. Implemented as the surrogate sum_k w~_k log w_k with
    log q evaluated at detached parameters and a hook that multiplies dz by w~ once more."""
    q = model.posterior(x)
    z = q.rsample_each(model.config.k)
    lw = _log_weights(model, x, q, z, q.detached())    # (S, K, B)
    with torch.no_grad():
        wt = torch.softmax(lw, dim=1)
        value = log_mean_exp(lw, dim=1).mean()
    if z.requires_grad:
        z.register_hook(lambda g: g * wt.unsqueeze(-1))
    surrogate = (wt * lw).sum(1).mean()
    loss = -surrogate
    return _ebm_learning(model, z, loss, {"loss": -value.item(), "iwae": value.item()})


def mvae(model, x):
    """MVAE's sub-sampled objective (Wu & Goodman 2018): the joint ELBO plus every unimodal ELBO
    (plus `extra["mvae_k"]` random subsets), each with its own PoE posterior and reconstructing
    only its own inputs:

        L = ELBO(X) + sum_m ELBO(x_m) [+ sum_{j<k} ELBO(X_{A_j})]

    This is a sum of ELBOs of different subsets, not a bound on log p(X)."""
    names = list(x)
    groups = [names] + [[n] for n in names] if len(names) > 1 else [names]
    k = int(model.config.extra.get("mvae_k", 0))
    if k and len(names) > 2:
        for _ in range(k):
            size = int(torch.randint(2, len(names), ()).item())
            pick = torch.randperm(len(names))[:size].sort().values
            groups.append([names[i] for i in pick])
    total_loss, rec_sum, kl_sum = 0.0, 0.0, 0.0
    z_joint = None
    for g in groups:
        xg = {n: x[n] for n in g}
        q = model.posterior(xg)
        z = q.rsample_chunked()
        z_joint = z if z_joint is None else z_joint
        rec = model.log_likelihoods(model.decode(z, g), xg)
        kld = _kl_to_prior(model, q)
        if _joint_ebm(model):
            kld = kld + _prior_energy(model, z)
        total_loss = total_loss - (rec - model.config.beta * kld).mean()
        rec_sum += -rec.mean().item()
        kl_sum += kld.mean().item()
    return _ebm_learning(model, z_joint, total_loss, {"loss": total_loss.item(), "rec": rec_sum, "kl": kl_sum})


OBJECTIVES: dict[str, Callable] = {"elbo": elbo, "iwae": iwae, "dreg": dreg, "mvae": mvae}


def get_objective(name: str) -> Callable:
    if name not in OBJECTIVES:
        raise MMVAEError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
