"""Every model's objective on a linear-Gaussian multimodal model whose log p(X) is exact.

    z ~ N(0, 1),  [w_m ~ N(0, c_w^2)],  x_m = a_m z [+ c_m w_m] + N(0, sigma_m^2)
    => X ~ N(0, a a^T + diag(c_m^2 c_w^2 + sigma_m^2))

Encoders are fixed (x-independent) Gaussians, so every bound can be compared with exact numbers.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as td
from torch import nn

from mmvae_cli.fusion import MoE, MoPoE, PoE
from mmvae_cli.model import ModalitySpec, ModelConfig, MultimodalVAE
from mmvae_cli.objectives import dreg, elbo, iwae, mvae

A = {"a": 1.5, "b": -0.8}  # loadings a_m
SIGMA = {"a": 0.6, "b": 0.9}  # likelihood scales sigma_m
X = {"a": 0.9, "b": -1.1}  # the observed tuple


class FixedExpert(nn.Module):
    """q(z | x) = N(loc, exp(raw)) whatever x is: (loc, raw) heads repeated over the batch."""

    def __init__(self, loc, raw):
        super().__init__()
        self.loc = nn.Parameter(torch.tensor(loc, dtype=torch.float64))
        self.raw = nn.Parameter(torch.tensor(raw, dtype=torch.float64))

    def forward(self, x):
        B = x.shape[0]
        return self.loc.expand(B, -1), self.raw.expand(B, -1)


def linear_model(fusion, objective, k=1, experts=None, private=0, c=None):
    names = list(A)
    specs = [ModalitySpec(n, [1], "gaussian", SIGMA[n], 1.0, "mlp") for n in names]
    cfg = ModelConfig(
        specs,
        latent_dim=1,
        fusion=fusion,
        objective=objective,
        k=k,
        beta=1.0,
        posterior="gaussian",
        prior="gaussian",
        private_dim=private,
    )
    model = MultimodalVAE(cfg).double()
    experts = experts or {"a": ([0.4], [-1.0]), "b": ([0.9], [-0.5])}
    for n in names:
        loc, raw = experts[n]
        model.encoders[n] = FixedExpert(loc + [0.1] * private, raw + [-0.7] * private)
        dec = nn.Linear(1 + private, 1, bias=False).double()
        with torch.no_grad():
            dec.weight[:] = torch.tensor([[A[n]] + ([c[n]] if private else [])], dtype=torch.float64)
        model.decoders[n] = dec
    return model


def batch(n, names=("a", "b")):
    return {m: torch.full((n, 1), X[m], dtype=torch.float64) for m in names}


def exact_log_px(names=("a", "b"), c=None):
    a = torch.tensor([A[n] for n in names], dtype=torch.float64)
    noise = torch.tensor([SIGMA[n] ** 2 + (c[n] ** 2 if c else 0.0) for n in names], dtype=torch.float64)
    cov = torch.outer(a, a) + torch.diag(noise)
    x = torch.tensor([X[n] for n in names], dtype=torch.float64)
    return float(td.MultivariateNormal(torch.zeros(len(names), dtype=torch.float64), cov).log_prob(x))


def value(objective, model, x):
    with torch.no_grad():
        loss, _ = objective(model, x)
    return -float(loss)


def test_poe_elbo_le_iwae_le_log_px_and_iwae_converges():
    torch.manual_seed(0)
    model = linear_model("poe", "iwae")
    log_px = exact_log_px()
    x = batch(4000)
    bound = value(elbo, model, x)
    values = []
    for k in (1, 8, 64, 1024):
        model.config.k = k
        values.append(value(iwae, model, batch(4000 if k < 1024 else 500)))
    assert abs(bound - values[0]) < 0.05  # one component, K = 1: the same ELBO
    assert values == sorted(values), values  # IWAE(K) grows with K
    assert values[-1] <= log_px + 1e-3
    assert bound < log_px - 0.05  # q is not the posterior: a real gap ...
    assert log_px - values[-1] < 0.01  # ... that K = 1024 closes


def test_moe_stratified_iwae_is_looser_and_converges_to_its_own_limit():
    """Shi et al.'s stratified IWAE tends to 1/S sum_s log E_{q_s}[p(z, X) / q_mix(z)] < log p(X)."""
    torch.manual_seed(1)
    experts = {"a": ([0.0], [-2.0]), "b": ([2.0], [-2.0])}  # two experts, not symmetric about the posterior
    model = linear_model("moe", "iwae", experts=experts)
    log_px = exact_log_px()
    z = torch.linspace(-12, 12, 200001, dtype=torch.float64)
    q = [td.Normal(torch.tensor(m[0][0], dtype=torch.float64), math.exp(0.5 * m[1][0])) for m in experts.values()]
    log_joint = td.Normal(0.0, 1.0).log_prob(z) + sum(
        td.Normal(A[n] * z, SIGMA[n]).log_prob(torch.tensor(X[n])) for n in A
    )
    log_qmix = torch.logsumexp(torch.stack([qs.log_prob(z) for qs in q]), 0) - math.log(2)
    limit = sum(math.log(torch.trapezoid(qs.log_prob(z).exp() * (log_joint - log_qmix).exp(), z)) for qs in q) / 2
    assert limit < log_px - 0.05  # the looser bound has a real gap
    bound = value(elbo, model, batch(8000))
    values = []
    for k in (1, 8, 64, 1024):
        model.config.k = k
        values.append(value(iwae, model, batch(4000 if k < 1024 else 500)))
    assert bound <= values[0] + 0.02  # mean-of-KL ELBO <= stratified ELBO
    assert values == sorted(values), values
    assert values[-1] <= limit + 0.01 and limit - values[-1] < 0.02


def test_mopoe_elbo_is_below_log_px():
    torch.manual_seed(2)
    model = linear_model("mopoe", "elbo")
    assert value(elbo, model, batch(8000)) < exact_log_px()


def test_mvae_objective_is_the_sum_of_the_named_elbos():
    model = linear_model("poe", "mvae")
    x = batch(2000)
    torch.manual_seed(3)
    total = value(mvae, model, x)
    torch.manual_seed(3)
    parts = [value(elbo, model, x), value(elbo, model, {"a": x["a"]}), value(elbo, model, {"b": x["b"]})]
    assert total == pytest.approx(sum(parts), rel=1e-12)
    # ... and the joint ELBO is the closed form of the linear-Gaussian ELBO (PoE with the prior expert)
    prec = 1 + math.exp(1.0) + math.exp(0.5)
    mu, var = (0.4 * math.exp(1.0) + 0.9 * math.exp(0.5)) / prec, 1 / prec
    exact = sum(
        -0.5 * math.log(2 * math.pi * SIGMA[n] ** 2) - ((X[n] - A[n] * mu) ** 2 + A[n] ** 2 * var) / (2 * SIGMA[n] ** 2)
        for n in A
    ) - 0.5 * (mu**2 + var - 1 - math.log(var))
    torch.manual_seed(4)
    assert value(elbo, model, batch(40000)) == pytest.approx(exact, abs=0.02)


def test_fusions_match_hand_computed_posteriors():
    # experts N(1, 1) and N(3, 1), prior N(0, 1)
    e = td.Normal(torch.tensor([[[1.0]], [[3.0]]]), torch.ones(2, 1, 1))
    p = td.Normal(torch.zeros(1), torch.ones(1))
    both = torch.tensor([True, True])
    poe = PoE(2).combine(e, both, p).components  # precision 3, mean 4/3
    assert poe.loc.item() == pytest.approx(4 / 3) and poe.scale.item() == pytest.approx(3**-0.5)
    z = torch.tensor([[2.0]])
    n = lambda z, m, v: math.exp(-((z - m) ** 2) / (2 * v)) / math.sqrt(2 * math.pi * v)  # noqa: E731
    assert MoE(2).combine(e, both, p).log_prob(z).exp().item() == pytest.approx(0.5 * n(2, 1, 1) + 0.5 * n(2, 3, 1))
    mopoe = MoPoE(2).combine(e, both, p)  # {1}, {2}, {1, 2} + prior expert
    expected = (n(2, 1, 1) + n(2, 3, 1) + n(2, 4 / 3, 1 / 3)) / 3
    assert mopoe.log_prob(z).exp().item() == pytest.approx(expected, rel=1e-5)


def _grads(objective, model, x, seed):
    torch.manual_seed(seed)
    model.zero_grad()
    loss, _ = objective(model, x)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()


def _encoder_grads(objective, model, x, seed):
    torch.manual_seed(seed)
    model.zero_grad()
    loss, _ = objective(model, x)
    loss.backward()
    return torch.cat([model.encoders[n].loc.grad for n in x] + [model.encoders[n].raw.grad for n in x]).clone()


def test_dreg_has_zero_encoder_gradient_at_the_exact_posterior():
    """With q(z | x_a) the exact posterior, log w is constant: DReG's encoder gradient is exactly 0
    for every sample, while the naive IWAE gradient is only 0 on average (its score term is noise)."""
    prec = 1 + A["a"] ** 2 / SIGMA["a"] ** 2
    mu = A["a"] * X["a"] / SIGMA["a"] ** 2 / prec
    model = linear_model("moe", "dreg", k=5, experts={"a": ([mu], [-math.log(prec)]), "b": ([0.0], [0.0])})
    x = batch(64, ("a",))
    g_dreg = _encoder_grads(dreg, model, x, 0)
    g_iwae = _encoder_grads(iwae, model, x, 0)
    assert g_dreg.abs().max() < 1e-10
    assert g_iwae.abs().max() > 1e-3


def _mean_and_se(objective, model, x, reps, encoder_only=True):
    f = _encoder_grads if encoder_only else _grads
    g = torch.stack([f(objective, model, x, 100 + r) for r in range(reps)])
    return g.mean(0), g.std(0) / math.sqrt(reps), g


@pytest.mark.parametrize("names,k", [(("a",), 6), (("a", "b"), 1)])
def test_dreg_is_unbiased_for_one_component_and_for_k1(names, k):
    """Single component: exactly Tucker et al.'s DReG; a mixture with K = 1: the dropped score term
    averages to E_{q_mix}[d log q_mix] = 0. Both cases: E[DReG gradient] = E[IWAE gradient], while
    the two estimators differ sample by sample."""
    model = linear_model("moe", "dreg", k=k)
    x = batch(2000, names)
    m_d, se_d, g_d = _mean_and_se(dreg, model, x, 40, encoder_only=False)
    m_i, se_i, g_i = _mean_and_se(iwae, model, x, 40, encoder_only=False)
    assert ((m_d - m_i).abs() < 4.5 * (se_d**2 + se_i**2).sqrt() + 1e-9).all(), (m_d, m_i, se_d, se_i)
    assert (g_d[0] - g_i[0]).abs().max() > 1e-3  # same noise, different estimates
    assert (m_i.abs() > 6 * se_i).any()  # the gradient itself is not ~0


def test_mmvae_plus_objective_is_a_bound_and_decodes_missing_w_from_its_prior():
    c = {"a": 0.7, "b": 1.2}
    model = linear_model("moe", "iwae", private=1, c=c)
    # p(w_m) = N(0, 1) exactly at initialisation (raw 0), so c_w = 1
    log_px = exact_log_px(c=c)
    torch.manual_seed(5)
    values = []
    for k in (1, 16, 256):
        model.config.k = k
        values.append(value(iwae, model, batch(3000 if k < 256 else 400)))
    assert values == sorted(values) and values[-1] < log_px, (values, log_px)
    # the learned modality priors get gradients from the objective
    model.zero_grad()
    iwae(model, batch(16))[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.private_priors.parameters())
    # prior-w rule: decoding b (missing) from a's z draws w_b ~ p(w_b); a's own w_a comes from q(w_a | x_a)
    with torch.no_grad():
        model.private_priors["b"].raw.fill_(math.log(9.0))  # learned p(w_b) = N(0, 3^2)
        for n in A:
            model.decoders[n].weight[:] = torch.tensor([[0.0, 1.0]], dtype=torch.float64)  # x_n = w_n
    torch.manual_seed(6)
    out = model.cross_generate(batch(20000, ("a",)))
    assert out["b"].std().item() == pytest.approx(1.0, rel=0.03)  # "reference": the fixed N(0, 1)
    model.config.private_prior = "learned"
    torch.manual_seed(6)
    out = model.cross_generate(batch(20000, ("a",)))
    assert out["b"].std().item() == pytest.approx(3.0, rel=0.03)  # "learned": the learned prior
    qa_scale = math.exp(0.5 * -0.7)  # q(w_a | x_a) = N(0.1, e^-0.7)
    assert out["a"].mean().item() == pytest.approx(0.1, abs=0.02)
    assert out["a"].std().item() == pytest.approx(qa_scale, rel=0.03)


def test_dreg_is_biased_for_the_stratified_mixture_with_k_above_1():
    """What the docs claim: with S = 2 components and K = 16 the dropped score term
    E_{q_s}[w~_k d/dphi log q_mix(z_k)] does not vanish, so E[DReG] != E[IWAE gradient]."""
    model = linear_model("moe", "dreg", k=16, experts={"a": ([0.0], [-2.0]), "b": ([2.0], [-2.0])})
    x = batch(2000)
    m_d, se_d, _ = _mean_and_se(dreg, model, x, 20)
    m_i, se_i, _ = _mean_and_se(iwae, model, x, 20)
    z = (m_d - m_i) / (se_d**2 + se_i**2).sqrt()
    assert z.abs().max() > 8, z
