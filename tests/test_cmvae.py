"""CMVAE (Palumbo et al. 2024) as a composition: MMVAE+'s objective with the clustering prior
p(z) = sum_k pi_k p(z | c = k) (model.ClusterPrior), and the post-hoc selection of the number of clusters.

The objective's value against a hand computation on test_objective_terms' linear model (fixed expert heads,
bias-free linear decoders, float64), the drawn latents read back from the decoders' inputs:

    log w = sum_d rescale_d log p(x_d | z, w^(d)) + beta (log p(z) + log p(w_r) - log 1/2 sum_m q(z | x_m) - log q(w_r | x_r)),
    log p(z) = logsumexp_k (log softmax(logits)_k + sum_i log F(z_i; mu_ki, s_ki)),

the stratified IWAE 1/S sum_s log 1/K sum_k w and DReG's surrogate sum_k w~_k log w_k. Then the selection's
criterion and scores on numbers small enough to do by hand, and the model end to end from the CLI
(the other commands run in test_peer_models' parametrised end-to-end test).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers_cli import run, write_tiny_polymnist
from test_objective_terms import (
    ATOL_MIX,
    BETA,
    DW,
    DZ,
    NAMES,
    PRIVATE_HEADS,
    data,
    expert_scale,
    gauss_scale,
    laplace_scale,
    lik_by_hand,
    log_q_mix_by_hand,
    lp_fn,
    recorded,
    t,
    tiny,
)

from mmvae_cli.evaluate.clusters import assess, purity_and_nmi
from mmvae_cli.model import ClusterPrior
from mmvae_cli.objectives import cmvae

F64 = torch.float64
LOGITS = [0.5, -1.0, 0.2]  # pi = softmax(LOGITS), K = 3
MEANS = [[0.4, -0.6], [-1.0, 0.9], [1.3, 0.2]]
RAWS = [[0.3, -0.4], [-0.2, 0.5], [0.1, 0.0]]  # learned cluster scales (--learn-prior)


def cmvae_model(family, learn):
    model = tiny("moe", "cmvae", family=family, k=2, private=DW)
    model.prior = ClusterPrior(family, DZ, len(LOGITS), learn).double()
    with torch.no_grad():
        model.prior.logits.copy_(t(LOGITS))
        model.prior.loc.copy_(t(MEANS))
        if learn:
            model.prior.raw.copy_(t(RAWS))
    return model


def log_pz_by_hand(z, family, learn):
    lp, log_pi = lp_fn(family), torch.log_softmax(t(LOGITS), 0)
    terms = []
    for k in range(len(LOGITS)):
        scale = gauss_scale(RAWS[k]) if learn else (1.0 if family == "gaussian" else laplace_scale([0.0, 0.0]))
        terms.append(log_pi[k] + lp(z, t(MEANS[k]), scale).sum(-1))
    return torch.logsumexp(torch.stack(terms), 0)


@pytest.mark.parametrize("family, learn", [("laplace", False), ("gaussian", True)])
def test_cmvae_objective_is_mmvae_plus_with_the_clustering_prior_by_hand(family, learn):
    K = 2
    model = cmvae_model(family, learn)
    x = data()
    torch.manual_seed(3)
    loss, stats = cmvae(model, x)
    h = {n: recorded(model, n, (2, K, 3)) for n in NAMES}
    z = h["a"][..., :DZ]
    lp = lp_fn(family)
    lw = []
    for s, r in enumerate(NAMES):  # component s: z ~ q(z | x_r), w_r ~ q(w_r | x_r)
        wr, zs = h[r][s, ..., DZ:], z[s]
        log_pw = lp(wr, 0.0, 1.0).sum(-1)  # p(w_r): the fixed unit prior ("reference")
        log_qw = lp(wr, t(PRIVATE_HEADS[r][0]), expert_scale(family, PRIVATE_HEADS[r][1])).sum(-1)
        reg = log_pz_by_hand(zs, family, learn) + log_pw - log_q_mix_by_hand(zs, family) - log_qw
        lw.append(lik_by_hand(model, {n: h[n][s] for n in NAMES}, x) + BETA * reg)
    lw = torch.stack(lw)  # (S, K, B)
    value = (torch.logsumexp(lw, 1) - math.log(K)).mean()
    assert stats["iwae"] == pytest.approx(value.item(), rel=0, abs=ATOL_MIX)
    surrogate = (torch.softmax(lw, 1) * lw).sum(1).mean()  # DReG's
    assert loss.item() == pytest.approx(-surrogate.item(), rel=0, abs=ATOL_MIX)
    pi = torch.softmax(t(LOGITS), 0)
    assert stats["clusters_used"] == pytest.approx(torch.exp(-(pi * pi.log()).sum()).item(), rel=1e-6)
    # the same value with a unit Gaussian or Laplace prior would differ: the mixture is what enters
    assert (log_pz_by_hand(z, family, learn) - lp(z, 0.0, 1.0).sum(-1)).abs().min() > 1e-3


def test_the_explicit_cluster_expectation_is_log_p_z_and_pruned_clusters_are_never_drawn():
    """E_{q(c|z)}[log pi_c + log p(z | c) - log q(c | z)] with q(c | z) = p(c | z) is log p(z) exactly (the
    paper's form of the bound); a cluster at logit -inf has pi_c = 0: no sample, no responsibility."""
    prior = ClusterPrior("gaussian", 2, 3).double()
    with torch.no_grad():
        prior.logits.copy_(t(LOGITS))
        prior.loc.copy_(t(MEANS))
    z = torch.randn(5, 4, 2, dtype=F64)
    q = prior.responsibilities(z)
    explicit = (q * (prior.log_joint(z) - q.log())).sum(-1)
    assert torch.allclose(explicit, prior.log_prob(z), rtol=0, atol=1e-12)
    assert torch.allclose(prior.log_prob(z), prior.dist().log_prob(z), rtol=0, atol=1e-12)
    with torch.no_grad():
        prior.logits[[0, 2]] = -math.inf
        prior.loc.copy_(t([[-50.0, -50.0], [0.0, 0.0], [50.0, 50.0]]))
    torch.manual_seed(0)
    assert prior.sample(500).abs().max() < 10
    assert torch.equal(prior.responsibilities(z)[..., 1], torch.ones(5, 4, dtype=F64))


def test_selection_criterion_by_hand():
    """One tuple, one modality, K = 2: h = beta H(p(c | z)) / log 2 - log p(z) / D."""
    lpzc = t([[[-1.0, -3.0]]])  # log p(z | c) (N, M, K)
    a = assess(lpzc, t([0.0, 0.0]), torch.tensor([True, True]), beta=2.5, dim=4)
    r = torch.softmax(t([-1.0, -3.0]), 0)
    entropy = -(r * r.log()).sum() / math.log(2)
    log_p = torch.logsumexp(t([-1.0, -3.0]) + math.log(0.5), 0)
    assert a["criterion"] == pytest.approx((2.5 * entropy - log_p / 4).item(), rel=1e-12)
    assert a["votes"].tolist() == [0] and a["mass"].tolist() == [1, 0]


def test_purity_and_nmi():
    assert purity_and_nmi(torch.tensor([0, 0, 1, 1]), torch.tensor([5, 5, 7, 7])) == pytest.approx((1.0, 1.0))
    assert purity_and_nmi(torch.tensor([0, 0, 0, 0]), torch.tensor([1, 1, 2, 2])) == pytest.approx((0.5, 0.0))
    # 2 clusters x 2 classes, counts [[2, 1], [0, 1]]: I = sum p log(p / (pc py))
    p = t([[2, 1], [0, 1]]) / 4
    pc, py = p.sum(1), p.sum(0)
    mi = sum(p[i, j] * math.log(p[i, j] / (pc[i] * py[j])) for i in range(2) for j in range(2) if p[i, j] > 0)
    h = -(pc * pc.log()).sum() - (py * py.log()).sum()
    got = purity_and_nmi(torch.tensor([0, 0, 0, 1]), torch.tensor([3, 3, 4, 4]))
    assert got == pytest.approx((0.75, (2 * mi / h).item()))


# --- end to end from the CLI -------------------------------------------------------------------------
CPU = ["--device", "cpu"]


def test_cmvae_trains_and_its_clusters_are_selected_and_applied(tmp_path, capsys):
    root = write_tiny_polymnist(tmp_path / "data", n_train=16, n_test=8)
    out = tmp_path / "run"
    tiny_args = ["--data-root", root, "--epochs", "1", "--batch-size", "16", "--latent-dim", "4", *CPU]
    code, _, err = run(
        [
            "train",
            "polymnist",
            "--out",
            out,
            *tiny_args,
            "--objective",
            "cmvae",
            "--private-dim",
            "2",
            "--clusters",
            "4",
        ],
        capsys,
    )
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())["model"]
    assert (m["fusion"], m["objective"], m["extra"], m["private_dim"]) == ("moe", "cmvae", {"clusters": 4}, 2)
    select = ["eval", "clusters", out, "--data-root", root, "--split", "train", "--json", *CPU]
    code, text, err = run(select, capsys)
    assert code == 0, err
    res = json.loads(text)
    assert [s["clusters"] for s in res["steps"]] == [4, 3, 2]
    for s in res["steps"]:
        assert sum(s["votes"].values()) == 16
    best = min(res["steps"], key=lambda s: (s["criterion"], s["clusters"]))
    assert res["selected"] == best["clusters"] == len(res["kept"]) and not res["applied"]
    assert sum(res["weights"].values()) == pytest.approx(1.0)
    assert 0 <= res["purity"] <= 1 and 0 <= res["nmi"] <= 1
    before = (out / "model.safetensors").read_bytes()
    assert run(select, capsys)[1] == text  # seeded: the same draws, the same selection
    assert (out / "model.safetensors").read_bytes() == before  # without --apply the weights stay
    code, text, err = run([*select, "--apply"], capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["clusters"]["kept"] == res["kept"] and manifest["evaluations"][-1]["metric"] == "clusters"
    from mmvae_cli.model_io import load_model

    model, _ = load_model(out)
    pi = torch.softmax(model.prior.logits, 0)
    assert [int(k) for k in (pi > 0).nonzero()[:, 0]] == res["kept"]
    assert pi[res["kept"]].tolist() == pytest.approx(list(res["weights"].values()), rel=1e-5)
    code, text, err = run(select, capsys)  # the selection goes on from the clusters kept
    assert code == 0, err
    assert json.loads(text)["clusters_before"] == res["selected"]
    assert run(["sample", out, "-n", "4", "--out", tmp_path / "s.png", *CPU], capsys)[0] == 0
