"""The peer models as compositions (registry.OBJECTIVES): JMVAE, mmJSD, MVTCAE and DMVAE (CMVAE's
objective: test_cmvae.py; its end-to-end run is here with the others).

Each objective's value against a hand computation on test_objective_terms' linear-Gaussian model (fixed
expert heads, bias-free linear decoders with fixed Gaussian noise, float64): the drawn latents are read
back from the decoders' inputs and every density and KL is written out in closed form:

    KL(N(m1, s1) || N(m2, s2)) = log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2   (per dimension)
    PoE of N(m_j, s_j) with weights w_j:  s^-2 = sum_j w_j s_j^-2,  m = s^2 sum_j w_j s_j^-2 m_j

Then each model end to end from the CLI on tiny PolyMNIST-shaped data: train (with --missing-ratio
where its definition allows partial tuples), sample, cross-generate, eval coherence, fit-prior gmm.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers_cli import run, write_tiny_polymnist
from test_objective_terms import BETA, HEADS, NAMES, PRIVATE_HEADS, RESCALE, SCALE, W_W, W_Z, FixedHeads, X, tiny

from mmvae_cli import config
from mmvae_cli.objectives import dmvae, jmvae, mmjsd, mvtcae

F64 = torch.float64
JOINT_HEAD = ([0.5, 0.2], [-0.7, 0.3])  # JMVAE's q(z | X): loc, raw


def t(v):
    return torch.tensor(v, dtype=F64)


def data():
    return {m: t(X[m])[:, None] for m in NAMES}


def expert(loc, raw):
    return t(loc), torch.exp(0.5 * t(raw))  # Gaussian scale exp(raw / 2)


def kl_normal(m1, s1, m2, s2):
    return (torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5).sum(-1)


def poe(experts, weights=None):
    weights = weights or [1.0] * len(experts)
    precision = sum(w / s**2 for (_, s), w in zip(experts, weights))
    var = 1 / precision
    return var * sum(w * m / s**2 for (m, s), w in zip(experts, weights)), var.sqrt()


def rec_of(model, z_inputs):
    """sum_m rescale_m log N(x_m; h W_m, scale_m) for the decoders' recorded inputs h (one row per draw)."""
    total = 0.0
    for n in NAMES:
        h = z_inputs[n]
        mean = (h @ t(W_Z[n] + (W_W[n] if h.shape[-1] > 2 else []))[:, None])[:, 0]
        x = t(X[n]).repeat(h.shape[0] // len(X[n]))
        s = SCALE[n]
        total = total + RESCALE[n] * (-0.5 * math.log(2 * math.pi) - math.log(s) - (x - mean) ** 2 / (2 * s**2))
    return total


def inputs(model):
    return {n: model.decoders[n].inputs[-1] for n in NAMES}


STD = (t([0.0, 0.0]), t([1.0, 1.0]))


def test_mvtcae_objective_is_the_hand_computed_total_correlation_bound():
    model = tiny("poe", "mvtcae")
    torch.manual_seed(0)
    loss, stats = mvtcae(model, data())
    a, M = config.default_of(config.ModelSettings, "mvtcae_alpha"), 2
    ea, eb = expert(*HEADS["a"]), expert(*HEADS["b"])
    mu, sd = poe([ea, eb, STD])  # fusion poe: the prior expert joins
    rec = rec_of(model, inputs(model))
    kl0 = kl_normal(mu, sd, *STD)
    cond = kl_normal(mu, sd, *ea) + kl_normal(mu, sd, *eb)
    want = -((M - a) / M * rec - BETA * ((1 - a) * kl0 + a / M * cond)).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-7)
    assert stats["cond_kl"] == pytest.approx(cond.item(), rel=1e-7)


def jmvae_model():
    model = tiny("joint", "jmvae")
    model.joint_encoder.head = FixedHeads(*JOINT_HEAD)
    for n in NAMES:
        model.joint_encoder.encoders[n] = FixedHeads([0.0, 0.0], [0.0, 0.0])
    return model


def test_jmvae_objective_is_the_joint_elbo_minus_alpha_kls_to_the_unimodal_encoders():
    model = jmvae_model()
    torch.manual_seed(0)
    loss, stats = jmvae(model, data())
    alpha = config.default_of(config.ModelSettings, "jmvae_alpha")
    mu, sd = expert(*JOINT_HEAD)
    rec = rec_of(model, inputs(model))
    cond = kl_normal(mu, sd, *expert(*HEADS["a"])) + kl_normal(mu, sd, *expert(*HEADS["b"]))
    want = -(rec - BETA * kl_normal(mu, sd, *STD) - alpha * cond).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-7)
    # inference: all modalities -> the joint encoder; one -> its unimodal encoder
    q = model.posterior(data()).components
    assert torch.allclose(q.loc[0], mu.expand(3, -1)) and torch.allclose(q.scale[0], sd.expand(3, -1))
    q = model.posterior({"b": data()["b"]}).components
    assert torch.allclose(q.loc[0], t(HEADS["b"][0]).expand(3, -1))


def test_jmvae_subset_posterior_is_the_product_of_its_unimodal_experts_without_the_prior():
    from mmvae_cli.fusion import Joint

    loc, scale = torch.randn(3, 4, 2, dtype=F64), torch.rand(3, 4, 2, dtype=F64) + 0.5
    experts = torch.distributions.Normal(loc, scale)
    q = Joint(3).combine(experts, torch.tensor([True, False, True]), torch.distributions.Normal(0.0, 1.0))
    mu, sd = poe([(loc[0], scale[0]), (loc[2], scale[2])])
    assert torch.allclose(q.components.loc[0], mu) and torch.allclose(q.components.scale[0], sd)


def test_mmjsd_objective_is_the_moe_reconstruction_minus_the_js_divergence_to_the_dynamic_prior():
    model = tiny("moe", "mmjsd")
    torch.manual_seed(0)
    loss, stats = mmjsd(model, data())
    ea, eb = expert(*HEADS["a"]), expert(*HEADS["b"])
    pi = 1 / 3
    f = poe([ea, eb, STD], [pi, pi, pi])  # the weighted geometric mean of q(z | x_a), q(z | x_b), p(z)
    js = pi * sum(kl_normal(*q, *f) for q in (ea, eb, STD))
    rec = rec_of(model, inputs(model)).reshape(2, 3).mean(0)  # every expert's sample decodes every item
    want = -(rec - BETA * js).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-7)
    assert stats["js"] == pytest.approx(js.item(), rel=1e-7)


def test_dmvae_objective_is_the_joint_and_cross_modal_elbos_with_private_latents():
    model = tiny("poe", "dmvae", private=2)
    torch.manual_seed(0)
    loss, _ = dmvae(model, data())
    ea, eb = expert(*HEADS["a"]), expert(*HEADS["b"])
    wa, wb = expert(*PRIVATE_HEADS["a"]), expert(*PRIVATE_HEADS["b"])
    shared = [poe([ea, eb, STD]), ea, eb]  # the joint ELBO's q, then each modality's own
    h = inputs(model)  # (3 ELBOs x 3 items, [z, w_m])
    rec = rec_of(model, h).reshape(3, 3)
    kl_w = kl_normal(*wa, *STD) + kl_normal(*wb, *STD)  # p(w_m) = N(0, I)
    per = sum(rec[s] - BETA * kl_normal(*shared[s], *STD) - kl_w for s in range(3))
    assert loss.item() == pytest.approx(-per.mean().item(), rel=1e-7)
    assert torch.equal(h["a"][:, :2], h["b"][:, :2])  # one shared sample per ELBO reaches every decoder


def test_partial_tuples_drop_the_terms_of_absent_modalities():
    """MVTCAE with b absent from tuple 0: that tuple's q is PoE(a, prior) and its conditional KL only a's."""
    model = tiny("poe", "mvtcae")
    present = torch.tensor([[True, False], [True, True], [True, True]])
    torch.manual_seed(0)
    loss, stats = mvtcae(model, model.observed(data(), present), present)
    ea, eb = expert(*HEADS["a"]), expert(*HEADS["b"])
    mu1, sd1 = poe([ea, STD])
    mu2, sd2 = poe([ea, eb, STD])
    cond = torch.stack([kl_normal(mu1, sd1, *ea)] + [kl_normal(mu2, sd2, *ea) + kl_normal(mu2, sd2, *eb)] * 2)
    assert stats["cond_kl"] == pytest.approx(cond.mean().item(), rel=1e-7)


# --- end to end from the CLI -------------------------------------------------------------------------

MODELS = {  # the CLI scheme: --objective names the model; its fusion is filled in
    "mvtcae": ["--objective", "mvtcae", "--missing-ratio", "0.3"],
    "jmvae": ["--objective", "jmvae", "--joint-hidden", "8"],
    "mmjsd": ["--objective", "mmjsd", "--missing-ratio", "0.3"],
    "dmvae": ["--objective", "dmvae", "--private-dim", "2", "--missing-ratio", "0.3"],
    "cmvae": ["--objective", "cmvae", "--private-dim", "2", "--clusters", "3", "--missing-ratio", "0.3"],
}
FUSION = {"mvtcae": "poe", "jmvae": "joint", "mmjsd": "moe", "dmvae": "poe", "cmvae": "moe"}
CPU = ["--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peers")
    root = write_tiny_polymnist(tmp / "data", n_train=16, n_test=8)
    code, _, err = run(["classifier", "train", "polymnist", "--data-root", root, "--out", tmp / "clf", "--epochs", "1"])
    assert code == 0, err
    return tmp, root


@pytest.mark.parametrize("name", list(MODELS))
def test_each_peer_model_trains_samples_cross_generates_evaluates_and_takes_a_fitted_prior(tiny_root, name, capsys):
    tmp, root = tiny_root
    out = tmp / name
    tiny_args = ["--data-root", root, "--epochs", "1", "--batch-size", "16", "--latent-dim", "4", *CPU]
    code, _, err = run(["train", "polymnist", "--out", out, *tiny_args, *MODELS[name]], capsys)
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())["model"]
    assert (m["fusion"], m["objective"]) == (FUSION[name], name)
    assert run(["sample", out, "-n", "4", "--out", tmp / f"{name}-s.png", *CPU], capsys)[0] == 0
    cross = ["cross-generate", out, "--given", "m0,m2", "--out", tmp / f"{name}-c.png", "--data-root", root, *CPU]
    assert run(cross, capsys)[0] == 0
    coh = ["eval", "coherence", out, "--classifiers", tmp / "clf", "--n-joint", "10", "--limit", "6"]
    code, text, err = run([*coh, "--data-root", root, "--json", *CPU], capsys)
    assert code == 0, err
    assert 0.0 <= json.loads(text)["conditional"]["1"] <= 1.0
    code, _, err = run(["fit-prior", out, "--kind", "gmm", "--components", "2", "--data-root", root, *CPU], capsys)
    assert code == 0, err
    code, _, err = run(["sample", out, "--prior", "gmm", "-n", "4", "--out", tmp / f"{name}-g.png", *CPU], capsys)
    assert code == 0, err
