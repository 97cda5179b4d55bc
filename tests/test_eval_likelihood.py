"""Importance-sampled log-likelihoods against the exact value on a linear-Gaussian multimodal model.

    z ~ N(0, I_D),   x_m = A_m z + sigma * eps_m,   so  X = (x_1..x_M) ~ N(0, A A^T + sigma^2 I)

with A = [A_1; ...; A_M]. The model is a real MultimodalVAE (MoPoE fusion, Gaussian likelihoods with
training rescale weights != 1, which the estimator must ignore) whose decoders are the linear maps
A_m and whose experts are the exact single-modality posteriors p(z | x_m): the MoPoE mixture and the
subset PoEs are then close to, but not equal to, the true posterior p(z | X).
"""

import math

import torch
from torch import nn

from mmvae_cli.data.base import MultimodalData
from mmvae_cli.evaluate.likelihood import all_subsets, importance_log_likelihood, sample_mixture, subset_log_likelihoods
from mmvae_cli.fusion import Mixture
from mmvae_cli.model import ModalitySpec, ModelConfig, MultimodalVAE

D, DIMS, SIGMA = 2, (3, 4, 3), 0.5


class ExactExpert(nn.Module):
    """p(z | x_m) for x_m = A_m z + sigma eps with A_m^T A_m = diag(s^2): a diagonal Gaussian
    with precision 1 + s^2 / sigma^2 and mean A_m^T x_m / sigma^2 / precision."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        gram = a.T @ a
        assert torch.allclose(gram, torch.diag(torch.diag(gram)), atol=1e-5)
        self.a = a
        self.prec = 1 + torch.diag(gram) / SIGMA**2

    def forward(self, x):
        loc = (x @ self.a) / SIGMA**2 / self.prec
        return loc, (-torch.log(self.prec)).expand_as(loc)  # raw = log-variance


def _linear_gaussian_model(seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = ModelConfig(
        [
            ModalitySpec(f"m{i}", [d], "gaussian", SIGMA, rescale=3.0 if i == 0 else 1.0, arch="mlp")
            for i, d in enumerate(DIMS)
        ],
        latent_dim=D,
        fusion="mopoe",
        hidden=8,
    )
    model = MultimodalVAE(cfg).eval()
    mats = []
    for i, d in enumerate(DIMS):
        q, _ = torch.linalg.qr(torch.randn(d, D, generator=g))  # orthonormal columns
        a = q * torch.tensor([1.5, 0.6]) * (1 + 0.3 * i)  # A^T A diagonal
        mats.append(a)
        dec = nn.Linear(D, d, bias=False)
        dec.weight.data = a.clone()
        model.decoders[f"m{i}"] = dec
        model.encoders[f"m{i}"] = ExactExpert(a)
    return model, torch.cat(mats)


def _data(a, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, D, generator=g)
    x = z @ a.T + SIGMA * torch.randn(n, a.shape[0], generator=g)
    parts = dict(zip([f"m{i}" for i in range(len(DIMS))], x.split(list(DIMS), dim=1)))
    exact = torch.distributions.MultivariateNormal(
        torch.zeros(a.shape[0]), a @ a.T + SIGMA**2 * torch.eye(a.shape[0])
    ).log_prob(x)
    return MultimodalData("linear-gaussian", "test", parts, torch.zeros(n, dtype=torch.long)), exact


def test_estimate_converges_to_exact_log_likelihood_as_k_grows():
    model, a = _linear_gaussian_model()
    data, exact = _data(a, 400)
    subsets = [["m1"], ["m0", "m2"], ["m0", "m1", "m2"]]
    errors = {}
    for k in (1, 10, 100, 1000):
        torch.manual_seed(0)
        res = subset_log_likelihoods(model, data, "cpu", k=k, batch_size=200, subsets=subsets)
        assert res["k"] == k and res["n_test"] == 400 and res["unit"] == "nats"
        errors[k] = {s: res["per_subset"][s] - exact.mean().item() for s in res["per_subset"]}
    for s in errors[1]:
        errs = [abs(errors[k][s]) for k in (1, 10, 100, 1000)]
        assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:])), (s, errs)  # shrinks with K
        assert errors[1][s] < 0  # a lower bound at K = 1 (Jensen)
        assert errs[-1] < 0.02, (s, errs)
    # the joint entry is the full set; by_inputs averages subsets of equal size
    assert res["joint"] == res["per_subset"]["m0,m1,m2"]
    assert res["by_inputs"]["2"] == res["per_subset"]["m0,m2"]


def test_exact_posterior_gives_exact_value_with_one_sample():
    """With q = p(z | X) every importance weight equals p(X): the estimate is exact for any K."""
    model, a = _linear_gaussian_model()
    data, exact = _data(a, 50)
    x = data.batch(torch.arange(50))
    # exact joint posterior: precision I + A^T A / sigma^2 (full covariance, so one MVN per tuple)
    prec = torch.eye(D) + a.T @ a / SIGMA**2
    cov = torch.linalg.inv(prec)
    X = torch.cat([x[f"m{i}"] for i in range(len(DIMS))], 1)
    post = torch.distributions.MultivariateNormal(X @ a @ cov / SIGMA**2, cov)

    class Exact:  # the Mixture interface the estimator uses
        n_components = 1
        components = None

        def log_prob(self, z):
            return post.log_prob(z)

    from mmvae_cli.evaluate import likelihood as L
    from mmvae_cli.evaluate.likelihood import model_log_px_given_z

    orig = L.sample_mixture
    L.sample_mixture = lambda q, k: post.sample((k,))
    try:
        est = importance_log_likelihood(Exact(), model_log_px_given_z(model, x), model.prior.dist(), 1)
    finally:
        L.sample_mixture = orig
    torch.testing.assert_close(est, exact, atol=1e-4, rtol=1e-5)


def test_sample_mixture_picks_components_uniformly():
    locs = torch.tensor([-10.0, 0.0, 10.0])[:, None, None].expand(3, 2, 1)  # (S, B, D)
    q = Mixture(torch.distributions.Normal(locs, torch.full_like(locs, 1e-3)), torch.eye(3, dtype=torch.bool))
    torch.manual_seed(0)
    z = sample_mixture(q, 3000)  # (K, B, D)
    assert z.shape == (3000, 2, 1)
    counts = torch.stack([(z.round() == v).sum() for v in (-10, 0, 10)]).float() / z.numel()
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.03)


def test_all_subsets_order():
    assert all_subsets(["a", "b", "c"]) == [["a"], ["b"], ["c"], ["a", "b"], ["a", "c"], ["b", "c"], ["a", "b", "c"]]
    assert len(all_subsets([f"m{i}" for i in range(5)])) == 31 == 2**5 - 1
    assert math.comb(5, 2) == sum(1 for s in all_subsets([f"m{i}" for i in range(5)]) if len(s) == 2)
