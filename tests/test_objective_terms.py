"""Every term of the objectives against closed forms, on a tiny model whose nets we can compute by hand.

Encoders are fixed heads (x-independent (loc, raw) per modality), decoders are bias-free linear maps
that record their inputs. The objectives draw their latents themselves; the tests read the drawn
latents back from the decoders' inputs and recompute the value from the written-out densities:

    Normal:   log N(x; m, s)  = -1/2 log(2 pi) - log s - (x - m)^2 / (2 s^2)
    Laplace:  log L(x; m, b)  = -log(2 b) - |x - m| / b
    KL(N(m, s) || N(0, 1))          = 1/2 (m^2 + s^2 - 1 - 2 log s)
    KL(L(m, b1) || L(0, b2))        = log(b2 / b1) + |m| / b2 + (b1 / b2) exp(-|m| / b1) - 1
    expert scales: Gaussian exp(raw / 2); Laplace softmax(raw) * D + 1e-6

so beta's place, each modality's rescale weight, the mean over mixture components of the KL, the
Laplace (MMVAE / MMVAE+) densities and the MMVAE+ prior on w are each pinned exactly (float64).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmvae_cli import distributions as D
from mmvae_cli.model import ModalitySpec, ModelConfig, MultimodalVAE, Prior
from mmvae_cli.objectives import _kl_to_prior, _stratified_log_weights, elbo, iwae

F64 = torch.float64
NAMES = ("a", "b")
DZ, DW = 2, 2
HEADS = {"a": ([0.3, -0.5], [0.4, -0.2]), "b": ([1.2, 0.7], [-0.6, 0.1])}  # q(z | x_m): loc, raw
PRIVATE_HEADS = {"a": ([0.2, -0.1], [0.5, -0.3]), "b": ([-0.4, 0.6], [-0.2, 0.7])}  # q(w_m | x_m)
W_Z = {"a": [1.5, -0.4], "b": [-0.8, 0.6]}  # decoder weights on z ...
W_W = {"a": [0.7, 0.2], "b": [1.2, -0.5]}  # ... and on w_m
SCALE = {"a": 0.6, "b": 0.9}  # likelihood scales (Gaussian); Laplace uses 0.75
RESCALE = {"a": 3.0, "b": 1.0}
BETA = 2.5
X = {"a": [0.9, -0.3, 1.4], "b": [-1.1, 0.5, 0.2]}  # B = 3
PRIOR_RAW = [0.8, -0.3]  # learned p(z) scale logits
W_PRIOR_RAW = {"a": [3.0, -3.0], "b": [-2.5, 2.5]}  # learned p(w_m) scale logits, far from 0
# fusion.Mixture.log_prob subtracts log S computed in float32 (log 2 off by 1.9e-9): beta times that
ATOL_MIX = 1e-8


class FixedHeads(nn.Module):
    """(loc, raw) whatever x is, repeated over the batch."""

    def __init__(self, loc, raw):
        super().__init__()
        self.loc = nn.Parameter(torch.tensor(loc, dtype=F64))
        self.raw = nn.Parameter(torch.tensor(raw, dtype=F64))

    def forward(self, x):
        B = x.shape[0]
        return self.loc.expand(B, -1), self.raw.expand(B, -1)


class RecordingLinear(nn.Module):
    """h -> h W^T (no bias); keeps every input h."""

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([weight], dtype=F64))
        self.inputs: list[torch.Tensor] = []

    def forward(self, h):
        self.inputs.append(h.detach().clone())
        return h @ self.weight.T


def tiny(
    fusion="moe",
    objective="elbo",
    family="gaussian",
    learn_prior=False,
    k=1,
    private=0,
    private_prior="reference",
    beta=BETA,
):
    lik, scale = ("laplace", {"a": 0.75, "b": 0.75}) if family == "laplace" else ("gaussian", SCALE)
    specs = [ModalitySpec(n, [1], lik, scale[n], RESCALE[n], "mlp") for n in NAMES]
    cfg = ModelConfig(
        specs,
        latent_dim=DZ,
        fusion=fusion,
        objective=objective,
        k=k,
        beta=beta,
        posterior=family,
        prior=family,
        learn_prior=learn_prior,
        hidden=4,
        private_dim=private,
        private_prior=private_prior,
    )
    model = MultimodalVAE(cfg).double()
    model.cpu_chunk = 0  # the recording decoders below see each objective's or generation's one whole call
    for n in NAMES:
        loc, raw = HEADS[n]
        if private:
            loc, raw = loc + PRIVATE_HEADS[n][0], raw + PRIVATE_HEADS[n][1]
        model.encoders[n] = FixedHeads(loc, raw)
        model.decoders[n] = RecordingLinear(W_Z[n] + (W_W[n] if private else []))
    with torch.no_grad():
        if learn_prior:
            model.prior.raw.copy_(torch.tensor(PRIOR_RAW, dtype=F64))
        for n in model.private_priors:
            model.private_priors[n].raw.copy_(torch.tensor(W_PRIOR_RAW[n], dtype=F64))
    return model


def data(n=None):
    if n is None:
        return {m: torch.tensor(X[m], dtype=F64)[:, None] for m in NAMES}
    return {m: torch.full((n, 1), X[m][0], dtype=F64) for m in NAMES}


def t(v):
    return torch.tensor(v, dtype=F64)


# --- the closed forms, written out ------------------------------------------------------------------
def normal_lp(x, m, s):
    return -0.5 * math.log(2 * math.pi) - torch.log(torch.as_tensor(s, dtype=F64)) - (x - m) ** 2 / (2 * s**2)


def laplace_lp(x, m, b):
    b = torch.as_tensor(b, dtype=F64)
    return -torch.log(2 * b) - (x - m).abs() / b


def gauss_scale(raw):
    return torch.exp(0.5 * t(raw))


def laplace_scale(raw):
    e = torch.exp(t(raw))
    return e / e.sum() * len(raw) + 1e-6


def kl_normal_std(m, s):
    return (0.5 * (m**2 + s**2 - 1 - 2 * torch.log(s))).sum(-1)


def kl_laplace_zero(m, b1, b2):
    return (torch.log(b2 / b1) + m.abs() / b2 + b1 / b2 * torch.exp(-m.abs() / b1) - 1).sum(-1)


def expert_scale(family, raw):
    return gauss_scale(raw) if family == "gaussian" else laplace_scale(raw)


def lp_fn(family):
    return normal_lp if family == "gaussian" else laplace_lp


def lik_by_hand(model, h, x):
    """sum_m rescale_m log p(x_m | h_m W_m^T), h: {m: decoder input (..., B, in)} -> (..., B)."""
    total = 0.0
    for spec in model.config.modalities:
        mean = (h[spec.name] * model.decoders[spec.name].weight[0].detach()).sum(-1)
        lp = normal_lp if spec.likelihood == "gaussian" else laplace_lp
        total = total + spec.rescale * lp(x[spec.name][:, 0], mean, spec.scale)
    return total


def log_q_mix_by_hand(z, family):
    """log 1/M sum_m q(z | x_m), z (..., D) -> (...)."""
    lp = lp_fn(family)
    per = [lp(z, t(HEADS[m][0]), expert_scale(family, HEADS[m][1])).sum(-1) for m in NAMES]
    return torch.logsumexp(torch.stack(per), 0) - math.log(len(NAMES))


def recorded(model, name, shape):
    h = model.decoders[name].inputs
    assert len(h) == 1, "one decoder call per objective evaluation"
    return h[0].reshape(*shape, -1)


# --- 2. rescale ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_log_likelihoods_weight_each_modality_by_its_rescale(family):
    model = tiny(family=family)
    x = data()
    outs = {"a": t([[0.1], [0.2], [-0.7]]), "b": t([[1.0], [-0.4], [0.3]])}
    lp = lp_fn(family)
    s = {m: spec.scale for m, spec in zip(NAMES, model.config.modalities)}
    expected = 3.0 * lp(x["a"][:, 0], outs["a"][:, 0], s["a"]) + 1.0 * lp(x["b"][:, 0], outs["b"][:, 0], s["b"])
    assert torch.allclose(model.log_likelihoods(outs, x), expected, rtol=1e-13, atol=0)


# --- 3. the mean over mixture components of the KL --------------------------------------------------
def test_kl_to_prior_is_the_mean_over_moe_components():
    model = tiny("moe")
    expected = sum(kl_normal_std(t(HEADS[m][0]), gauss_scale(HEADS[m][1])) for m in NAMES) / 2
    kls = [float(kl_normal_std(t(HEADS[m][0]), gauss_scale(HEADS[m][1]))) for m in NAMES]
    assert abs(kls[0] - kls[1]) > 0.1  # one component's KL would differ
    got = _kl_to_prior(model, model.posterior(data()))
    assert got.shape == (3,) and torch.allclose(got, expected.expand(3), rtol=1e-13, atol=0)


def test_kl_to_prior_is_the_mean_over_mopoe_subsets():
    """Subsets {a}, {b}, {a, b} (the full one with the N(0, 1) prior expert); precisions 1 / (s^2 + 1e-8)."""
    model = tiny("mopoe")
    prec = {m: 1 / (gauss_scale(HEADS[m][1]) ** 2 + 1e-8) for m in NAMES}

    def kl_of(members, with_prior):
        p = sum(prec[m] for m in members) + (1.0 if with_prior else 0.0)
        mu = sum(prec[m] * t(HEADS[m][0]) for m in members) / p
        return kl_normal_std(mu, p**-0.5)

    kls = [kl_of(["a"], False), kl_of(["b"], False), kl_of(["a", "b"], True)]
    got = _kl_to_prior(model, model.posterior(data()))
    assert torch.allclose(got, (sum(kls) / 3).expand(3), rtol=1e-12, atol=0)
    assert float(max(kls) - min(kls)) > 0.1


# --- 1 + 2 + 3. the ELBO, term by term ------------------------------------------------------------
@pytest.mark.parametrize("family,learn_prior", [("gaussian", False), ("laplace", True)])
def test_moe_elbo_is_rec_minus_beta_times_the_mean_kl(family, learn_prior):
    """L = 1/S sum_s sum_m rescale_m log p(x_m | z_s) - beta 1/S sum_s KL(q_s || p), z_s ~ q_s.
    ("laplace", learn_prior): the MMVAE recipe's Laplace experts and learned Laplace prior."""
    model = tiny("moe", family=family, learn_prior=learn_prior)
    x = data()
    torch.manual_seed(0)
    loss, stats = elbo(model, x)
    z = recorded(model, "a", (2, 3))  # (S, B, D): one draw per component
    assert torch.equal(z, recorded(model, "b", (2, 3)))
    rec = lik_by_hand(model, {"a": z, "b": z}, x).mean(0)  # (B,)
    if family == "gaussian":
        kls = [kl_normal_std(t(HEADS[m][0]), gauss_scale(HEADS[m][1])) for m in NAMES]
    else:
        kls = [kl_laplace_zero(t(HEADS[m][0]), laplace_scale(HEADS[m][1]), laplace_scale(PRIOR_RAW)) for m in NAMES]
    kl = sum(kls) / 2
    expected = -(rec - BETA * kl).mean()
    assert loss.item() == pytest.approx(float(expected), rel=1e-12, abs=1e-12)
    assert stats["kl"] == pytest.approx(float(kl), rel=1e-12)
    assert stats["rec"] == pytest.approx(float(-rec.mean()), rel=1e-12)


def test_mopoe_elbo_by_hand():
    model = tiny("mopoe")
    x = data()
    torch.manual_seed(1)
    loss, _ = elbo(model, x)
    z = recorded(model, "a", (3,))  # (B, D): chunked over the subsets
    rec = lik_by_hand(model, {"a": z, "b": z}, x)
    expected = -(rec - BETA * _kl_by_hand_mopoe()).mean()
    assert loss.item() == pytest.approx(float(expected), rel=1e-12)


def _kl_by_hand_mopoe():
    prec = {m: 1 / (gauss_scale(HEADS[m][1]) ** 2 + 1e-8) for m in NAMES}
    out = 0.0
    for members, with_prior in ((["a"], False), (["b"], False), (["a", "b"], True)):
        p = sum(prec[m] for m in members) + (1.0 if with_prior else 0.0)
        out = out + kl_normal_std(sum(prec[m] * t(HEADS[m][0]) for m in members) / p, p**-0.5)
    return out / 3


# --- 1 + 2 + 4. the stratified IWAE log weights ------------------------------------------------------
@pytest.mark.parametrize("family,learn_prior", [("gaussian", False), ("laplace", True)])
def test_stratified_iwae_log_weights_by_hand(family, learn_prior):
    """log w[s, k, b] = sum_m rescale_m log p(x_m | z) + beta (log p(z) - log 1/2 sum_m q(z | x_m)),
    z = z[s, k, b] ~ q(z | x_s); and iwae = -mean_{s, b} log 1/K sum_k w."""
    K = 3
    model = tiny("moe", "iwae", family=family, learn_prior=learn_prior, k=K)
    x = data()
    torch.manual_seed(2)
    lw, samples, _ = _stratified_log_weights(model, x, K)
    z = recorded(model, "a", (2, K, 3))
    assert torch.equal(z, samples[0][0].detach()) and torch.equal(z, recorded(model, "b", (2, K, 3)))
    prior_scale = (
        (laplace_scale(PRIOR_RAW) if learn_prior else laplace_scale([0.0, 0.0]))
        if family == "laplace"
        else torch.ones(DZ, dtype=F64)
    )
    log_pz = lp_fn(family)(z, 0.0, prior_scale).sum(-1)
    expected = lik_by_hand(model, {"a": z, "b": z}, x) + BETA * (log_pz - log_q_mix_by_hand(z, family))
    assert lw.shape == (2, K, 3)
    assert torch.allclose(lw.detach(), expected, rtol=0, atol=ATOL_MIX), (lw.detach() - expected).abs().max()
    # the objective on top of the weights
    for n in NAMES:
        model.decoders[n].inputs.clear()
    torch.manual_seed(2)
    loss, _ = iwae(model, x)
    bound = (torch.logsumexp(expected, dim=1) - math.log(K)).mean()
    assert loss.item() == pytest.approx(-float(bound), rel=0, abs=ATOL_MIX)


def test_laplace_expert_and_prior_scales_and_densities():
    """Laplace(loc, softmax(raw) * D + 1e-6) for experts and for a learned prior; fixed prior: 1 + 1e-6."""
    loc, raw = t([[0.3, -0.5, 1.0]]), t([[0.4, -0.2, 1.1]])
    q = D.expert("laplace", loc, raw)
    b = torch.exp(raw) / torch.exp(raw).sum() * 3 + 1e-6
    assert torch.allclose(q.scale, b, rtol=1e-14, atol=0)
    z = t([[0.9, -2.0, 0.4]])
    assert torch.allclose(q.log_prob(z), laplace_lp(z, loc, b), rtol=1e-13, atol=0)
    learned = Prior("laplace", 2, learn=True).double()
    assert isinstance(learned.raw, nn.Parameter)
    with torch.no_grad():
        learned.raw.copy_(t(PRIOR_RAW))
    assert torch.allclose(learned.dist().scale, laplace_scale(PRIOR_RAW), rtol=1e-14, atol=0)
    fixed = Prior("laplace", 2).double()
    assert torch.allclose(fixed.dist().scale, torch.full((2,), 1 + 1e-6, dtype=F64), rtol=1e-15, atol=0)


def test_kl_to_prior_laplace_against_the_closed_form():
    model = tiny("moe", family="laplace", learn_prior=True)
    got = _kl_to_prior(model, model.posterior(data()))
    kls = [kl_laplace_zero(t(HEADS[m][0]), laplace_scale(HEADS[m][1]), laplace_scale(PRIOR_RAW)) for m in NAMES]
    assert torch.allclose(got, (sum(kls) / 2).expand(3), rtol=1e-12, atol=0)


# --- MMVAE+: the prior on w -------------------------------------------------------------------------
@pytest.mark.parametrize("private_prior", ["reference", "learned"])
def test_mmvae_plus_log_weights_by_hand(private_prior):
    """Component s = modality r: z ~ q(z | x_r), w_r ~ q(w_r | x_r), w^(d) ~ p~(w_d) (learned) for d != r:
        log w = sum_d rescale_d log p(x_d | z, w^(d)) + beta (log p(z) + log p(w_r)
                                  - log 1/2 sum_m q(z | x_m) - log q(w_r | x_r)),
    log p(w_r) under Laplace(0, 1) ("reference") or the learned Laplace(0, softmax(raw_r) * D_w) ("learned")."""
    K = 2
    model = tiny("moe", "iwae", family="laplace", k=K, private=DW, private_prior=private_prior)
    x = data()
    torch.manual_seed(3)
    lw, samples, _ = _stratified_log_weights(model, x, K)
    h = {n: recorded(model, n, (2, K, 3)) for n in NAMES}
    z = h["a"][..., :DZ]
    assert torch.equal(z, h["b"][..., :DZ])
    expected = []
    for s, r in enumerate(NAMES):
        wr = h[r][s, ..., DZ:]  # the decoder of r reads w_r
        assert torch.equal(wr, samples[1 + s][0].detach())
        log_pw = laplace_lp(wr, 0.0, 1.0 if private_prior == "reference" else laplace_scale(W_PRIOR_RAW[r]))
        log_qw = laplace_lp(wr, t(PRIVATE_HEADS[r][0]), laplace_scale(PRIVATE_HEADS[r][1]))
        zs = z[s]
        reg = (
            laplace_lp(zs, 0.0, laplace_scale([0.0, 0.0])).sum(-1)
            + log_pw.sum(-1)
            - log_q_mix_by_hand(zs, "laplace")
            - log_qw.sum(-1)
        )
        expected.append(lik_by_hand(model, {n: h[n][s] for n in NAMES}, x) + BETA * reg)
    expected = torch.stack(expected)
    assert torch.allclose(lw.detach(), expected, rtol=0, atol=ATOL_MIX), (lw.detach() - expected).abs().max()
    # the two choices differ here: the learned scales are far from 1
    other = laplace_lp(
        h["a"][0, ..., DZ:], 0.0, laplace_scale(W_PRIOR_RAW["a"]) if private_prior == "reference" else 1.0
    ).sum(-1)
    this = laplace_lp(
        h["a"][0, ..., DZ:], 0.0, 1.0 if private_prior == "reference" else laplace_scale(W_PRIOR_RAW["a"])
    ).sum(-1)
    assert (other - this).abs().min() > 0.1


@pytest.mark.parametrize("private_prior", ["reference", "learned"])
def test_mmvae_plus_cross_terms_draw_w_from_the_learned_prior(private_prior):
    """Either way the training objective decodes d != r with w^(d) ~ p~(w_d): Laplace(0, b_d), std sqrt(2) b_d."""
    n = 20000
    model = tiny("moe", "iwae", family="laplace", k=1, private=DW, private_prior=private_prior)
    torch.manual_seed(4)
    with torch.no_grad():
        _stratified_log_weights(model, data(n), 1)
    w_b = recorded(model, "b", (2, 1, n))[0, 0, :, DZ:]  # component a decodes b: cross term
    w_a = recorded(model, "a", (2, 1, n))[1, 0, :, DZ:]  # component b decodes a
    for w, m in ((w_b, "b"), (w_a, "a")):
        expected = math.sqrt(2) * laplace_scale(W_PRIOR_RAW[m])
        assert torch.allclose(w.std(0), expected, rtol=0.05), (m, w.std(0), expected)


@pytest.mark.parametrize("private_prior", ["reference", "learned"])
def test_mmvae_plus_generation_draws_w_from_w_prior(private_prior):
    """Joint generation and cross-generation of a missing modality: w ~ Laplace(0, 1) ("reference", the
    reference code's fixed prior) or ~ the learned prior ("learned"): std sqrt(2) b per dimension."""
    n = 20000
    model = tiny("moe", "iwae", family="laplace", private=DW, private_prior=private_prior)
    torch.manual_seed(5)
    model.generate(model.sample_prior(n))  # decoder inputs [0]: joint generation
    model.cross_generate({"a": data(n)["a"]})  # decoder inputs [1]: from a's posterior
    gen = [(m, model.decoders[m].inputs[0][:, DZ:]) for m in NAMES]
    for m, w in gen + [("b", model.decoders["b"].inputs[1][:, DZ:])]:
        b = torch.ones(DW, dtype=F64) if private_prior == "reference" else laplace_scale(W_PRIOR_RAW[m])
        assert torch.allclose(w.std(0), math.sqrt(2) * b, rtol=0.05), (m, w.std(0), b)
        assert (w.mean(0).abs() < 5 * math.sqrt(2) * b / math.sqrt(n)).all()  # 5 standard errors
    # cross-generation reuses w_a ~ q(w_a | x_a) for the given modality
    w_a = model.decoders["a"].inputs[1][:, DZ:]
    assert torch.allclose(w_a.mean(0), t(PRIVATE_HEADS["a"][0]), atol=0.05)


def test_private_prior_config_defaults_and_old_manifests():
    spec = [ModalitySpec("a", [1]), ModalitySpec("b", [1])]
    assert ModelConfig(spec).private_prior == "reference"  # new models: the reference code's
    d = ModelConfig(spec, fusion="moe", objective="iwae", private_dim=2).to_dict()
    assert ModelConfig.from_dict(d).private_prior == "reference"  # recorded value round-trips
    del d["private_prior"]
    assert ModelConfig.from_dict(d).private_prior == "learned"  # manifests from before the field
    with pytest.raises(Exception, match="private prior"):
        MultimodalVAE(
            ModelConfig(
                spec, latent_dim=2, fusion="moe", objective="iwae", private_dim=2, private_prior="fixed", hidden=4
            )
        )


def test_old_bundle_loads_with_the_learned_private_prior(tmp_path):
    from mmvae_cli import bundle
    from mmvae_cli.model_io import load_model, save_bundle

    torch.manual_seed(0)
    cfg = ModelConfig(
        [ModalitySpec("a", [3]), ModalitySpec("b", [2])],
        latent_dim=2,
        fusion="moe",
        objective="iwae",
        posterior="laplace",
        prior="laplace",
        private_dim=2,
        hidden=4,
    )
    model = MultimodalVAE(cfg)
    old = cfg.to_dict()
    del old["private_prior"]
    save_bundle(tmp_path, model, bundle.new_manifest("mmvae", model=old, dataset={"name": "toy"}))
    loaded, _ = load_model(tmp_path)
    assert loaded.config.private_prior == "learned"
    with torch.no_grad():
        loaded.private_priors["a"].raw.copy_(torch.tensor([3.0, -3.0]))
    assert torch.equal(loaded.w_prior("a").scale, loaded.private_priors["a"].dist().scale)
