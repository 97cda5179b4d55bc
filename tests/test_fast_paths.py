"""The step's shortcuts are bit-identical to the plain formulas: MoPoE's chunked mixture sample and the
KL of Gaussian components to the fixed N(0, I) prior (values and gradients, torch.equal)."""

from __future__ import annotations

import torch
from torch import distributions as td

from mmvae_cli import distributions as D
from mmvae_cli.fusion import make_fusion
from mmvae_cli.model import Prior
from mmvae_cli.objectives import _kl_to_prior


class _Model:
    def __init__(self, learn: bool = False):
        self.prior = Prior("gaussian", 16, learn)


def _mixture(loc, raw):
    fusion = make_fusion("mopoe", 3)
    return fusion.combine(D.expert("gaussian", loc, raw), torch.ones(3, dtype=torch.bool), Prior("gaussian", 16).dist())


def _leaves():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(3, 10, 16, generator=g).requires_grad_()
    raw = (torch.randn(3, 10, 16, generator=g) - 1).requires_grad_()
    return loc, raw


def test_chunked_sample_bit_identical():
    results = []
    for fast in (True, False):
        loc, raw = _leaves()
        q = _mixture(loc, raw)
        torch.manual_seed(3)
        if fast:
            z = q.rsample_chunked()
        else:  # the plain way: every component's sample, then each item's pick
            S, B = q.n_components, 10
            which = torch.div(torch.arange(B) * S, B, rounding_mode="floor")
            z = q.components.rsample()[which, torch.arange(B)]
        z.pow(2).sum().backward()
        results.append((z.detach(), loc.grad, raw.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_kl_to_standard_normal_bit_identical():
    results = []
    for fast in (True, False):
        loc, raw = _leaves()
        q = _mixture(loc, raw)
        kl = (
            _kl_to_prior(_Model(), q) if fast else td.kl_divergence(q.components, _Model().prior.dist()).sum(-1).mean(0)
        )
        kl.sum().backward()
        results.append((kl.detach(), loc.grad, raw.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_kl_learned_prior_takes_the_general_formula():
    loc, raw = _leaves()
    q, model = _mixture(loc, raw), _Model(learn=True)
    with torch.no_grad():
        model.prior.raw.add_(0.3)
    want = td.kl_divergence(q.components, model.prior.dist()).sum(-1).mean(0)
    assert torch.equal(_kl_to_prior(model, q), want)
