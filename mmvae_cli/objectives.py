"""Training objectives. Each maps (model, X) to (loss to minimise, stats dict of floats).

All are per-sample averages over the batch; log-likelihood terms carry each
modality's `rescale` weight, and beta multiplies the prior/posterior terms.

Partially observed batches: every objective also takes `present` (B, M) bool (None = complete
tuples; x's absent rows already zero-filled, see MultimodalVAE.observed). Each tuple's term is then
the objective of its observed modalities O_b alone, inside the batched computation: the fused
posterior runs over O_b (fusion.py), reconstruction sums over O_b, and every average over mixture
components is over the tuple's valid ones (`Mixture.component_mean`).

A prior trained with the VAE (`model.train_prior`, a jointly trained energy; priors/ebm/joint.py) gives
its terms: the prior is log p(z) = log p0(z) - w E(z) - log Z (`energy_term`, `energy_weight`), and its
own learning step joins the loss (`_prior_learning`). Without one, p0 alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import distributions as td

from . import registry
from .distributions import kl, log_mean_exp


def _kl_to_prior(model, q) -> torch.Tensor:
    """Mean over (valid) mixture components of KL(q_s || p): (B,). By convexity of KL this upper-bounds
    KL(1/S sum_s q_s || p), so the ELBO below stays a lower bound (MoPoE paper, Lemma 1).

    Gaussian components against the fixed N(0, I) prior take torch's Normal/Normal formula with the
    divisions by 1 and the subtraction of 0 left out: bit-identical values and gradients, three fewer
    kernels over (S, B, D) forward (and their backward)."""
    c, p = q.components, model.prior
    if type(c) is td.Normal and p.kind == "gaussian" and not isinstance(p.raw, torch.nn.Parameter):
        var_ratio = c.scale.pow(2)  # torch: (c.scale / 1).pow(2)
        t1 = c.loc.pow(2)  # torch: ((c.loc - 0) / 1).pow(2)
        return q.component_mean((0.5 * (var_ratio + t1 - 1 - var_ratio.log())).sum(-1))
    return q.component_mean(kl(q.components, model.prior.dist()))


def _prior_learning(model, z_pos: torch.Tensor, loss, stats, prior_terms: float = 1.0):
    """The training prior's own learning step added to the loss (a jointly trained energy: Algorithm 1's
    eq. 10 on the posterior samples z_pos, `priors.ebm.joint.learn`), only while training with gradients on."""
    tp = model.train_prior
    if tp is None or not (model.training and torch.is_grad_enabled()):
        return loss, stats
    return tp.learn(model, z_pos, loss, stats, prior_terms)


def _reconstruction(model, q, x, present=None):
    """(rec (B,) = E_{z ~ q} sum_m log p(x_m | z), z the drawn latents: (B, D), or (S, 1, B, D) when every
    component of the mixture q reconstructs every item)."""
    if q.n_components == 1 or model.fusion.spec.chunked:
        z = q.rsample_chunked()  # (B, D)
        return model.log_likelihoods(model.decode(z), x, present), z
    z = q.rsample_each(1)  # (S, 1, B, D)
    rec = model.log_likelihoods(model.decode(z), x, present)
    return (rec.mean((0, 1)) if q.valid is None else q.component_mean(rec.mean(1))), z


def elbo_terms(model, x, present=None, experts=None):
    """Per-tuple terms of `elbo`: (rec (B,) = E_q sum_m log p(x_m | z), kl (B,) = 1/S sum_s KL(q_s || p0),
    z the drawn latents ((B, D), or (S, 1, B, D) when every component reconstructs every item), q);
    `experts`: the unimodal experts when the caller has them (model.experts), else they are computed."""
    q = model.posterior(x, present) if experts is None else model.fuse(experts, x, present)
    rec, z = _reconstruction(model, q, x, present)
    return rec, _kl_to_prior(model, q), z, q


def _energy_kl(model, kld, z, q):
    """KL(q || p0) (B,) -> KL(q || p_f) = KL(q || p0) + w E_q[E] up to log Z (see LatentPrior.energy_term)
    with a training prior, and the stats: kl = KL(q || p0), energy_q = E_q[E]."""
    stats = {"kl": kld.mean().item()}
    tp = model.train_prior
    if tp is not None:
        e = tp.energy_term(z)
        if e.dim() > 1:
            e = e.mean((0, 1)) if q.valid is None else q.component_mean(e.mean(1))
        w = tp.energy_weight()
        if w:
            kld = kld + w * e
        stats["energy_q"] = e.mean().item()
    return kld, stats


def elbo(model, x, present=None):
    """Generalised multimodal ELBO (MoPoE paper eq. 5; MVAE/MMVAE as special cases):

        L = E_{z ~ q(z|X)} [ sum_m log p(x_m | z) ] - beta * 1/S sum_s KL(q_s(z|X_s) || p(z))

    The mixture expectation is stratified: with many components (MoPoE) the batch is split in
    contiguous chunks, one per component, as the reference; with few (MoE) every component
    reconstructs every item and the results are averaged.
    """
    rec, kld, z, q = elbo_terms(model, x, present)
    kld, stats = _energy_kl(model, kld, z, q)
    loss = -(rec - model.beta * kld).mean()
    return _prior_learning(model, q.valid_samples(z), loss, {"loss": loss.item(), "rec": -rec.mean().item(), **stats})


def _detached(d):
    """The same distribution with its parameters cut from the graph (DReG's stop-gradient on q)."""
    return type(d)(d.loc.detach(), d.scale.detach())


def _stratified_log_weights(model, x, k: int, stop_q: bool = False, present=None):
    """Log importance weights of the stratified IWAE for K samples from every mixture component.

    Without private latents, for z ~ q_s (S, K, B, D):
        log w = sum_m log p(x_m | z) + beta (log p(z) - log q(z | X)),   q(z | X) the whole mixture.
    With a training prior (a jointly trained energy), log p(z) = log p0(z) - w E(z), unnormalised: the
    reported bound is off by beta * log Z, a constant for the encoder and decoder.
    With private latents (MMVAE+; moe components s = modality r): z ~ q(z | x_r), w_r ~ q(w_r | x_r),
    and for every d != r, w^(d) ~ p~(w_d) (the learned modality prior, private_priors[d]), w^(r) = w_r:
        log w = sum_d log p(x_d | z, w^(d)) + beta (log p(z) + log p(w_r)
                                                    - log 1/M sum_m q(z | x_m) - log q(w_r | x_r)),
    with p(w_r) = model.w_prior(r): the fixed Laplace(0, I) (N(0, I) for a Gaussian prior) for
    private_prior "reference", as the reference code (its `lpu` is the fixed prior over [w, z]), or
    p~(w_r), the learned prior, for "learned". (REFERENCE.md's summary writes log p(z_r) for the
    reference's log p(w_r, z_r); log p(w_r) belongs to p(X, z, w_r), whose bound this is.)
    stop_q evaluates log q at detached parameters (DReG). With `present`, q(z | X) runs over each tuple's
    observed modalities and sum_d over its observed d (the cross terms of absent modalities drop out);
    the log weights of invalid components are returned too and must be masked (q.valid).
    Returns (log w (S, K, B), samples drawn by reparameterisation from q, for DReG's gradient hooks, q)."""
    experts, private = model.encode(x, present)
    q = model.fuse(experts, x, present)
    z = q.rsample_each(k)  # (S, K, B, Dz)
    q_density = q.detached() if stop_q else q
    reg = model.base_log_prob(z) - q_density.log_prob(z)  # log p(z): CMVAE's the clustering prior's
    tp = model.train_prior
    w = tp.energy_weight() if tp is not None else 0.0
    if w:  # log p_f(z) = log p0(z) - f E(z) - log Z_f
        reg = reg - w * tp.energy_term(z)
    samples, w = [(z, None)], None
    if model.config.private_dim:
        S, K, B = z.shape[:3]
        owner = [model.names[i] for i in q.mask.float().argmax(1).tolist()]  # component s -> modality r
        w, terms = {}, []
        for d in model.names:
            w[d] = model.private_priors[d].dist().rsample((S, K, B))  # w^(d) ~ p(w_d)
        for s, r in enumerate(owner):
            qw = private[r]
            wr = qw.rsample((k,))  # w_r ~ q(w_r | x_r): (K, B, Dw)
            samples.append((wr, s))
            qw_density = _detached(qw) if stop_q else qw
            terms.append(model.w_prior(r).log_prob(wr).sum(-1) - qw_density.log_prob(wr).sum(-1))
            w[r] = torch.cat([w[r][:s], wr[None], w[r][s + 1 :]])  # w^(r) = w_r
        reg = reg + torch.stack(terms)
    lpx = model.log_likelihoods(model.decode(z, None, w), x, present)
    return lpx + model.beta * reg, samples, q


def _iwae_stats(model, q, stats: dict) -> dict:
    """With a training prior, also KL(q || p0) (mean over the mixture's components, closed form) for
    the jointly trained energy's divergence test (priors/ebm/joint.DivergenceTest), in units of it."""
    if model.train_prior is not None:
        with torch.no_grad():
            stats["kl"] = _kl_to_prior(model, q).mean().item()
    return stats


def iwae(model, x, present=None):
    """Stratified ("looser") IWAE of Shi et al. 2019, eq. 4:

        L = 1/S sum_s E_{z^{1:K} ~ q_s} [ log 1/K sum_k p(z^k, X) / q(z^k | X) ],

    q(z | X) the whole mixture. With K = 1 this is the stratified mixture ELBO. With private
    latents it is the MMVAE+ objective (see _stratified_log_weights)."""
    lw, samples, q = _stratified_log_weights(model, x, model.config.k, present=present)
    z = samples[0][0]  # the shared latent's samples (S, K, B, D)
    obj = log_mean_exp(lw, dim=1)  # (S, B)
    if q.valid is not None:
        obj = q.component_mean(obj)  # (B,): 1/|V_b| sum over the tuple's valid components
    loss = -obj.mean()
    stats = _iwae_stats(model, q, {"loss": loss.item(), "iwae": obj.mean().item()})
    return _prior_learning(model, q.valid_samples(z), loss, stats)


def dreg(model, x, present=None):
    """Doubly-reparameterised gradient estimator (Tucker et al. 2019) of the stratified IWAE,
    as Shi et al. and Palumbo et al. use it: same objective value as `iwae`; gradients

        decoder/prior:  sum_k  w~_k      d/dtheta log w_k
        encoder:        sum_k  w~_k^2    d/dz log w_k  dz/dphi     (q's parameters stopped in log q)

    with w~ the normalised importance weights. Implemented as the surrogate sum_k w~_k log w_k with
    log q evaluated at detached parameters and a hook that multiplies dz by w~ once more.

    Unbiased for a single component (one modality, or PoE): it is then exactly Tucker et al.'s
    estimator, and it has zero variance when q is the exact posterior. For a mixture with
    S > 1 components and K > 1 the encoder gradient is biased: the dropped score term is
    E_{q_s}[w~_k d/dphi log q_mix(z_k)], and q_mix is not the distribution z_k was drawn from,
    so the identity behind DReG does not cancel it (for K = 1, w~ = 1 and the stratified
    average of that term is E_{q_mix}[d log q_mix] = 0, so K = 1 stays unbiased)."""
    lw, samples, q = _stratified_log_weights(model, x, model.config.k, stop_q=True, present=present)  # (S, K, B)
    with torch.no_grad():
        wt = torch.softmax(lw, dim=1)
        lme = log_mean_exp(lw, dim=1)
        value = lme.mean() if q.valid is None else q.component_mean(lme).mean()
    for z, s in samples:
        if z.requires_grad:
            # z: (S, K, B, D) for the shared latent; (K, B, Dw) for component s's private latent
            scale = (wt if s is None else wt[s]).unsqueeze(-1)
            z.register_hook(lambda g, scale=scale: g * scale)
    per = (wt * lw).sum(1)  # (S, B)
    surrogate = per.mean() if q.valid is None else q.component_mean(per).mean()
    loss = -surrogate
    stats = _iwae_stats(model, q, {"loss": -value.item(), "iwae": value.item()})
    return _prior_learning(model, q.valid_samples(samples[0][0]), loss, stats)


def mvae(model, x, present=None):
    """MVAE's sub-sampled objective (Wu & Goodman 2018): the joint ELBO plus every unimodal ELBO
    (plus `extra["mvae_k"]` random subsets), each with its own PoE posterior and reconstructing
    only its own inputs:

        L = ELBO(X) + sum_m ELBO(x_m) [+ sum_{j<k} ELBO(X_{A_j})]

    This is a sum of ELBOs of different subsets, not a bound on log p(X). With `present`, tuple b's
    terms are those of its observed set O_b alone: ELBO(X_{O_b}) + sum_{m in O_b} ELBO(x_m) (the
    unimodal terms only when |O_b| > 1, as with one modality), and a random subset's ELBO only where
    O_b holds all of it. The encoders run once for all groups (a group's PoE picks its rows of the
    unimodal experts): the same values as encoding each group's inputs again, with half the encoder passes.
    With a training prior (log p_f = log p0 - f E - log Z_f) every counted ELBO carries -beta log Z_f:
    the log Z gradient a learnable p0 gets (`_prior_learning`) is weighted by the number of counted
    ELBOs per tuple, averaged over the batch (len(groups) for complete tuples; an ELBO not counted adds
    no log Z either)."""
    names = list(x)
    experts = model.experts(x, present)
    groups = [names] + [[n] for n in names] if len(names) > 1 else [names]
    k = int(model.config.extra.get("mvae_k", 0))
    if k and len(names) > 2:
        for _ in range(k):
            size = int(torch.randint(2, len(names), ()).item())
            pick = torch.randperm(len(names))[:size].sort().values
            groups.append([names[i] for i in pick])
    total_loss, rec_sum, kl_sum = 0.0, 0.0, 0.0
    prior_terms = 0.0  # prior terms per tuple: the groups' ELBOs counted, averaged over the batch
    z_joint = None
    tp = model.train_prior
    w = tp.energy_weight() if tp is not None else 0.0
    if present is not None:
        present = present & model.given_mask(x).to(present.device)[None]
        several = present.sum(1) > 1
    for i, g in enumerate(groups):
        xg = {n: x[n] for n in g}
        q = model.fuse(experts, xg, present)
        z = q.rsample_chunked()
        z_joint = z if z_joint is None else z_joint
        rec = model.log_likelihoods(model.decode(z, g), xg, present)
        kld = _kl_to_prior(model, q)
        kld_e = kld + w * tp.energy_term(z) if w else kld
        term = rec - model.beta * kld_e
        if present is None or i == 0:
            kl_sum += kld.mean().item()  # KL(q || p0), as elbo reports it
            rec_sum += -rec.mean().item()
            total_loss = total_loss - term.mean()
            prior_terms += 1.0
            continue
        cols = [model.names.index(n) for n in g]
        counted = present[:, cols].all(1) & (several if len(g) == 1 else True)  # (B,)
        zero = torch.zeros((), dtype=term.dtype, device=term.device)
        total_loss = total_loss - torch.where(counted, term, zero).mean()
        kl_sum += torch.where(counted, kld, zero).mean().item()
        rec_sum += -torch.where(counted, rec, zero).mean().item()
        prior_terms += counted.float().mean().item()
    return _prior_learning(
        model, z_joint, total_loss, {"loss": total_loss.item(), "rec": rec_sum, "kl": kl_sum}, prior_terms
    )


# --- the peer models' objectives (registry.OBJECTIVES: each names its fusion and settings) ---------------


def _observed(model, x, present) -> torch.Tensor:
    """(M, B) bool: modality m is given (in x) and observed by tuple b."""
    g = model.given_mask(x).to(next(iter(x.values())).device)[:, None]
    return g if present is None else g & present.T.to(g.device)


def _kl_to_experts(model, q, experts, x, present=None) -> torch.Tensor:
    """sum_{m observed} KL(q(z | X) || q(z | x_m)) per tuple (B,), q a single component, experts (M[+1], B, D)."""
    M = len(model.names)
    c = q.components
    unimodal = type(experts)(experts.loc[:M], experts.scale[:M], validate_args=False)
    kls = kl(type(c)(c.loc[0], c.scale[0], validate_args=False), unimodal)  # (M, B)
    return torch.where(_observed(model, x, present), kls, torch.zeros((), dtype=kls.dtype, device=kls.device)).sum(0)


def mvtcae(model, x, present=None):
    """MVTCAE (Hwang et al. 2021): the total-correlation objective with the PoE posterior q(z | X) (fusion
    poe: the experts and the prior expert), weighted as the reference code (gr8joo/MVTCAE) and MultiVae:

        L = (M - a)/M E_{q(z|X)}[sum_m log p(x_m | z)]
            - beta [ (1 - a) KL(q(z | X) || p(z)) + a/M sum_m KL(q(z | X) || q(z | x_m)) ],

    a = `mvtcae_alpha`: (1 - a) KL is the joint VIB term, a/M sum_m the conditional VIB terms (the bound
    on the total correlation). A partial tuple: q(z | X_{O_b}), the sums over m in O_b, M the number of
    modalities (as MultiVae masks them). With a training prior, KL(q || p) gains w E_q[E] (`_energy_kl`)."""
    experts = model.experts(x, present)
    rec, kld, z, q = elbo_terms(model, x, present, experts)
    kld, stats = _energy_kl(model, kld, z, q)
    cond = _kl_to_experts(model, q, experts, x, present)
    a, M = float(model.setting("mvtcae_alpha")), len(x)
    loss = -((M - a) / M * rec - model.beta * ((1 - a) * kld + a / M * cond)).mean()
    stats = {"loss": loss.item(), "rec": -rec.mean().item(), **stats, "cond_kl": cond.mean().item()}
    return _prior_learning(model, q.valid_samples(z), loss, stats, 1 - a)


def jmvae(model, x, present=None):
    """JMVAE-KL (Suzuki et al. 2016): the joint encoder's ELBO plus the KLs that pull each unimodal
    encoder towards it (fusion joint: q(z | X) is the joint encoder's expert),

        L = E_{q(z|X)}[sum_m log p(x_m | z)] - beta KL(q(z | X) || p(z)) - alpha sum_m KL(q(z | X) || q(z | x_m)),

    alpha = `jmvae_alpha`; beta = 1 in the paper (the recipe). A --beta-warmup-epochs ramp scales both KL
    terms, as MultiVae's annealing. Complete tuples only (fusion joint refuses partial ones)."""
    experts = model.experts(x, present)
    rec, kld, z, q = elbo_terms(model, x, present, experts)
    kld, stats = _energy_kl(model, kld, z, q)
    cond = _kl_to_experts(model, q, experts, x, present)
    alpha = float(model.setting("jmvae_alpha")) * model.beta_scale
    loss = -(rec - model.beta * kld - alpha * cond).mean()
    stats = {"loss": loss.item(), "rec": -rec.mean().item(), **stats, "cond_kl": cond.mean().item()}
    return _prior_learning(model, q.valid_samples(z), loss, stats)


def mmjsd(model, x, present=None):
    """mmJSD (Sutter et al. 2020): the mixture-of-experts posterior q(z | X) = 1/M sum_m q(z | x_m) (fusion
    moe) and the multimodal Jensen-Shannon divergence to a dynamic prior in place of KL(q || p):

        L = E_{q(z|X)}[sum_m log p(x_m | z)] - beta JS_pi(q(z | x_1), ..., q(z | x_M), p(z)),
        JS_pi = sum_{j=0}^{M} pi_j KL(q_j || f),   q_0 = p(z),   pi_j = 1/(M + 1),
        f(z) ∝ prod_j q_j(z)^{pi_j} = N(mu_f, s_f^2),  s_f^-2 = sum_j pi_j s_j^-2,  mu_f = s_f^2 sum_j pi_j s_j^-2 mu_j,

    the dynamic prior f the weighted geometric mean (a PoE) of the unimodal posteriors and p0. The
    reconstruction is the stratified MoE expectation (every expert's sample decodes every modality). A
    partial tuple: the experts of O_b and p0, pi_j = 1/(|O_b| + 1). Gaussian posteriors and prior."""
    experts = model.experts(x, present)
    q = model.fuse(experts, x, present)
    rec, _ = _reconstruction(model, q, x, present)
    M, (_, B, _) = len(model.names), experts.loc.shape
    p = model.prior.dist()
    loc = torch.cat([experts.loc[:M], p.loc.expand(1, B, -1)])  # (M + 1, B, D): the experts, then p0
    scale = torch.cat([experts.scale[:M], p.scale.expand(1, B, -1)])
    weight = torch.cat([_observed(model, x, present).to(loc.dtype).expand(M, B), loc.new_ones(1, B)])
    pi = (weight / weight.sum(0))[:, :, None]  # (M + 1, B, 1)
    precision = pi / scale.pow(2)
    var_f = 1.0 / precision.sum(0)
    f = td.Normal(var_f * (precision * loc).sum(0), var_f.sqrt(), validate_args=False)
    js = (pi[:, :, 0] * kl(td.Normal(loc, scale, validate_args=False), f)).sum(0)  # (B,)
    loss = -(rec - model.beta * js).mean()
    return loss, {"loss": loss.item(), "rec": -rec.mean().item(), "js": js.mean().item()}


def dmvae(model, x, present=None):
    """DMVAE (Lee & Pavlovic 2021): a shared z and private w_m per modality; the joint ELBO (q(z | X) the PoE
    of the experts and the prior expert, fusion poe) plus one cross-modal ELBO per modality k (q(z | x_k)),
    each decoding every modality from its shared sample and that modality's private sample:

        L = sum_{s in {X, x_1, ..., x_M}} ( E_{z ~ q_s, w_m ~ q(w_m | x_m)} sum_m log p(x_m | z, w_m)
                                            - beta KL(q_s(z) || p(z)) - sum_m KL(q(w_m | x_m) || p(w_m)) ),

    p(w_m) = model.w_prior(m) (N(0, I)); each ELBO draws its own z and w, as MultiVae. A partial tuple: the
    PoE over O_b, the cross ELBOs of k in O_b, the sums over m in O_b."""
    experts, private = model.encode(x, present)
    q = model.fuse(experts, x, present)
    M, c = len(model.names), q.components
    shared = type(c)(torch.cat([c.loc, experts.loc[:M]]), torch.cat([c.scale, experts.scale[:M]]), validate_args=False)
    z = shared.rsample()  # (M + 1, B, D): the joint sample, then each modality's own
    w = {n: qw.rsample((M + 1,)) for n, qw in private.items()}
    rec = model.log_likelihoods(model.decode(z, None, w), x, present)  # (M + 1, B)
    observed = _observed(model, x, present).expand(M, z.shape[1])  # (M, B)
    zero = torch.zeros((), dtype=rec.dtype, device=rec.device)
    kl_w = sum(torch.where(observed[model.names.index(n)], kl(qw, model.w_prior(n)), zero) for n, qw in private.items())
    elbos = rec - model.beta * kl(shared, model.prior.dist()) - kl_w  # (M + 1, B)
    counted = torch.cat([torch.ones_like(observed[:1]), observed])  # the joint ELBO, the observed k's
    per = torch.where(counted, elbos, zero).sum(0)
    loss = -per.mean()
    return loss, {"loss": loss.item(), "rec": -torch.where(counted, rec, zero).sum(0).mean().item()}


def cmvae(model, x, present=None):
    """CMVAE (Palumbo et al. 2024): MMVAE+'s objective (fusion moe, private latents w_m; `dreg`, the DReG
    estimator of the stratified IWAE, `_stratified_log_weights`, as MultiVae's default loss) with the
    clustering prior p(z) = sum_k pi_k p(z | c = k) (model.ClusterPrior) in its log p(z) term:

        log w = sum_d log p(x_d | z, w^(d)) + beta (log p(z) + log p(w_r) - log 1/M sum_m q(z | x_m) - log q(w_r | x_r)).

    The paper writes the cluster variable out, E_{q(c|z)}[log pi_c + log p(z | c) - log q(c | z)] in place
    of log p(z), with q(c | z) = p(c | z) = pi_c p(z | c) / p(z) (MultiVae 1.0.3 likewise): each term of that
    expectation equals log p(z), so the two are the same value, and the same gradients (the expectation is
    stationary in q(c | z) there). Stats add `clusters_used`, exp H(pi), the effective number of clusters."""
    loss, stats = dreg(model, x, present)
    with torch.no_grad():
        log_pi = torch.log_softmax(model.prior.logits, -1)
        stats["clusters_used"] = torch.exp(-(log_pi.exp() * log_pi.nan_to_num(neginf=0.0)).sum()).item()
    return loss, stats


def get_objective(name: str) -> Callable:
    """The objective registered as `name` (registry.OBJECTIVES)."""
    return registry.load(registry.objective(name).code)
