"""Joint training of the energy-based prior (Yuan et al. Algorithm 1): the gradient of log Z(alpha) for a
learnable p0, the divergence test, and a short joint run whose energies and KL stay bounded."""

import math
from dataclasses import replace

import pytest
import torch

from mmvae_cli.config import JointEnergySettings, TrainSettings
from mmvae_cli.model import ModalitySpec, ModelConfig, MultimodalVAE
from mmvae_cli.priors.ebm import EnergyPrior
from mmvae_cli.priors.ebm.joint import DivergenceTest
from mmvae_cli.priors.ebm.net import EnergyConfig
from mmvae_cli.train import make_optimizer


def linear_ebm(dim, w, joint=True, settings=None, langevin=None):
    ebm = EnergyPrior(EnergyConfig(dim=dim, hidden=1, layers=1), "tilted", joint, settings, langevin)
    with torch.no_grad():
        ebm.energy.net[0].weight.copy_(torch.as_tensor(w, dtype=torch.float32).reshape(1, dim))
        ebm.energy.net[0].bias.zero_()
    return ebm


# --- learnable p0: d log Z / d theta = E_{p_alpha}[d log p0 / d theta] ----------------------------------


def test_learnable_prior_gets_the_gradient_of_log_z():
    """1-D: p0 = N(0, exp(raw)) learnable, E(z) = w z, q from one encoder (moe, one modality: no prior
    expert, so q does not depend on raw), feedback f = 1 (the only one allowed with a learnable p0: the
    VAE's prior is then p_alpha). The exact prior term KL(q || p_alpha) = KL(q || p0) + E_q[E]
    + log Z(raw), log Z = log int exp(-w z) p0(z) dz by quadrature. The objective's gradient w.r.t. raw
    minus that of the same loss with a plain p0 prior (same noise) must be beta * d log Z / d raw; the
    Monte Carlo term uses 20,000 Langevin negatives (400 steps of 0.3: converged to exp(-10), ULA variance bias 1.2 %)."""
    torch.manual_seed(0)
    beta, w, raw0 = 0.8, 1.5, 0.6
    spec = [ModalitySpec("a", [3], "gaussian", 1.0, 1.0, "mlp")]
    model = MultimodalVAE(
        ModelConfig(spec, 1, "moe", "all", "elbo", 1, beta, "gaussian", "gaussian", learn_prior=True, hidden=8)
    )
    with torch.no_grad():
        model.prior.raw.fill_(raw0)
    x = {"a": torch.randn(20000, 3)}
    model.train()

    def grad_raw(with_ebm):
        if with_ebm:
            f1 = JointEnergySettings(feedback=1.0)
            model.attach_prior(linear_ebm(1, [w], settings=f1, langevin={"steps": 400, "step_size": 0.3}))
        else:
            model.detach_prior("ebm")
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss, _ = model(x)
        loss.backward()
        return model.prior.raw.grad.item()

    g_ebm, g_p0 = grad_raw(True), grad_raw(False)
    raw = torch.tensor(raw0, dtype=torch.float64, requires_grad=True)
    z = torch.linspace(-30, 30, 200001, dtype=torch.float64)
    p0 = torch.distributions.Normal(0.0, torch.exp(raw / 2))
    log_z = torch.log(torch.trapezoid(torch.exp(-w * z + p0.log_prob(z)), z))
    (dlogz,) = torch.autograd.grad(log_z, raw)
    assert abs(log_z.item() - w**2 * math.exp(raw0) / 2) < 1e-6  # the quadrature itself
    expected = beta * dlogz.item()
    assert abs((g_ebm - g_p0) - expected) < 0.03 * abs(expected) + 0.01, (g_ebm - g_p0, expected)


@pytest.mark.parametrize("missing", [False, True], ids=["complete", "missing"])
def test_mvae_weights_the_log_z_gradient_by_the_elbos_it_counts(missing):
    """MVAE's loss is a sum of ELBOs, each with -beta log Z: p0's log Z gradient surrogate must count the
    ELBOs each tuple has. 3 modalities, groups {abc, a, b, c}: complete tuples count 4 each; with the
    observed sets {abc}, {ab}, {a}, {c} the joint ELBO counts for all 4 tuples, a and b for the first two
    (a unimodal ELBO needs a second observed modality), c for the first: 1 + 1/2 + 1/2 + 1/4 = 2.25 per
    tuple (issue 25e: not 4). With E = 0 the VAE's terms are p0's, so the gradient on p0's parameters
    differs from the plain model's (same noise) by beta * count * d/dtheta mean log p0(z_neg) exactly."""
    torch.manual_seed(0)
    beta = 0.7
    specs = [ModalitySpec(m, [2], "gaussian", 1.0, 1.0, "mlp") for m in "abc"]
    config = ModelConfig(specs, 2, "poe", "all", "mvae", 1, beta, "gaussian", "gaussian", learn_prior=True, hidden=4)
    model = MultimodalVAE(config).train()
    x = {m: torch.randn(4, 2) for m in "abc"}
    present = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.bool) if missing else None
    settings = JointEnergySettings(feedback=1.0, reg=0.0, neg_start="persistent")  # chains kept: z_neg

    def grad(with_ebm):
        model.detach_prior("ebm")
        if with_ebm:
            model.attach_prior(linear_ebm(2, [0.0, 0.0], settings=settings, langevin={"steps": 1}))
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        model(x, present)[0].backward()
        return model.prior.raw.grad.clone()

    g_p0, g_ebm = grad(False), grad(True)
    z_neg = model.train_prior.chains  # the negatives of that step
    (d_log_p0,) = torch.autograd.grad(model.base_log_prob(z_neg).mean(), model.prior.raw)
    count = 2.25 if missing else 4.0
    assert torch.allclose(g_ebm - g_p0, beta * count * d_log_p0, rtol=1e-5, atol=1e-7), (g_ebm - g_p0, d_log_p0)


# --- the divergence test on synthetic histories -----------------------------------------------------------


def history(e_q, e_neg, kl, log_z=None):
    """DivergenceTest's rows; log_z (log mean exp(-E) over p0 samples) 0 unless given: E about 0 at p0's
    samples, as measured on the drifting PolyMNIST bundle (-0.4 at epoch 6)."""
    log_z = [0.0] * len(e_q) if log_z is None else log_z
    return [
        {"loss": 100.0, "kl": k, "energy_q": a, "energy_neg": b, "log_z": z, "ebm_ml": a - b}
        for a, b, k, z in zip(e_q, e_neg, kl, log_z, strict=True)
    ]


def shifted(rows, shifts):
    """The same rows for the energy E + c_t (log_z - c_t): the same p_alpha, chains and VAE gradients."""
    return [
        {**r, "energy_q": r["energy_q"] + c, "energy_neg": r["energy_neg"] + c, "log_z": r["log_z"] - c}
        for r, c in zip(rows, shifts, strict=True)
    ]


def first_alarm(rows, **kw):
    test = DivergenceTest(**kw)
    for i, row in enumerate(rows):
        reason = test.update(row)
        if reason is not None:
            return i + 1, reason
    return None, None


# docs/results/ebm-joint.md, "Why it diverged": polymnist-mini, MoPoE, no L2 term, Algorithm 1 (f = 1):
# E_q[E] at epochs 1-6 as recorded; E_neg and KL(q || p0) as recorded at epochs 3 and 6 (-17.2 / 73.7,
# -130 / 123), KL 54 at epoch 1, the epochs between interpolated.
DRIFT = history([-0.07, -2.4, -22.6, -59, -95, -133], [0.0, -1.2, -17.2, -55, -92, -130], [54, 63, 73.7, 88, 105, 123])
# stable runs of the same page, E at p0's samples (not recorded) taken as at the negatives: MMVAE with
# the defaults at epochs 2, 10, 20, 30, 45, 60, 80, 100, and MoPoE with the former defaults at 2, 10, 20, 45, 60
STABLE_MMVAE = history(
    [0.00, -0.23, -1.08, -2.52, -3.65, -4.21, -4.48, -4.19],
    e_neg := [0.03, 0.21, 1.02, 2.31, 3.44, 4.09, 4.40, 4.05],
    [8.6, 10.8, 17.5, 25.9, 37.7, 45.0, 51.2, 55.3],
    [-e for e in e_neg],
)
STABLE_MOPOE = history(
    [-1.27, -1.78, -1.21, -1.55, -1.85],
    e_neg := [0.16, 1.56, 1.39, 1.70, 2.00],
    [66.1, 57.7, 55.9, 60.9, 65.0],
    [-e for e in e_neg],
)


def level_zero(rows):
    """The rows with each epoch's mean level (E_q + E_neg) / 2 moved to 0, as the gauge term would."""
    return shifted(rows, [-(r["energy_q"] + r["energy_neg"]) / 2 for r in rows])


def test_divergence_test_flags_the_reported_polymnist_run():
    """The bug report's per-epoch E_q[E] with its KL(q || p0) (energies and KL fall and rise together)."""
    e_q = [-0.01, -1.1, -16.8, -116, -601, -3000, -29e6]
    e_neg = [0.0, -0.5, -14.0, -112, -590, -2990, -29e6]
    kl = [54, 60, 70, 120, 400, 2000, 3e6]
    epoch, reason = first_alarm(history(e_q, e_neg, kl))
    assert epoch is not None and epoch <= 4 and "try" in reason
    assert first_alarm(level_zero(history(e_q, e_neg, kl))) == (epoch, reason)


def test_divergence_test_flags_the_drift_with_its_level_moved_to_zero():
    """Issue 25: the README's drifting run (KL 54 -> 123) replayed with each epoch's mean energy level
    moved to 0 leaves energies within +-3 nats, which the former raw-energy rules (|E| beyond 1.5 KL, E_q
    falling) never flagged; the tilt -(E_q + log Z) does not move, and the run is flagged at epoch 3, as
    recorded."""
    gauged = level_zero(DRIFT)
    assert all(max(abs(r["energy_q"]), abs(r["energy_neg"])) < 3 for r in gauged)
    for rows in (DRIFT, gauged):
        epoch, reason = first_alarm(rows)
        assert epoch == 3 and "drift" in reason and "--ebm-feedback" in reason, reason


def test_divergence_test_passes_stable_runs_shifted_by_any_constant():
    shifts = [1e3, -1e3, 250.0, -7.0, 0.0, 40.0, -600.0, 1e4]
    for rows in (STABLE_MMVAE, STABLE_MOPOE):
        assert first_alarm(rows) == (None, None)
        assert first_alarm(shifted(rows, shifts[: len(rows)])) == (None, None)
        assert first_alarm(level_zero(rows)) == (None, None)


def test_divergence_verdicts_do_not_depend_on_the_energy_constant():
    """E -> E + c_t per epoch (log_z -> log_z - c_t) changes no verdict, for every history of this file."""
    g = torch.Generator().manual_seed(0)
    gap = history([0, -5, -20, -60, -200], [0, 0, 0, 0, 0], [20, 20, 20, 20, 20])
    for rows in (DRIFT, STABLE_MMVAE, STABLE_MOPOE, gap):
        want = first_alarm(rows)
        for _ in range(5):
            c = (1e3 * torch.randn(len(rows), generator=g, dtype=torch.float64)).tolist()
            assert first_alarm(shifted(rows, c)) == want


def test_divergence_test_flags_a_growing_gap_and_non_finite_values():
    epoch, reason = first_alarm(history([0, -5, -20, -60, -200], [0, 0, 0, 0, 0], [20, 20, 20, 20, 20]))
    assert epoch is not None and "gap" in reason
    epoch, reason = first_alarm(history([0, -1, float("nan")], [0, 0, 0], [5, 5, 5]))
    assert epoch == 3 and "non-finite" in reason
    epoch, reason = first_alarm(history([0, -1, -1], [0, 0, 0], [5, 5, 5], [0, 0, float("inf")]))
    assert epoch == 3 and "non-finite log_z" in reason
    epoch, reason = first_alarm(history([-0.5, -0.6], [0.5, 0.6], [20, 20], [-10, -40]))  # tilt 40.6 > 1.5 x 20
    assert epoch == 2 and "tilt" in reason


def test_divergence_test_passes_stable_histories():
    # a healthy start: KL rises while the VAE learns, energies stay small
    assert first_alarm(
        history(
            [0.0, -0.5, -1.0, -1.2, -1.1, -1.3, -1.2], [0.0, 0.1, 0.2, 0.1, 0.2, 0.1, 0.2], [5, 25, 60, 80, 90, 95, 97]
        )
    ) == (None, None)
    # a harmless common shift of the energy at a constant KL (log Z absorbs it: E at p0's samples shifts too)
    assert first_alarm(
        history(
            [-3, -6, -9, -12, -14, -15, -16],
            [-1, -3, -8, -11, -14, -15, -16],
            [14.4, 14.7, 14.8, 14.9, 15.1, 15.2, 15.4],
            [1, 3, 8, 11, 14, 15, 16],
        )
    ) == (None, None)
    # rows without energies (a VAE without joint energy) are ignored; rows without log_z (histories written
    # before issue 25) get the gap test only
    test = DivergenceTest()
    assert all(test.update({"loss": 1.0, "kl": k}) is None for k in (1, 10, 100, 1000))
    old = [{"loss": 1.0, "kl": 50.0, "energy_q": -100.0 * t, "energy_neg": -100.0 * t, "ebm_ml": 0.0} for t in range(5)]
    assert first_alarm(old) == (None, None)


# --- a short joint run through the real objective ----------------------------------------------------------


def train_joint(with_energy, settings=None, epochs=8):
    """Rows of per-epoch mean stats; asserts nothing."""
    torch.manual_seed(0)
    dim, n, bs = 6, 256, 64
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, dim, generator=g)
    z[:, 0] = 2 * torch.sign(z[:, 0]) + 0.3 * z[:, 0]
    x = {m: z @ torch.randn(dim, 24, generator=g) + 0.1 * torch.randn(n, 24, generator=g) for m in "ab"}
    specs = [ModalitySpec(m, [24], "gaussian", 0.1, 1.0, "mlp") for m in "ab"]
    model = MultimodalVAE(ModelConfig(specs, dim, "mopoe", "all", "elbo", 1, 1.0, "gaussian", "gaussian", hidden=32))
    if with_energy:
        model.attach_prior(
            EnergyPrior(EnergyConfig(dim=dim), "tilted", joint=True, joint_settings=settings, langevin={"steps": 20})
        )
    opt = make_optimizer(model, TrainSettings(lr=3e-3), replace(settings or JointEnergySettings(), ebm_lr=2e-4))
    rows = []
    model.train()
    for _ in range(epochs):
        sums = {}
        for i in range(0, n, bs):
            loss, stats = model({m: v[i : i + bs] for m, v in x.items()})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v / (n // bs)
        rows.append(sums)
    return rows


@pytest.mark.parametrize(
    "settings",
    [JointEnergySettings(), JointEnergySettings(reg=0.1, reg_on="energies", feedback=1.0)],
    ids=["defaults", "l2-on-energies"],
)
def test_joint_training_keeps_energies_and_kl_bounded(settings):
    """6-D latent, two 24-D vector modalities, MoPoE, the default energy (4 x 400), energy lr 2e-4 (10x the
    default, to provoke the drift fast; without the L2 term E_q falls to -40 by epoch 8): the gap
    E_neg - E_q stays below KL(q || p0), KL stays below twice that of the same VAE without energy, and the
    divergence test stays silent; with the L2 term on the energies they stay within 1/(2 reg) + 1 nats
    (its optimum is +-1/(2 reg)), with the default (the level pinned) their mean level stays near 0."""
    torch.set_num_threads(1)
    rows, plain = train_joint(True, settings), train_joint(False)
    test = DivergenceTest()
    for r in rows:
        assert test.update(r) is None, r
    for r in rows:
        if settings.reg_on == "energies":
            assert max(abs(r["energy_q"]), abs(r["energy_neg"])) < 1 / (2 * settings.reg) + 1, r
        else:
            assert abs(r["energy_q"] + r["energy_neg"]) / 2 < 2.0, r  # without the L2 term: -25 by epoch 8
        assert r["energy_neg"] - r["energy_q"] < max(r["kl"], 1.0), r
    assert rows[-1]["kl"] < 2 * plain[-1]["kl"]


def test_a_diverging_joint_run_stops_with_exit_3_and_keeps_its_last_good_checkpoint(tmp_path, capsys):
    """No L2 term, Langevin steps 0 (negatives stay at p0, never reach the posterior) and a large energy
    learning rate: the energy runs away within a few epochs. The run stops with exit 3 and one line; the
    bundle on disk is the last epoch before the divergence, and its checkpoint is that epoch's."""
    import json

    from helpers_cli import run, write_tiny_polymnist

    root = write_tiny_polymnist(tmp_path / "data", n_train=40, n_test=4)
    out = tmp_path / "r"
    code, _, err = run(
        [
            "train",
            "polymnist",
            "--data-root",
            root,
            "--out",
            out,
            "--prior",
            "ebm",
            "--latent-dim",
            "4",
            "--batch-size",
            "8",
            "--epochs",
            "12",
            "--energy-hidden",
            "16",
            "--langevin-steps",
            "0",
            "--ebm-lr",
            "0.05",
            "--ebm-reg",
            "0",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 3, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the jointly trained energy prior diverged at epoch") and "--ebm-reg" in last
    m = json.loads((out / "manifest.json").read_text())
    done = m["epochs_done"]
    assert 1 <= done < 12 and "finished" not in m
    assert m["training_state"]["epoch"] == done and m["training_state"]["step"] == 0
    assert len(m["history"]) == done and f"epoch {done + 1}" in last


@pytest.mark.parametrize("objective", ["iwae", "dreg"])
def test_iwae_objectives_report_kl_to_p0_for_the_divergence_test(objective):
    """DivergenceTest's bounds are in units of KL(q || p0): the IWAE objectives report it (closed form,
    mean over the mixture's components) when a joint energy is trained."""
    from mmvae_cli.objectives import _kl_to_prior

    torch.manual_seed(0)
    specs = [ModalitySpec(m, [5], "gaussian", 0.5, 1.0, "mlp") for m in "ab"]
    model = MultimodalVAE(ModelConfig(specs, 3, "moe", "all", objective, 2, 2.5, "laplace", "laplace", hidden=8))
    model.attach_prior(
        EnergyPrior(EnergyConfig(dim=3, hidden=4, layers=2), "tilted", joint=True, langevin={"steps": 2})
    )
    x = {m: torch.randn(6, 5) for m in "ab"}
    _, stats = model(x)
    with torch.no_grad():
        expected = _kl_to_prior(model, model.posterior(x)).mean().item()
    assert stats["kl"] == pytest.approx(expected, rel=1e-6) and expected > 0
    assert {"energy_q", "energy_neg", "ebm_ml"} <= set(stats)


@pytest.mark.parametrize("neg_start", ["prior", "posterior", "persistent"])
def test_learn_reports_log_z_estimated_on_p0_samples(neg_start):
    """log_z = log mean exp(-E(z0)) over the batch's p0 samples z0 ~ N(0, 1): for E(z) = w z + b,
    log Z = w^2 / 2 - b (1-D, 4,000 samples: standard error 0.01); for a constant energy exactly -b."""
    torch.manual_seed(0)
    spec = [ModalitySpec("a", [2], "gaussian", 1.0, 1.0, "mlp")]
    model = MultimodalVAE(ModelConfig(spec, 1, "moe", "all", "elbo", 1, 1.0, "gaussian", "gaussian", hidden=4))
    x = {"a": torch.randn(4000, 2)}
    model.train()
    settings = JointEnergySettings(neg_start=neg_start)
    for w, b, tol in ((0.5, 0.3, 0.05), (0.0, 2.0, 1e-6)):
        ebm = linear_ebm(1, [w], settings=settings, langevin={"steps": 1})
        with torch.no_grad():
            ebm.energy.net[0].bias.fill_(b)
        model.attach_prior(ebm)
        log_z = model(x)[1]["log_z"]
        assert abs(log_z - (w**2 / 2 - b)) < tol, (log_z, w, b)


def test_gauge_regulariser_pins_the_mean_level_and_leaves_the_gap_free():
    """reg_on "gauge": loss = mean E_pos - mean E_neg + reg ((mean E_pos + mean E_neg) / 2)^2, exactly;
    an energy that is -a on the positives and +a on the negatives pays nothing for its gap, while the
    "energies" form pays reg (a^2 + a^2)."""
    from mmvae_cli.priors.ebm.losses import maximum_likelihood_loss

    z_pos, z_neg = torch.full((4, 2), -1.0), torch.full((6, 2), 1.0)
    w = torch.tensor([1.5, 0.5], requires_grad=True)  # E(z) = w.z: E_pos = -2, E_neg = +2
    b = torch.tensor(0.3, requires_grad=True)

    def energy(z):
        return z @ w + b

    gauge = maximum_likelihood_loss(energy, z_pos, z_neg, reg=0.7, reg_on="gauge")
    e_pos, e_neg = -2.0 + 0.3, 2.0 + 0.3
    assert gauge.item() == pytest.approx(e_pos - e_neg + 0.7 * ((e_pos + e_neg) / 2) ** 2)
    (gb,) = torch.autograd.grad(gauge, b)
    assert gb.item() == pytest.approx(0.7 * 2 * 0.3)  # only the level's gradient reaches the offset
    energies = maximum_likelihood_loss(energy, z_pos, z_neg, reg=0.7)
    assert energies.item() == pytest.approx(e_pos - e_neg + 0.7 * (e_pos**2 + e_neg**2))


@pytest.mark.parametrize(
    "fusion,objective,k", [("mopoe", "elbo", 1), ("moe", "iwae", 1), ("poe", "mvae", 1), ("moe", "elbo", 1)]
)
def test_feedback_scales_the_energy_in_the_vae_prior_term(fusion, objective, k):
    """--ebm-feedback f: the VAE's prior is p_f ∝ p0 exp(-f E), so with the same noise the reported loss
    (the VAE's, before eq. 10) is L_0 + f (L_1 - L_0): f = 0 is the base-prior loss and f = 1 Algorithm 1
    (with K = 1 the IWAE is linear in log w, so this holds for it too); the samples' prior stays p_alpha."""
    torch.manual_seed(0)
    specs = [ModalitySpec(m, [5], "gaussian", 0.5, 1.0, "mlp") for m in "ab"]
    model = MultimodalVAE(ModelConfig(specs, 3, fusion, "all", objective, k, 2.5, "gaussian", "gaussian", hidden=8))
    ebm = EnergyPrior(EnergyConfig(dim=3, hidden=4, layers=2), "tilted", joint=True, langevin={"steps": 2})
    with torch.no_grad():  # a clearly non-zero energy
        for p in ebm.parameters():
            p.copy_(torch.randn_like(p))
    model.attach_prior(ebm)
    model.train()
    x = {m: torch.randn(6, 5) for m in "ab"}

    def loss(f):
        model.train_prior.joint_settings = JointEnergySettings(feedback=f)
        torch.manual_seed(1)
        return model(x)[1]["loss"]

    l0, l1, lh = loss(0.0), loss(1.0), loss(0.3)
    assert abs(l1 - l0) > 1e-2  # the energy matters
    assert lh == pytest.approx(l0 + 0.3 * (l1 - l0), rel=1e-5, abs=1e-5)
    model.detach_prior("ebm")
    torch.manual_seed(1)
    assert model(x)[1]["loss"] == pytest.approx(l0, rel=1e-6, abs=1e-6)  # f = 0: the base prior's loss


@pytest.mark.parametrize("objective,f", [("iwae", 1.0), ("iwae", 0.4), ("dreg", 1.0), ("dreg", 0.4)])
def test_iwae_and_dreg_energy_term_at_k_above_one(objective, f):
    """K = 3 importance samples from each of MMVAE's 2 components, the energy inside the log weights
    (issue 25d: the K = 1 test above sees it only linearly). By hand, with q_m the unimodal experts and
    z (S, K, B, D) the same reparameterised draws:
        log w = log p(X | z) + beta (log N(z; 0, I) - f E(z) - log 1/2 sum_m q_m(z)),
        L = mean_{s, b} log 1/K sum_k w,
    the objective's value is L; the IWAE's gradients are -dL/dtheta for every VAE weight; DReG's are
    -dL/dtheta for the decoders and, for the encoders, minus the gradient of
    mean_{s, b} sum_k w~_k^2 log w_k with w~ = softmax_k log w detached and q's parameters stopped in
    log q (the path through z alone). The energy's own weights learn only from eq. 10."""
    torch.manual_seed(0)
    beta, K = 1.3, 3
    specs = [ModalitySpec(m, [3], "gaussian", 0.5, 1.0, "mlp") for m in "ab"]
    model = MultimodalVAE(ModelConfig(specs, 2, "moe", "all", objective, K, beta, "gaussian", "gaussian", hidden=6))
    ebm = EnergyPrior(EnergyConfig(dim=2, hidden=4, layers=2), "tilted", joint=True, langevin={"steps": 2})
    with torch.no_grad():  # a clearly non-zero, non-linear energy
        for p in ebm.parameters():
            p.copy_(torch.randn_like(p))
    ebm.joint_settings = JointEnergySettings(feedback=f)
    model.attach_prior(ebm)
    model.train()
    x = {m: torch.randn(5, 3) for m in "ab"}
    vae = [(n, p) for n, p in model.named_parameters() if not n.startswith("train_prior.")]

    torch.manual_seed(1)
    loss, stats = model(x)
    model.zero_grad(set_to_none=True)
    loss.backward()
    got = {n: p.grad.clone() for n, p in vae}

    torch.manual_seed(1)
    z = model.posterior(x).rsample_each(K)  # the same draws: (S, K, B, D)
    experts = model.experts(x)

    def log_w(stop_q):
        loc, scale = (experts.loc.detach(), experts.scale.detach()) if stop_q else (experts.loc, experts.scale)
        log_q = torch.stack([torch.distributions.Normal(loc[m], scale[m]).log_prob(z).sum(-1) for m in range(2)])
        log_q = torch.logsumexp(log_q, 0) - math.log(2)
        log_p0 = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        return model.log_likelihoods(model.decode(z), x) + beta * (log_p0 - f * ebm.energy(z) - log_q)

    lw = log_w(False)
    value = (torch.logsumexp(lw, 1) - math.log(K)).mean()
    assert stats["iwae"] == pytest.approx(value.item(), rel=1e-6)
    want = dict(zip([n for n, _ in vae], torch.autograd.grad(-value, [p for _, p in vae], retain_graph=True)))
    if objective == "dreg":
        wt = torch.softmax(lw, 1).detach()
        surrogate = (wt.pow(2) * log_w(True)).sum(1).mean()
        enc = [(n, p) for n, p in vae if n.startswith("encoders.")]
        want.update(zip([n for n, _ in enc], torch.autograd.grad(-surrogate, [p for _, p in enc])))
    for n, _ in vae:
        assert torch.allclose(got[n], want[n], rtol=1e-4, atol=1e-6), n
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ebm.parameters())  # eq. 10


def test_feedback_below_one_with_a_learnable_prior_is_refused():
    """In config (the flags) and in the library (the training step): with f < 1 the negatives are not
    samples of the VAE's prior p_f, so they give no log Z gradient for p0."""
    from mmvae_cli.errors import MMVAEError
    from mmvae_cli.recipe import resolve_train

    with pytest.raises(MMVAEError, match="--ebm-feedback 1"):
        resolve_train("polymnist-mini", {"prior": "ebm", "learn_prior": True, "feedback": 0.5})
    assert resolve_train("polymnist-mini", {"prior": "ebm", "feedback": 0.5}).joint.feedback == 0.5
    spec = [ModalitySpec("a", [3], "gaussian", 1.0, 1.0, "mlp")]
    x = {"a": torch.randn(4, 3)}
    for learn_prior, f, refused in ((True, 0.5, True), (True, 0.0, True), (True, 1.0, False), (False, 0.5, False)):
        config = ModelConfig(spec, 1, "moe", "all", "elbo", 1, 1.0, "gaussian", "gaussian", learn_prior, hidden=4)
        model = MultimodalVAE(config).train()
        model.attach_prior(linear_ebm(1, [1.0], settings=JointEnergySettings(feedback=f), langevin={"steps": 1}))
        if refused:
            with pytest.raises(MMVAEError, match="--ebm-feedback 1"):
                model(x)
        else:
            model(x)[0].backward()
