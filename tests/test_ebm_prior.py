"""Energy-based priors on a model: fusion none (EB-MVAE), sample_latents("ebm") for every fusion,
clamped conditional sampling, and the joint-training objective terms (Yuan et al. eq. 9-10)."""

import math

import pytest
import torch
from torch import nn

from mmvae_cli.config import JointEnergySettings, TrainSettings
from mmvae_cli.model import ModalitySpec, ModelConfig, MultimodalVAE
from mmvae_cli.priors.ebm import EnergyPrior
from mmvae_cli.priors.ebm.net import EnergyConfig
from mmvae_cli.train import make_optimizer


def vec_model(fusion="mopoe", d=3, M=3, objective="elbo", k=1, beta=1.0):
    specs = [ModalitySpec(f"m{i}", [4], "gaussian", 1.0, 1.0, "mlp") for i in range(M)]
    return MultimodalVAE(ModelConfig(specs, d, fusion, "all", objective, k, beta, "gaussian", "gaussian", hidden=8))


def batch(model, B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(B, 4, generator=g) for n in model.names}


def linear_ebm(dim, w, b=0.0, density="tilted", joint=False, langevin=None):
    """E(z) = w . z + b (a 1-layer EnergyNet)."""
    ebm = EnergyPrior(EnergyConfig(dim=dim, hidden=1, layers=1), density, joint, langevin=langevin)
    lin = ebm.energy.net[0]
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(w, dtype=torch.float32).reshape(1, dim))
        lin.bias.fill_(b)
    return ebm


# --- fusion none: independent unimodal VAEs -----------------------------------------------------


def test_fusion_none_posterior_is_the_concatenation_with_prior_blocks_for_missing_inputs():
    model = vec_model("none", d=2, M=3)
    x = batch(model)
    assert model.z_dim == 6
    e = model.experts(x)  # (M, B, d)
    q = model.posterior(x)
    assert q.n_components == 1
    torch.testing.assert_close(q.components.loc[0], e.loc.permute(1, 0, 2).reshape(6, 6))
    qa = model.posterior({"m1": x["m1"]})
    loc, scale = qa.components.loc[0], qa.components.scale[0]
    torch.testing.assert_close(loc[:, 2:4], e.loc[1])
    assert torch.equal(loc[:, :2], torch.zeros(6, 2)) and torch.equal(loc[:, 4:], torch.zeros(6, 2))
    assert torch.equal(scale[:, :2], torch.ones(6, 2))  # N(0, I) blocks: the prior's


def test_fusion_none_elbo_is_the_sum_of_unimodal_elbos():
    model = vec_model("none", d=2, M=3, beta=0.1)
    x = batch(model)
    model.eval()
    torch.manual_seed(1)
    loss, _ = model(x)
    torch.manual_seed(1)
    q = model.posterior(x)
    z = q.components.rsample()[0]  # same noise as the objective's
    total = 0.0
    for i, n in enumerate(model.names):
        zi = z[:, 2 * i : 2 * i + 2]
        e = model.experts(x)
        qi = torch.distributions.Normal(e.loc[i], e.scale[i])
        kl = torch.distributions.kl_divergence(qi, torch.distributions.Normal(0.0, 1.0)).sum(-1)
        rec = model.log_likelihoods({n: model.decoders[n](zi)}, {n: x[n]})
        total = total - (rec - 0.1 * kl).mean()
    torch.testing.assert_close(loss, total)
    # each decoder reads only its own block
    z2 = z.clone()
    z2[:, 2:4] += 5.0
    out, out2 = model.decode(z), model.decode(z2)
    assert torch.equal(out["m0"], out2["m0"]) and torch.equal(out["m2"], out2["m2"])
    assert not torch.equal(out["m1"], out2["m1"])


# --- sampling the energy-based prior ------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["poe", "moe", "mopoe", "none"])
def test_sample_latents_ebm_targets_the_tilted_prior(fusion):
    """E(z) = -a.z tilts N(0, I) into N(a, I). Unadjusted Langevin with h = s^2/2 on N(a, I) has the
    exact mean a and variance 1 / (1 - h/2) at stationarity; 200 steps of s = 0.5 contract the start
    by (1 - h)^200 ~ 1e-11. Tolerance: 5 standard errors of 4000 samples per coordinate."""
    torch.manual_seed(0)
    model = vec_model(fusion, d=2, M=2)
    D = model.z_dim
    a = torch.linspace(-1.5, 1.5, D)
    model.attach_prior(linear_ebm(D, -a, langevin={"steps": 200, "step_size": 0.5}))
    z = model.sample_latents(4000, "ebm")
    h = 0.5**2 / 2
    var = 1 / (1 - h / 2)
    se = math.sqrt(var / 4000)
    assert (z.mean(0) - a).abs().max() < 5 * se
    assert (z.var(0) - var).abs().max() < 5 * var * math.sqrt(2 / 4000)
    base = model.sample_latents(4000, "base")
    assert base.mean(0).abs().max() < 5 / math.sqrt(4000)


def test_sample_latents_ebm_without_energy_is_a_clear_error():
    from mmvae_cli.errors import MMVAEError

    with pytest.raises(MMVAEError, match="fit-ebm"):
        vec_model().sample_latents(3, "ebm")


class Quadratic(nn.Module):
    """E(z) = 0.5 z^T P z."""

    def __init__(self, P):
        super().__init__()
        self.P = P

    def forward(self, z):
        return 0.5 * ((z @ self.P) * z).sum(-1)


def test_eb_mvae_cross_generation_samples_the_conditional_with_observed_latents_clamped():
    """Two modalities, one latent each, joint N(0, C) with C = [[1, r], [r, 1]] (P = C^-1) as a Gibbs
    energy. The encoder of m0 is made deterministic at z0 = c, so z1 | z0 = c ~ N(r c, 1 - r^2);
    ULA with h = s^2/2 on a 1-D Gaussian of precision p has stationary variance 1 / (p (1 - h p / 2))."""
    torch.manual_seed(0)
    r, c = 0.8, 1.5
    model = vec_model("none", d=1, M=2)
    enc = model.encoders["m0"]
    with torch.no_grad():
        enc.loc.weight.zero_()
        enc.loc.bias.fill_(c)
        enc.raw.weight.zero_()
        enc.raw.bias.fill_(-40.0)  # variance e^-40: z0 = c
    ebm = EnergyPrior(EnergyConfig(dim=2, hidden=1, layers=1), "gibbs", langevin={"steps": 300, "step_size": 0.4})
    ebm.energy = Quadratic(torch.linalg.inv(torch.tensor([[1.0, r], [r, 1.0]])))
    model.attach_prior(ebm)
    seen = {}

    def decode(z, names=None, w=None):  # capture the latents
        seen["z"] = z
        return {n: z for n in (names or model.names)}

    model.decode = decode
    model.means = lambda outs: outs
    model.cross_generate({"m0": torch.randn(4000, 4)}, ["m1"])
    z = seen["z"]
    assert torch.allclose(z[:, 0], torch.full((4000,), c), atol=1e-6)  # clamped exactly
    p, h = 1 / (1 - r**2), 0.4**2 / 2
    var = 1 / (p * (1 - h * p / 2))
    assert abs(z[:, 1].mean().item() - r * c) < 5 * math.sqrt(var / 4000)
    assert abs(z[:, 1].var().item() - var) < 5 * var * math.sqrt(2 / 4000)


# --- joint training (Algorithm 1) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "fusion, objective, groups",
    [
        ("poe", "elbo", 1),
        ("moe", "elbo", 1),
        ("mopoe", "elbo", 1),
        ("moe", "iwae", 1),
        ("mopoe", "dreg", 1),
        ("poe", "mvae", 4),
    ],
)
def test_joint_prior_term_adds_beta_times_the_energy(fusion, objective, groups):
    """KL(q || p_alpha) = KL(q || p0) + E_q[E] + log Z: a constant energy E = b shifts the loss by
    beta * b per ELBO term (mvae sums the joint and the 3 unimodal ELBOs), whatever the fusion; with
    the default --ebm-feedback f, KL(q || p_f) shifts it by f * beta * b."""
    model = vec_model(fusion, objective=objective, k=3, beta=0.7)
    x = batch(model)
    model.eval()
    torch.manual_seed(3)
    base, _ = model(x)
    model.attach_prior(linear_ebm(model.z_dim, torch.zeros(model.z_dim), b=2.5, joint=True))
    for settings in (JointEnergySettings(feedback=1.0), JointEnergySettings()):
        model.train_prior.joint_settings = settings
        torch.manual_seed(3)
        tilted, stats = model(x)
        expected = torch.tensor(groups * 0.7 * 2.5 * settings.feedback)
        torch.testing.assert_close(tilted - base, expected, rtol=1e-5, atol=1e-4)


def test_joint_training_gradients_reach_each_part_only_through_its_own_term():
    """The VAE sees dE/dz (eq. 9) but never moves alpha; alpha moves only by eq. 10, a difference of
    means over equally many positives and negatives, so the gradient of E's bias b cancels exactly."""
    torch.manual_seed(0)
    model = vec_model("mopoe", beta=1.0)
    x = batch(model, B=64)
    model.attach_prior(
        linear_ebm(model.z_dim, torch.tensor([3.0, -2.0, 1.0]), joint=True, langevin={"steps": 5, "step_size": 0.1})
    )
    model.eval()  # eval: no eq. 10 term, only the prior term
    loss, _ = model(x)
    loss.backward()
    assert model.train_prior.energy.net[0].weight.grad is None
    enc_grad = model.encoders["m0"].loc.bias.grad.clone()
    model.zero_grad(set_to_none=True)
    model.detach_prior("ebm")
    torch.manual_seed(0)
    model(x)[0].backward()
    assert not torch.allclose(enc_grad, model.encoders["m0"].loc.bias.grad)  # dE/dz reached the encoder

    model.attach_prior(
        linear_ebm(model.z_dim, torch.tensor([3.0, -2.0, 1.0]), joint=True, langevin={"steps": 5, "step_size": 0.1})
    )
    model.train_prior.joint_settings = JointEnergySettings(reg=0.0)
    model.train()
    model.zero_grad(set_to_none=True)
    loss, stats = model(x)
    loss.backward()
    g = model.train_prior.energy.net[0].weight.grad
    assert g is not None and "ebm_ml" in stats and "energy_neg" in stats
    assert model.train_prior.energy.net[0].bias.grad.abs().item() < 1e-5  # constants cancel in eq. 10
    # the L2 term on the energies, reg (mean E_pos^2 + mean E_neg^2), gives the bias 2 reg (mean E(z_pos) +
    # mean E(z_neg)); the default one on the level, reg ((mean E_pos + mean E_neg) / 2)^2, half of that
    for settings, factor in ((JointEnergySettings(reg=0.1, reg_on="energies"), 2.0), (JointEnergySettings(), 1.0)):
        model.train_prior.joint_settings = settings
        model.zero_grad(set_to_none=True)
        loss, stats = model(x)
        loss.backward()
        expected = factor * settings.reg * (stats["energy_q"] + stats["energy_neg"])
        assert settings.reg > 0 and abs(model.train_prior.energy.net[0].bias.grad.item() - expected) < 1e-4 * (
            1 + abs(expected)
        )
    opt = make_optimizer(model, TrainSettings(lr=1e-3), JointEnergySettings(ebm_lr=2e-5, ebm_betas=(0.5, 0.999)))
    assert len(opt.param_groups) == 2
    assert opt.param_groups[1]["lr"] == 2e-5 and opt.param_groups[1]["betas"] == (0.5, 0.999)
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in model.train_prior.parameters()}
