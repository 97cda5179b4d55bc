"""Noise-conditional energies (ncsn): multi-scale denoising score matching and annealed Langevin
(Song & Ermon 2019) checked on known Gaussian energies, and the noise-conditional EnergyNet."""

import math

import pytest
import torch

from mmvae_cli.errors import MMVAEError
from mmvae_cli.priors.ebm import EnergyPrior
from mmvae_cli.priors.ebm.langevin import annealed_langevin, geometric_sigmas, langevin, level_steps, tweedie_denoise
from mmvae_cli.priors.ebm.losses import ncsn_loss
from mmvae_cli.priors.ebm.net import EnergyConfig, EnergyNet


def test_geometric_sigmas_and_level_steps():
    s = geometric_sigmas(4.0, 0.25, 5)
    assert s[0].item() == pytest.approx(4.0) and s[-1].item() == pytest.approx(0.25)
    ratios = s[:-1] / s[1:]
    assert torch.allclose(ratios, torch.full_like(ratios, 2.0))
    assert geometric_sigmas(3.0, 0.5, 1).tolist() == [0.5]
    with pytest.raises(ValueError):
        geometric_sigmas(0.1, 1.0, 3)
    assert level_steps(10, 4) == [2, 2, 3, 3] and sum(level_steps(7, 10)) == 7 and level_steps(0, 3) == [0, 0, 0]


def test_ncsn_loss_minimiser_is_the_smoothed_score_of_a_gaussian():
    """1-D data N(0, c^2); energy E(u, sigma_l) = a_l u^2 / 2 per level. The loss is quadratic in a, so one
    Newton step from any a lands on its minimiser, which must be the smoothed score's 1 / (c^2 + sigma_l^2)."""
    torch.manual_seed(0)
    c = 0.5
    sigmas = torch.tensor([2.0, 0.7, 0.1])
    n = 300_000
    u = c * torch.randn(n, 1)
    levels = torch.arange(n) % 3
    a = torch.ones(3, requires_grad=True)

    def energy_u(x, sig):
        lvl = (sig[:, None] == sigmas[None]).float().argmax(1)
        return 0.5 * a[lvl] * x.squeeze(1) ** 2

    torch.manual_seed(1)
    loss = ncsn_loss(energy_u, u, sigmas, levels)
    (g,) = torch.autograd.grad(loss, a, create_graph=True)
    h = torch.stack([torch.autograd.grad(g[i], a, retain_graph=True)[0] for i in range(3)])
    a_star = a.detach() - torch.linalg.solve(h.detach(), g.detach())
    want = 1.0 / (c**2 + sigmas**2)
    assert torch.allclose(a_star, want, rtol=0.02), (a_star, want)


def _mixture_log_prob(z, sigma, centres, std):
    """log of the two-Gaussian mixture smoothed by N(0, sigma^2 I) (exact; equal weights)."""
    var = std**2 + sigma**2
    d = ((z[:, None, :] - centres[None]) ** 2).sum(-1)  # (B, K)
    return torch.logsumexp(-0.5 * d / var, 1) - z.shape[1] * 0.5 * math.log(2 * math.pi * var) - math.log(2)


def test_annealed_langevin_mixes_between_narrow_modes_where_plain_langevin_does_not():
    torch.manual_seed(0)
    centres = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])
    std = 0.1
    n = 2000
    z0 = centres[0] + std * torch.randn(n, 2)  # every chain starts in the left mode
    sigmas = geometric_sigmas(6.0, std, 10)
    res = annealed_langevin(lambda z, s: _mixture_log_prob(z, s, centres, std), z0, sigmas, 1000, 0.5)
    right = (res.z[:, 0] > 0).float().mean().item()
    assert 0.45 < right < 0.55, right
    near = ((res.z[:, None] - centres[None]).norm(dim=-1).min(1).values < 4 * std).float().mean().item()
    assert near > 0.95  # and the samples sit in the modes, not between them
    plain = langevin(lambda z: _mixture_log_prob(z, 0.0, centres, std), z0, 1000, 0.05).z
    assert (plain[:, 0] > 0).float().mean().item() == 0.0


def test_annealed_langevin_clamps_and_records_the_chain():
    torch.manual_seed(0)
    z0 = torch.randn(5, 3)
    mask = torch.tensor([True, False, True])
    res = annealed_langevin(
        lambda z, s: -0.5 * z.pow(2).sum(1) / (1 + s**2), z0, [2.0, 1.0], 6, 0.3, mask=mask, every=1
    )
    assert torch.equal(res.z[:, 1], z0[:, 1]) and not torch.equal(res.z[:, 0], z0[:, 0])
    assert len(res.chain) == 7 and torch.equal(res.chain[0], z0)
    assert torch.equal(annealed_langevin(lambda z, s: -z.pow(2).sum(1), z0, [1.0], 0, 0.3).z, z0)


def test_noise_conditional_energy_net_and_its_latent_ebm():
    torch.manual_seed(0)
    net = EnergyNet(4, hidden=8, layers=2, activation="softplus", noise_levels=3, standardise=True)
    assert set(net.state_dict()) >= {"sigmas", "shift", "scale"}
    net.sigmas.copy_(geometric_sigmas(1.0, 0.1, 3))
    net.shift.copy_(torch.tensor([1.0, -1.0, 0.0, 2.0]))
    net.scale.copy_(torch.tensor([2.0, 0.5, 1.0, 3.0]))
    z = torch.randn(6, 4)
    assert net(z).shape == (6,)
    assert torch.allclose(net(z), net(z, 0.1)) and not torch.allclose(net(z), net(z, 1.0))
    assert torch.allclose(net.from_u(net.to_u(z)), z, atol=1e-6)
    cfg = net.config.to_dict()
    assert cfg["noise_levels"] == 3 and cfg["standardise"] is True
    assert "noise_levels" not in EnergyConfig(dim=4).to_dict()  # plain energies' manifests unchanged
    with pytest.raises(MMVAEError):
        EnergyConfig(dim=4, noise_levels=-1)
    ebm = EnergyPrior(cfg, "gibbs")
    ebm.load_state_dict(EnergyPrior(cfg, "gibbs").state_dict())
    ebm.energy.load_state_dict(net.state_dict())
    mask = torch.tensor([False, True, True, False])
    res = ebm.run(z, 8, 0.3, mask=mask)
    assert torch.equal(res.z[:, 0], z[:, 0]) and torch.equal(res.z[:, 3], z[:, 3])
    assert not torch.equal(res.z[:, 1], z[:, 1])
    # --denoise on a noise-conditional energy: the Tweedie step in u on the smallest level's energy
    torch.manual_seed(3)
    plain = ebm.run(z, 8, 0.3, mask=mask).z
    torch.manual_seed(3)
    den = ebm.run(z, 8, 0.3, mask=mask, denoise=0.1).z
    want = net.from_u(tweedie_denoise(lambda u: -net.energy_u(u, 0.1), net.to_u(plain), 0.1, mask))
    assert torch.equal(den[:, 0], z[:, 0]) and torch.equal(den[:, 3], z[:, 3])
    torch.testing.assert_close(den[:, 1:3], want[:, 1:3])
    assert not torch.allclose(den[:, 1:3], plain[:, 1:3])
    # the step alone (as benchmarks/ebmvae_diagnosis.py calls it): clamped coordinates exactly as given
    alone = ebm.denoise(plain, 0.1, mask)
    assert torch.equal(alone[:, 0], plain[:, 0]) and torch.equal(alone[:, 3], plain[:, 3])
    torch.testing.assert_close(alone, den)
    # any other level is refused (issue 25f): the step would use the smallest level's score at another
    # noise; checked before the chains run, and on the step alone
    for sigma in (0.3, 0.05):
        with pytest.raises(MMVAEError, match="smallest noise level, here 0.1"):
            ebm.run(z, 8, 0.3, mask=mask, denoise=sigma)
        with pytest.raises(MMVAEError, match="give --denoise 0.1, or 0"):
            ebm.denoise(plain, sigma, mask)
    torch.testing.assert_close(ebm.denoise(plain, 0.1 * (1 + 1e-6), mask), den)  # the level as printed
    plain_energy = EnergyPrior(EnergyConfig(dim=4, hidden=8, layers=2, activation="softplus"), "gibbs")
    assert plain_energy.run(z, 2, 0.3, denoise=0.3).z.shape == z.shape  # an ordinary energy: any sigma


@pytest.mark.parametrize("noise_clamped", [True, False])
def test_annealed_conditional_sampling_of_a_correlated_gaussian(noise_clamped):
    """z ~ N(0, [[1, r], [r, 1]]), smoothed: N(0, C + sigma^2 I). Clamping z1 = 1 must give the last level's conditional of z2."""
    torch.manual_seed(0)
    r = 0.8
    C = torch.tensor([[1.0, r], [r, 1.0]])

    def log_prob(z, sigma):
        P = torch.linalg.inv(C + sigma**2 * torch.eye(2))
        return -0.5 * ((z @ P) * z).sum(1)

    n = 4000
    z0 = torch.stack([torch.ones(n), torch.randn(n)], 1)
    mask = torch.tensor([False, True])
    sig = geometric_sigmas(3.0, 0.1, 6)
    z = annealed_langevin(log_prob, z0, sig, 1200, 0.5, mask=mask, noise_clamped=noise_clamped).z
    assert torch.equal(z[:, 0], z0[:, 0])
    v = 1 + sig[-1].item() ** 2  # the last level's conditional: N(r / v, v - r^2 / v)
    assert z[:, 1].mean().item() == pytest.approx(r / v, abs=0.04)
    assert z[:, 1].var().item() == pytest.approx(v - r**2 / v, abs=0.04)
