"""Tests of mmvae_cli.priors.ebm against quantities computable in closed form.

Monte Carlo tolerances are 5 standard errors (two-sided false-alarm rate
< 1e-6 per checked quantity) plus, where it applies, the known systematic error
of the sampler (unadjusted Langevin has an O(step^2) bias in its stationary
law), which is computed exactly rather than guessed.
"""

import math

import pytest
import torch

from mmvae_cli.errors import EXIT_NUMERIC, BundleError, MMVAEError, NumericalError
from mmvae_cli.priors.ebm.langevin import (
    ebm_log_prob,
    ebm_prior_log_prob,
    langevin,
    standard_normal_log_prob,
    tweedie_denoise,
)
from mmvae_cli.priors.ebm.losses import maximum_likelihood_loss, score_matching_loss
from mmvae_cli.priors.ebm.net import EnergyConfig, EnergyNet

D64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    # The tensors here are tiny: one thread is faster than two and immune to
    # contention with other processes on a 2-core machine.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# A fixed 3-D Gaussian with full covariance (eigenvalues ~0.35 .. 1.9).
MU = torch.tensor([1.0, -2.0, 0.5], dtype=D64)
SIGMA = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.5, -0.3], [0.2, -0.3, 0.6]], dtype=D64)
PREC = torch.linalg.inv(SIGMA)


def gaussian_log_prob(mu, prec):
    def lp(z):
        d = z - mu
        return -0.5 * ((d @ prec) * d).sum(1)

    return lp


def ula_gaussian_cov(prec, step):
    """Exact stationary covariance of z <- z + (s^2/2) grad log N(mu, P^-1) + s eps.

    With h = s^2/2 and x = z - mu: x' = (I - hP) x + s eps, so C = (I-hP) C (I-hP) + 2h I,
    solved (P symmetric) by C = [P (I - (h/2) P)]^-1 = P^-1 (1 + O(h)).
    """
    h = step**2 / 2
    eye = torch.eye(prec.shape[0], dtype=prec.dtype)
    return torch.linalg.inv(prec @ (eye - 0.5 * h * prec))


def cov_se(cov, n):
    """Standard error of each entry of a sample covariance of n iid Gaussian draws."""
    d = torch.diagonal(cov)
    return torch.sqrt((d[:, None] * d[None, :] + cov**2) / n)


def sample_cov(x):
    xc = x - x.mean(0)
    return xc.T @ xc / (x.shape[0] - 1)


# --------------------------------------------------------------------------- 1. Gaussian target


def test_langevin_matches_gaussian_mean_and_covariance():
    torch.manual_seed(0)
    n, steps, s = 8000, 800, 0.25
    z = langevin(gaussian_log_prob(MU, PREC), torch.randn(n, 3, dtype=D64), steps, s).z
    # Burn-in: the slowest mode contracts by (1 - h*lambda_min(P)) per step;
    # after 800 steps the start's influence is < 1e-5, far below the MC error.
    h, lam_min = s * s / 2, torch.linalg.eigvalsh(PREC).min().item()
    assert (1 - h * lam_min) ** steps < 1e-5
    # ULA on a Gaussian keeps the mean exact; its covariance is C_h (closed form).
    c_h = ula_gaussian_cov(PREC, s)
    mean_se = torch.sqrt(torch.diagonal(c_h) / n)
    assert torch.all((z.mean(0) - MU).abs() <= 5 * mean_se)
    emp = sample_cov(z)
    se = cov_se(c_h, n)
    # (a) exact check of the discretised dynamics: only Monte Carlo error.
    assert torch.all((emp - c_h).abs() <= 5 * se)
    # (b) against the target Sigma: MC error + the O(s^2) bias |C_h - Sigma|
    #     (a few per cent here, so the test still pins the s^2/2 drift factor:
    #     a drift of s^2 instead would halve the covariance).
    bias = (c_h - SIGMA).abs()
    assert bias.max() < 0.05 * SIGMA.abs().max()
    assert torch.all((emp - SIGMA).abs() <= bias + 5 * se)


# --------------------------------------------------------------------------- 2. mixture proportions


W_MIX = (0.3, 0.7)
C_MIX = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])


def mixture_log_prob(z):
    logw = torch.tensor(W_MIX, dtype=z.dtype).log()
    c = C_MIX.to(z.dtype)
    return torch.logsumexp(logw - 0.5 * ((z[:, None, :] - c) ** 2).sum(-1), dim=1)


def ula_right_mass_1d(step, steps, start=-2.0, dx=0.03, lim=9.0):
    """P(x > 0) after `steps` ULA steps from x = start, by a fine-grid transition matrix.

    The target factorises as N(y; 0, 1) x [0.3 N(x; -2, 1) + 0.7 N(x; 2, 1)], and the
    Langevin update of x depends on x only, so the x-chain is a 1-D Markov chain whose
    law we propagate exactly (up to grid error, < 1e-5 at dx = 0.03).
    """
    x = torch.arange(-lim, lim + dx / 2, dx, dtype=D64)
    a = math.log(W_MIX[0]) - 0.5 * (x + 2) ** 2
    b = math.log(W_MIX[1]) - 0.5 * (x - 2) ** 2
    r = torch.sigmoid(a - b)  # responsibility of the left component
    grad = r * (-(x + 2)) + (1 - r) * (-(x - 2))
    mean = x + 0.5 * step**2 * grad
    k = torch.exp(-0.5 * ((x[None, :] - mean[:, None]) / step) ** 2)
    k = k / k.sum(1, keepdim=True)
    p = torch.zeros_like(x)
    p[torch.argmin((x - start).abs())] = 1.0
    p = p @ torch.linalg.matrix_power(k, steps)
    weight = torch.where(x > 1e-9, 1.0, torch.where(x.abs() < 1e-9, 0.5, 0.0)).to(D64)
    return float(p @ weight)


def test_langevin_mixture_visits_both_modes_in_proportion():
    torch.manual_seed(1)
    n, steps, s = 6000, 2000, 0.3
    # Every chain starts in the MINOR mode, so the 0.3/0.7 split can only come from
    # chains crossing the low-density region between the modes (barrier
    # log(0.3/0.135) = 0.8 nats; 2000 steps of h = s^2/2 = 0.045 are 90 time
    # units, ~10 relaxation times).
    z = langevin(mixture_log_prob, C_MIX[0].repeat(n, 1), steps, s).z
    right = (z[:, 0] > 0).double().mean().item()
    exact = W_MIX[0] * 0.5 * math.erfc(2 / math.sqrt(2)) + W_MIX[1] * 0.5 * math.erfc(-2 / math.sqrt(2))
    expected = ula_right_mass_1d(s, steps)  # includes discretisation bias and leftover burn-in
    systematic = abs(expected - exact)
    assert systematic < 0.005  # the sampler itself is accurate here (~0.0014)
    se = math.sqrt(exact * (1 - exact) / n)  # ~0.006
    assert abs(right - expected) <= 5 * se
    assert abs(right - exact) <= systematic + 5 * se
    # both modes are really populated (mass within 1.5 of each centre: ~0.2 and ~0.47)
    near = (torch.cdist(z, C_MIX) < 1.5).double().mean(0)
    assert near[0] > 0.15 and near[1] > 0.4


# --------------------------------------------------------------------------- 3. clamping


@pytest.mark.parametrize("mask_kind", ["bool", "float", "broadcast"])
def test_mask_clamps_observed_and_samples_the_conditional(mask_kind):
    torch.manual_seed(2)
    n, steps, s = 4000, 600, 0.25
    u, o = [0, 1], [2]  # free / observed coordinates
    z_o = MU[o] + torch.sqrt(SIGMA[o][:, o]) * torch.randn(n, 1, dtype=D64)  # a different z_o per chain
    z0 = torch.zeros(n, 3, dtype=D64)
    z0[:, o] = z_o
    free = torch.tensor([True, True, False])
    mask = {"bool": free.expand(n, 3), "float": free.double().expand(n, 3), "broadcast": free}[mask_kind]
    res = langevin(gaussian_log_prob(MU, PREC), z0, steps, s, mask=mask, every=200)
    z = res.z
    assert torch.equal(z[:, o], z_o)  # observed coordinates untouched, bit for bit
    assert len(res.chain) == steps // 200 + 1 and torch.equal(res.chain[0], z0)
    # Closed-form conditional: mean mu_u + S_uo S_oo^-1 (z_o - mu_o), cov S_uu - S_uo S_oo^-1 S_ou;
    # the conditional precision is P_uu, so ULA's stationary covariance is ula_gaussian_cov(P_uu).
    s_uo, s_oo = SIGMA[u][:, o], SIGMA[o][:, o]
    cond_mean = MU[u] + (z_o - MU[o]) @ torch.linalg.solve(s_oo, s_uo.T)
    cond_cov = SIGMA[u][:, u] - s_uo @ torch.linalg.solve(s_oo, s_uo.T)
    resid = z[:, u] - cond_mean
    c_h = ula_gaussian_cov(PREC[u][:, u], s)
    # burn-in: start offsets (< 4) shrink by (1 - h lambda_min(P_uu))^steps, negligible vs. MC error
    assert 4 * (1 - s * s / 2 * torch.linalg.eigvalsh(PREC[u][:, u]).min().item()) ** steps < 1e-3
    assert torch.all(resid.mean(0).abs() <= 5 * torch.sqrt(torch.diagonal(c_h) / n))
    emp = sample_cov(resid)
    se = cov_se(c_h, n)
    assert torch.all((emp - c_h).abs() <= 5 * se)
    assert torch.all((emp - cond_cov).abs() <= (c_h - cond_cov).abs() + 5 * se)


def test_tweedie_step_is_the_posterior_mean_of_the_clean_gaussian():
    """x ~ N(m, T) (T diagonal), y = x + N(0, sigma^2 I): p(y) = N(m, T + sigma^2 I), and Tweedie's
    formula E[x | y] = y + sigma^2 grad log p(y) = m + T (T + sigma^2 I)^-1 (y - m), exactly; the
    clamped coordinate keeps its value bit for bit and sigma 0 changes nothing."""
    torch.manual_seed(0)
    m, t, sigma = torch.tensor([1.0, -2.0, 0.5], dtype=D64), torch.tensor([0.3, 2.0, 1.0], dtype=D64), 0.4
    smoothed = t + sigma**2
    y = m + smoothed.sqrt() * torch.randn(50, 3, dtype=D64)
    log_p = lambda z: -0.5 * ((z - m) ** 2 / smoothed).sum(-1)  # noqa: E731
    out = tweedie_denoise(log_p, y, sigma)
    torch.testing.assert_close(out, m + t / smoothed * (y - m), rtol=1e-12, atol=1e-12)
    free = torch.tensor([True, False, True])
    out = tweedie_denoise(log_p, y, sigma, mask=free)
    assert torch.equal(out[:, 1], y[:, 1])
    torch.testing.assert_close(out[:, [0, 2]], (m + t / smoothed * (y - m))[:, [0, 2]], rtol=1e-12, atol=1e-12)
    assert torch.equal(tweedie_denoise(log_p, y, 0.0), y)
    with pytest.raises(ValueError, match="denoise"):
        tweedie_denoise(log_p, y, -0.1)
    with pytest.raises(NumericalError, match="smaller --denoise"):
        tweedie_denoise(lambda z: -1e12 * (z**2).sum(-1), y, sigma)


def test_energy_prior_run_ends_with_the_tweedie_step():
    """EnergyPrior.run(denoise=s) = Langevin, then the Tweedie step on the same chains (same seed)."""
    from mmvae_cli.priors.ebm import EnergyPrior

    ebm = EnergyPrior(EnergyConfig(dim=3, hidden=8, layers=2, activation="softplus"), density="gibbs").double()
    z0 = torch.randn(6, 3, dtype=D64)
    free = torch.tensor([True, True, False])
    torch.manual_seed(1)
    plain = ebm.run(z0, 4, 0.2, mask=free).z
    torch.manual_seed(1)
    den = ebm.run(z0, 4, 0.2, denoise=0.3, mask=free).z
    want = tweedie_denoise(ebm.log_density(), plain, 0.3, mask=free)
    assert torch.equal(den, want) and torch.equal(den[:, 2], z0[:, 2]) and not torch.equal(den, plain)


# --------------------------------------------------------------------------- 4. divergence


def test_diverging_chain_raises_numerical_error_with_advice():
    steep = gaussian_log_prob(torch.zeros(2), 100.0 * torch.eye(2))  # h * 100 = 50: |z| grows x49 per step
    with pytest.raises(NumericalError) as info:
        langevin(steep, torch.ones(8, 2), 50, 1.0)
    msg = str(info.value)
    assert "diverged at step" in msg and "of 50" in msg
    assert "smaller --step-size (now 1)" in msg
    assert info.value.code == EXIT_NUMERIC
    # overflow to Inf/NaN (max_abs disabled) is caught too, never returned
    with pytest.raises(NumericalError, match=r"(Inf|NaN) in z"):
        langevin(steep, torch.ones(8, 2), 200, 1.0, max_abs=float("inf"))
    # a NaN gradient (sqrt of a negative number) is caught at the first step
    with pytest.raises(NumericalError, match=r"step 1 of 5 \(NaN in z\).*now 0.1\)"):
        langevin(lambda z: -torch.sqrt(z[:, 0]), -torch.ones(4, 2), 5, 0.1)


# --------------------------------------------------------------------------- sampler plumbing


def test_langevin_under_no_grad_leaves_energy_parameters_alone():
    torch.manual_seed(3)
    net = EnergyNet(4, hidden=16, layers=3)
    lp = ebm_prior_log_prob(net, standard_normal_log_prob)
    z0 = torch.randn(5, 4, requires_grad=True)
    with torch.no_grad():
        res = langevin(lp, z0, 10, 0.1, clip_grad=1.0, every=3)
    assert all(p.grad is None for p in net.parameters())
    assert not res.z.requires_grad and res.z.shape == (5, 4)
    assert len(res.chain) == 4  # steps 0, 3, 6, 9
    with torch.inference_mode():
        res2 = langevin(lp, torch.randn(5, 4), 3, 0.1)
    assert torch.isfinite(res2.z).all()
    # persistent chains: continuing from z equals one longer run with the same noise
    torch.manual_seed(4)
    a = langevin(lp, z0, 6, 0.1).z
    torch.manual_seed(4)
    b = langevin(lp, langevin(lp, z0, 3, 0.1).z, 3, 0.1).z
    assert torch.allclose(a, b)


def test_clip_grad_bounds_the_per_sample_drift():
    z0 = torch.tensor([[10.0, 0.0], [0.1, 0.0]])
    z = langevin(gaussian_log_prob(torch.zeros(2), torch.eye(2)), z0, 1, 1.0, noise_scale=0.0, clip_grad=1.0).z
    # gradients (-10, 0) and (-0.1, 0); the first is clipped to norm 1, drift = s^2/2 * g
    assert torch.allclose(z, torch.tensor([[9.5, 0.0], [0.05, 0.0]]))


# --------------------------------------------------------------------------- energy net + config


def test_energy_net_shapes_and_config_roundtrip():
    net = EnergyNet(32)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 400), (400, 400), (400, 400), (400, 1)]
    assert net(torch.randn(7, 32)).shape == (7,)
    cfg = EnergyConfig(dim=6, hidden=20, layers=2, activation="softplus")
    again = EnergyNet.from_config(EnergyConfig.from_dict(cfg.to_dict()))
    assert again.config == cfg
    for act in ["gelu", "silu", "softplus", "leaky_relu", "elu"]:
        assert EnergyNet(3, 8, 2, act)(torch.randn(2, 3)).shape == (2,)
    with pytest.raises(MMVAEError, match="unknown energy activation"):
        EnergyNet(3, activation="tanhh")
    with pytest.raises(BundleError):
        EnergyConfig.from_dict({"dim": 3, "hiden": 4})
    with pytest.raises(BundleError):
        EnergyConfig.from_dict({"dim": -1})


def test_maximum_likelihood_loss_gradient_is_minus_eq10():
    # Linear energy E(z) = w.z: d(loss)/dw = mean z_pos - mean z_neg = -(E_q[df/dw] - E_p[df/dw]), f = -E.
    lin = torch.nn.Linear(3, 1, bias=False)

    def energy(z):
        return lin(z).squeeze(-1)

    z_pos, z_neg = torch.randn(10, 3), torch.randn(12, 3, requires_grad=True)
    maximum_likelihood_loss(energy, z_pos, z_neg).backward()
    assert torch.allclose(lin.weight.grad[0], z_pos.mean(0) - z_neg.detach().mean(0))
    assert z_neg.grad is None  # negatives are detached
    e_pos, e_neg = energy(z_pos), energy(z_neg)
    reg = maximum_likelihood_loss(energy, z_pos, z_neg, reg=0.5)
    want = e_pos.mean() - e_neg.mean() + 0.5 * (e_pos.pow(2).mean() + e_neg.pow(2).mean())
    assert torch.allclose(reg, want)


# --------------------------------------------------------------------------- 5. fitting the EBM prior


def test_ebm_prior_learns_two_modes():
    torch.manual_seed(5)
    centres, sd = torch.tensor([[-1.5, 0.0], [1.5, 0.0]]), 0.3

    def data(n):
        return centres[torch.randint(0, 2, (n,))] + sd * torch.randn(n, 2)

    net = EnergyNet(2, hidden=64, layers=3, activation="gelu")
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, betas=(0.5, 0.999))
    log_prior = ebm_prior_log_prob(net, standard_normal_log_prob)  # p0 = N(0, I)
    for _ in range(150):  # Algorithm 1, "learn alpha" step only
        z_neg = langevin(log_prior, torch.randn(256, 2), 20, 0.3).z  # short-run from p0
        loss = maximum_likelihood_loss(net, data(256), z_neg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Longer chains than in training (300 vs 20 steps) from p0.
    z = langevin(log_prior, torch.randn(2000, 2), 300, 0.3).z
    near = (torch.cdist(z, centres) < 2 * sd).float().mean(0)
    origin = (z.norm(dim=1) < 0.5).float().mean().item()
    # The data put 0.5 * (1 - e^-2) = 0.43 within 2 sd of each centre and ~0.0003
    # within 0.5 of the origin; p0 itself puts 0.12 there and 0.05 near each centre.
    assert near.min() > 0.25, near
    assert origin < 0.02, origin
    with torch.no_grad():
        lp = log_prior(torch.cat([centres, torch.zeros(1, 2)]))
    assert lp[:2].min() > lp[2] + 2.0  # centres clearly more likely than the origin


# --------------------------------------------------------------------------- 6-7. score matching


class Quadratic(torch.nn.Module):
    """E(z) = 0.5 z^T A z + b^T z with A = L L^T (L lower-triangular): p = N(-A^-1 b, A^-1)."""

    def __init__(self, d):
        super().__init__()
        self.l = torch.nn.Parameter(torch.eye(d, dtype=D64))
        self.b = torch.nn.Parameter(torch.zeros(d, dtype=D64))

    @property
    def a(self):
        lo = torch.tril(self.l)
        return lo @ lo.T

    def forward(self, z):
        return 0.5 * ((z @ self.a) * z).sum(1) + z @ self.b


def fit(energy, loss_fn, seed=None):
    """Full-batch L-BFGS; `seed` re-draws the same projections/noise at every evaluation,
    so stochastic objectives become a fixed (deterministic) function to minimise."""
    opt = torch.optim.LBFGS(
        energy.parameters(),
        lr=1,
        max_iter=500,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure():
        if seed is not None:
            torch.manual_seed(seed)
        opt.zero_grad()
        loss = loss_fn(energy)
        loss.backward()
        return loss

    opt.step(closure)
    return energy.a.detach()


def gaussian_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return MU + torch.randn(n, 3, dtype=D64, generator=g) @ torch.linalg.cholesky(SIGMA).T


def test_exact_score_matching_recovers_precision():
    n = 20000
    x = gaussian_data(n, 6)
    q = Quadratic(3)
    a = fit(q, lambda e: score_matching_loss(e, x, "exact"))
    # Closed form: the empirical objective -tr A + 0.5 tr(A^2 S) + 0.5 ||A m + b||^2
    # (S = 1/n sample covariance, m = sample mean) is minimised by A = S^-1, b = -A m.
    xc = x - x.mean(0)
    s_hat = xc.T @ xc / n
    p_hat = torch.linalg.inv(s_hat)
    assert torch.allclose(a, p_hat, atol=1e-5, rtol=1e-5)
    assert torch.allclose(q.b.detach(), -p_hat @ x.mean(0), atol=1e-5)
    # and against the true precision: sampling error of S^-1 is asymptotically
    # sd(P_ij) = sqrt((P_ii P_jj + P_ij^2) / n).
    assert torch.all((a - PREC).abs() <= 5 * cov_se(PREC, n))


def test_sliced_estimate_is_unbiased_for_the_exact_objective():
    torch.manual_seed(7)
    net = EnergyNet(4, hidden=32, layers=3, activation="softplus").double()
    with torch.no_grad():  # sharpen the random net so that tr(grad S) matters
        net.net[0].weight.mul_(3)
        net.net[2].weight.mul_(2)
        net.net[4].weight.mul_(10)
    z = 1.5 * torch.randn(32, 4, dtype=D64)
    exact = score_matching_loss(net, z, "exact").item()  # ~2.7 = tr term (~ -1.1) + 0.5||S||^2 (~3.8)
    for vr in (True, False):
        vals = torch.tensor(
            [score_matching_loss(net, z, "sliced", projections=20, variance_reduced=vr).item() for _ in range(200)]
        )
        se = vals.std().item() / math.sqrt(len(vals))  # ~0.008 (VR), ~0.017 (plain)
        assert abs(vals.mean().item() - exact) <= 5 * se, (vr, vals.mean().item(), exact, se)
    # Its parameter gradient is unbiased too. Two independent estimates g1, g2 give the
    # Monte Carlo error scale: rms ||g_i - g|| ~ ||g1 - g2|| / sqrt(2); the error norm over
    # ~1,200 parameters is concentrated, so 3x that scale is a safe bound for their mean.
    params = [p for name, p in net.named_parameters() if name != "net.4.bias"]  # the score ignores E's offset

    def flat(gs):
        return torch.cat([g.flatten() for g in gs])

    ge = flat(torch.autograd.grad(score_matching_loss(net, z, "exact"), params))
    g1, g2 = (
        flat(torch.autograd.grad(score_matching_loss(net, z, "sliced", projections=1000), params)) for _ in range(2)
    )
    err_scale = (g1 - g2).norm() / math.sqrt(2) / math.sqrt(2)
    assert ((g1 + g2) / 2 - ge).norm() <= 3 * err_scale
    assert err_scale < 0.02 * ge.norm()  # and the check is not vacuous


def test_exact_sliced_and_denoising_agree_on_gaussian_precision():
    n, d = 10000, 3
    x = gaussian_data(n, 8)
    xc = x - x.mean(0)
    s_hat = xc.T @ xc / n
    a_exact = fit(Quadratic(d), lambda e: score_matching_loss(e, x, "exact"))

    # Sliced (variance-reduced) with M fixed projections per sample: the optimum solves
    # 0.5 (S A + A S) = Vbar with Vbar = mean v v^T = I + W. In the eigenbasis of S (eigenvalues
    # l_i) the error is D_ii = W_ii / l_i, D_ij = 2 W_ij / (l_i + l_j); v is rotation invariant, so
    # W has var 2/(nM) on the diagonal and 1/(nM) off it, hence
    # E||A - S^-1||_F^2 = [sum_i 2 / l_i^2 + sum_{i!=j} 4 / (l_i + l_j)^2] / (nM).
    # Bound: 4 rms (a chi-square with >= 1 degree of freedom exceeds 16x its mean w.p. < 1e-4).
    m = 16
    a_sliced = fit(Quadratic(d), lambda e: score_matching_loss(e, x, "sliced", projections=m), seed=9)
    lam = torch.linalg.eigvalsh(s_hat)
    pair = 4 / (lam[:, None] + lam[None, :]) ** 2
    ms = ((2 / lam**2).sum() + pair.sum() - torch.diagonal(pair).sum()).item() / (n * m)
    assert torch.linalg.norm(a_sliced - a_exact) <= 4 * math.sqrt(ms)  # ~0.06; 5% of A would be ~0.15

    # Denoising: the optimum is the precision of the smoothed data, (S + sigma^2 I)^-1 = O(sigma^2)
    # away from S^-1. With M fixed noise draws it is a least-squares regression of eps/sigma on
    # z + sigma eps, residual covariance R = (I - sigma^2 C^-1) / sigma^2 (C = S + sigma^2 I):
    # coefficient sd <= sqrt(max R_ii * max (C^-1)_jj / (n M)).
    sigma, m = 0.2, 10
    a_dsm = fit(Quadratic(d), lambda e: score_matching_loss(e, x, "denoising", sigma=sigma, projections=m), seed=10)
    eye = torch.eye(d, dtype=D64)
    smoothed = torch.linalg.inv(torch.linalg.inv(a_exact) + sigma**2 * eye)
    c_inv = torch.linalg.inv(s_hat + sigma**2 * eye)
    resid = (eye - sigma**2 * c_inv) / sigma**2
    sd = math.sqrt(torch.diagonal(resid).max().item() * torch.diagonal(c_inv).max().item() / (n * m))
    assert (a_dsm - smoothed).abs().max() <= 5 * sd
    # the O(sigma^2) bias is real (~0.2 here): compared with A_exact directly, the same
    # tolerance would fail
    assert (a_dsm - a_exact).abs().max() > 5 * sd


def test_score_matching_validates_arguments():
    net = EnergyNet(2, 8, 2, "softplus")
    with pytest.raises(ValueError, match="unknown score-matching objective"):
        score_matching_loss(net, torch.randn(4, 2), "ratio")
    # a pure EB-MVAE log density is just -E
    z = torch.randn(3, 2)
    assert torch.allclose(ebm_log_prob(net)(z), -net(z))
