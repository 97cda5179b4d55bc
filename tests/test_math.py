"""Exact checks of the core math: products of Gaussian experts, KL, subsets, fusions."""

import math

import pytest
import torch
from torch import distributions as td

from mmvae_cli.distributions import expert, kl, log_likelihood, product_of_gaussians
from mmvae_cli.fusion import MoE, MoPoE, PoE, enumerate_subsets, parse_subsets


def test_product_of_gaussians_matches_numerical_product_of_densities():
    torch.manual_seed(0)
    loc = torch.tensor([[[-1.0]], [[0.5]], [[2.0]]], dtype=torch.float64)  # (M=3, B=1, D=1)
    scale = torch.tensor([[[0.7]], [[1.3]], [[0.4]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    prior_loc, prior_scale = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    q = product_of_gaussians(loc, scale, mask, prior_loc, prior_scale, torch.tensor([False, True]))
    z = torch.linspace(-8, 8, 200001, dtype=torch.float64)
    for s in range(2):
        logp = sum(td.Normal(loc[m, 0, 0], scale[m, 0, 0]).log_prob(z) for m in range(3) if mask[s, m])
        if s == 1:
            logp = logp + td.Normal(0.0, 1.0).log_prob(z)
        p = torch.exp(logp - logp.max())
        p = p / torch.trapezoid(p, z)
        mean = torch.trapezoid(p * z, z)
        var = torch.trapezoid(p * (z - mean) ** 2, z)
        assert abs(q.loc[s, 0, 0] - mean) < 1e-6
        assert abs(q.scale[s, 0, 0] ** 2 - var) < 1e-6


def test_kl_closed_form_matches_monte_carlo():
    torch.manual_seed(1)
    for q, p in [
        (td.Normal(torch.tensor([0.3, -1.0]), torch.tensor([0.5, 2.0])), td.Normal(torch.zeros(2), torch.ones(2))),
        (td.Laplace(torch.tensor([0.3, -1.0]), torch.tensor([0.5, 2.0])), td.Laplace(torch.zeros(2), torch.ones(2))),
    ]:
        z = q.sample((400_000,))
        mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean()
        assert abs(kl(q, p) - mc) < 0.01, (kl(q, p), mc)


def test_gaussian_kl_formula():
    mu, logvar = torch.tensor([0.5, -0.2]), torch.tensor([0.1, -1.0])
    expected = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum()
    assert torch.allclose(kl(expert("gaussian", mu, logvar), td.Normal(0.0, 1.0)), expected)


def test_subset_enumeration():
    s = enumerate_subsets(5)
    assert s.shape == (31, 5)
    assert len({tuple(r.tolist()) for r in s}) == 31
    sizes = s.sum(1).tolist()
    assert sizes == sorted(sizes) and sizes[0] == 1 and sizes[-1] == 5
    assert [sizes.count(k) for k in range(1, 6)] == [math.comb(5, k) for k in range(1, 6)]
    names = ["a", "b", "c"]
    assert parse_subsets("unimodal+full", names).shape == (4, 3)
    assert parse_subsets("a,b;c", names).tolist() == [[False, False, True], [True, True, False]]


def _experts():
    torch.manual_seed(2)
    return td.Normal(torch.randn(3, 4, 2), torch.rand(3, 4, 2) + 0.3), td.Normal(torch.zeros(2), torch.ones(2))


def test_poe_includes_prior_expert():
    e, p = _experts()
    given = torch.tensor([True, False, True])
    q = PoE(3).combine(e, given, p)
    prec = e.scale[0] ** -2 + e.scale[2] ** -2 + 1
    assert q.n_components == 1
    assert torch.allclose(q.components.scale[0], prec**-0.5, atol=1e-6)
    assert torch.allclose(
        q.components.loc[0], (e.loc[0] * e.scale[0] ** -2 + e.loc[2] * e.scale[2] ** -2) / prec, atol=1e-6
    )


def test_moe_is_uniform_mixture_of_given_experts():
    e, p = _experts()
    q = MoE(3).combine(e, torch.tensor([True, True, False]), p)
    z = torch.randn(5, 4, 2)
    manual = torch.log(
        0.5 * e.log_prob(z[:, None]).sum(-1)[:, 0].exp() + 0.5 * e.log_prob(z[:, None]).sum(-1)[:, 1].exp()
    )
    assert torch.allclose(q.log_prob(z), manual, atol=1e-5)


def test_mopoe_components():
    e, p = _experts()
    f = MoPoE(3)
    q = f.combine(e, torch.ones(3, dtype=torch.bool), p)
    assert q.n_components == 7
    # the prior expert joins only the full subset (reference implementation)
    single = q.components.scale[0]  # subset {0}
    assert torch.allclose(single, e.scale[0])
    full = q.components.scale[6]
    assert torch.allclose(full, (e.scale.pow(-2).sum(0) + 1) ** -0.5, atol=1e-6)
    # a strict subset of inputs: that subset's own PoE, no prior expert
    q2 = f.combine(e, torch.tensor([True, False, True]), p)
    assert q2.n_components == 1
    assert torch.allclose(q2.components.scale[0], (e.scale[0] ** -2 + e.scale[2] ** -2) ** -0.5, atol=1e-6)


def test_chunked_sampling_assigns_contiguous_chunks():
    loc = torch.arange(3.0)[:, None, None].expand(3, 9, 1).contiguous() * 100
    from mmvae_cli.fusion import Mixture

    q = Mixture(td.Normal(loc, torch.full_like(loc, 1e-4)), torch.eye(3, dtype=torch.bool))
    z = q.rsample_chunked()
    assert torch.allclose(z[:, 0].round(), torch.tensor([0.0] * 3 + [100.0] * 3 + [200.0] * 3))


def test_laplace_likelihood_sums_over_pixels():
    out, x = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.75)
    ll = log_likelihood("laplace", out, x, 0.75)
    per_pixel = -math.log(2 * 0.75) - 1.0
    assert torch.allclose(ll, torch.full((2,), 48 * per_pixel))


def test_gaussian_expert_log_variance_is_softly_bounded():
    """Inside (-20, 20) the expert is N(loc, exp(raw)); far outside, the variance stays finite and the
    raw head still gets a gradient (a PoE expert that opted out can come back)."""
    raw = torch.tensor([-15.0, 0.0, 12.0, 200.0, -200.0], requires_grad=True)
    q = expert("gaussian", torch.zeros(5), raw)
    assert torch.allclose(q.scale[:3].log() * 2, raw[:3], atol=1e-4)
    assert torch.isfinite(q.scale).all() and float(q.scale[3].detach()) ** 2 == pytest.approx(math.exp(30), rel=1e-3)
    q.scale.sum().backward()
    assert torch.isfinite(raw.grad).all() and (raw.grad[:3] > 0).all()
