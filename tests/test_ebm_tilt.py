"""The energy as a tilt of any base prior, p(z) ∝ exp(-E(z)) p_b(z) (issue 25): noise-contrastive estimation
against p_b (exact optimum on a 1-D case), sampling-importance-resampling and Langevin on the tilted
density (a tilt with a known closed form), and `fit-ebm --base` end to end: stored, loaded, sampled,
copied to --out, refused once its base is refitted."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from helpers_cli import TINY_FIT_EBM, run, write_tiny_polymnist

from mmvae_cli.config import ENERGY_DEFAULTS
from mmvae_cli.priors.ebm import EnergyPrior
from mmvae_cli.priors.ebm.losses import nce_loss
from mmvae_cli.priors.ebm.net import EnergyConfig
from mmvae_cli.priors.gmm import GMMPrior

CPU = ["--device", "cpu"]


class Quadratic(torch.nn.Module):
    """E(z) = a z^2 + b z + c on 1-D z, (B, 1) -> (B,)."""

    def __init__(self):
        super().__init__()
        self.abc = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))

    def forward(self, z):
        a, b, c = self.abc
        z = z[:, 0]
        return a * z * z + b * z + c


@pytest.mark.parametrize("nu", [1, 4])
def test_nce_optimum_is_the_log_density_ratio_with_its_constant(nu):
    """q = N(1, 0.5^2), p_b = N(0, 1): the population NCE loss with nu noise samples per data sample, by
    quadrature, is minimised at E* = -log(q / p_b) = 1.5 z^2 - 4 z + 2 - log 2 exactly (the normaliser
    included) for every nu."""
    z = torch.linspace(-10, 10, 20001, dtype=torch.float64)[:, None]
    dz = float(z[1] - z[0])
    q = torch.distributions.Normal(1.0, 0.5).log_prob(z[:, 0]).exp()
    pb = torch.distributions.Normal(0.0, 1.0).log_prob(z[:, 0]).exp()
    energy = Quadratic()
    sp, log_nu = torch.nn.functional.softplus, math.log(nu)

    def population_loss():  # E_q softplus(E + log nu) + nu E_pb softplus(-E - log nu)
        e = energy(z)
        return (q * sp(e + log_nu)).sum() * dz + nu * (pb * sp(-e - log_nu)).sum() * dz

    opt = torch.optim.LBFGS(energy.parameters(), lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = population_loss()
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(
        energy.abc.detach(), torch.tensor([1.5, -4.0, 2 - math.log(2)], dtype=torch.float64), atol=2e-4, rtol=0
    )
    # the sampled loss (losses.nce_loss) is the same function: its value at the optimum matches the quadrature
    g = torch.Generator().manual_seed(0)
    zq = 1 + 0.5 * torch.randn(200_000, 1, generator=g, dtype=torch.float64)
    zb = torch.randn(200_000 * nu, 1, generator=g, dtype=torch.float64)
    with torch.no_grad():
        assert abs(float(nce_loss(energy, zq, zb, nu)) - float(population_loss())) < 0.01 * nu


def linear_tilt(base: str = "gmm"):
    """E(z) = -z on 1-D z over p_b = N(0, 1) (a 1-component gmm): p ∝ exp(z) N(z; 0, 1) = N(1, 1)."""
    gmm = GMMPrior(torch.ones(1), torch.zeros(1, 1), torch.ones(1, 1, 1))
    prior = EnergyPrior(EnergyConfig(dim=1, hidden=1, layers=1), "tilted", base=base, base_sha256=gmm.fingerprint())
    with torch.no_grad():
        (lin,) = [m for m in prior.energy.modules() if isinstance(m, torch.nn.Linear)]
        lin.weight.fill_(-1.0)
        lin.bias.zero_()
    model = SimpleNamespace(priors={"gmm": gmm})
    prior.attach(model)
    return prior, gmm, model


def test_sir_and_langevin_sample_the_tilted_base():
    torch.manual_seed(0)
    prior, _, _ = linear_tilt()
    assert float(prior.energy(torch.tensor([[2.0]])).detach()) == pytest.approx(-2.0)
    z = prior.sample(8000, sampler="sir", proposals=500, steps=0)
    assert abs(float(z.mean()) - 1.0) < 0.05 and abs(float(z.var()) - 1.0) < 0.07
    z1 = prior.resample(8000, 1)  # one proposal: the base itself
    assert abs(float(z1.mean())) < 0.05
    z = prior.sample(4000, sampler="langevin", steps=400, step_size=0.3)  # relaxation: 1 / (0.3^2 / 2) steps
    assert abs(float(z.mean()) - 1.0) < 0.08 and abs(float(z.var()) - 1.0) < 0.15


def test_a_refitted_or_removed_base_is_refused():
    prior, gmm, model = linear_tilt()
    model.priors["gmm"] = GMMPrior(torch.ones(1), torch.full((1, 1), 0.5), torch.ones(1, 1, 1))
    with pytest.raises(Exception, match="refitted after the energy"):
        prior.sample(3, steps=0)
    model.priors.clear()
    with pytest.raises(Exception, match="no longer has"):
        prior.sample(3, steps=0)
    model.priors["gmm"] = gmm
    assert prior.sample(3, steps=1).shape == (3, 1)
    stored = EnergyPrior.from_stored(prior.to_json(), prior.tensors())
    assert stored.base == "gmm" and stored.base_sha256 == gmm.fingerprint()


# --- the CLI on a tiny bundle ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tilt")
    root = write_tiny_polymnist(tmp / "data", n_train=30, n_test=6)
    argv = ["train", "polymnist", "--out", tmp / "vae", "--data-root", root, "--epochs", "1", "--batch-size", "10"]
    code, _, err = run([*argv, "--latent-dim", "3", *CPU])
    assert code == 0, err
    return tmp, root


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_fit_ebm_tilts_the_bundles_gmm_fitting_it_when_missing(tiny, tmp_path, capsys):
    tmp, root = tiny
    r = tmp_path / "r"
    shutil.copytree(tmp / "vae", r)
    code, _, err = run(["fit-ebm", r, "--data-root", root, *TINY_FIT_EBM, *CPU], capsys)
    assert code == 0, err
    assert "fitting its base first" in err
    m = manifest(r)
    assert set(m["priors"]) == {"gmm", "ebm"}  # the default base, fitted here and stored with the energy
    ebm, gmm = m["priors"]["ebm"], m["priors"]["gmm"]
    assert ebm["prior"]["base"] == "gmm" and ebm["settings"]["fit"]["base"] == "gmm"
    assert ebm["settings"]["fit"]["ensemble"] == ebm["prior"]["energy"]["members"] == ENERGY_DEFAULTS.ensemble > 1
    assert gmm["settings"]["components"] == 10 and gmm["command"].endswith("(its base)")
    from mmvae_cli.model_io import load_model

    model, _ = load_model(r)
    assert ebm["prior"]["base_sha256"] == model.priors["gmm"].fingerprint()
    for extra in ([], ["--sampler", "sir", "--proposals", "7", "--steps", "0"]):
        out = tmp_path / f"s{len(extra)}.safetensors"
        code, _, err = run(["sample", r, "--prior", "ebm", "-n", "4", "--out", out, *extra, *CPU], capsys)
        assert code == 0, err
    # --out: the energy's bundle holds its base too
    child = tmp_path / "child"
    code, _, err = run(
        ["fit-ebm", r, "--out", child, "--objective", "nce", "--noise-ratio", "3", "--data-root", root]
        + [*TINY_FIT_EBM, *CPU],
        capsys,
    )
    assert code == 0, err
    mc = manifest(child)
    assert set(mc["priors"]) == {"gmm", "ebm"} and mc["priors"]["gmm"] == m["priors"]["gmm"]
    fit = mc["priors"]["ebm"]["settings"]["fit"]
    assert (fit["objective"], fit["noise_ratio"]) == ("nce", 3)
    code, _, err = run(
        ["sample", child, "--prior", "ebm", "-n", "4", "--out", tmp_path / "c.safetensors", *CPU], capsys
    )
    assert code == 0, err
    # refitting the base leaves an energy over a prior that is gone: refused in one line
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(
        ["fit-prior", r, "--kind", "gmm", "--components", "2", "--overwrite", "--data-root", root, *CPU], capsys
    )
    assert code == 0, err
    code, _, err = run(["sample", r, "--prior", "ebm", "-n", "4", "--out", tmp_path / "x.safetensors", *CPU], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "refitted after the energy" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--base", "gmm"], "fit one first with `mmvae fit-prior"),
        (["--base", "flow", "--objective", "nce"], "fit one first with `mmvae fit-prior"),
        (["--base", "gmm", "--objective", "sliced"], "tilts no prior"),
        (["--proposals", "0"], "--proposals"),
        (["--sampler", "mcmc"], "--sampler"),
        (["--persistent"], "--persistent keeps ml's negative chains"),
        (["--persistent", "--objective", "ml"], "--persistent chains need --base base"),
    ],
    ids=[
        "base-gmm-missing",
        "base-flow-missing",
        "base-with-score-matching",
        "proposals-0",
        "sampler-unknown",
        "persistent-with-nce",
        "persistent-over-a-fitted-base",
    ],
)
def test_bad_base_flags_are_one_line_and_write_nothing(tiny, capsys, argv, needle):
    tmp, root = tiny
    before = sorted(str(p) for p in (tmp / "vae").rglob("*"))
    code, _, err = run(["fit-ebm", tmp / "vae", *argv, "--data-root", root, *TINY_FIT_EBM, *CPU], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert sorted(str(p) for p in (tmp / "vae").rglob("*")) == before


def test_noise_conditional_energy_on_a_shared_latent(tiny, tmp_path, capsys):
    """fit-ebm --objective ncsn on a MoPoE latent (not only EB-MVAE's): a Gibbs energy over no base, sampled
    by annealed Langevin and by importance resampling from its stored Gaussian."""
    tmp, root = tiny
    r = tmp_path / "r"
    shutil.copytree(tmp / "vae", r)
    code, out, err = run(
        [
            "fit-ebm",
            r,
            "--objective",
            "ncsn",
            "--noise-levels",
            "3",
            "--json",
            "--data-root",
            root,
            *TINY_FIT_EBM,
            *CPU,
        ],
        capsys,
    )
    assert code == 0, err
    m = manifest(r)
    assert set(m["priors"]) == {"ebm"} and m["priors"]["ebm"]["prior"]["density"] == "gibbs"
    assert "base" not in m["priors"]["ebm"]["prior"] and len(m["priors"]["ebm"]["fit"]["sigmas"]) == 3
    for extra in ([], ["--sampler", "sir", "--proposals", "5", "--steps", "0"]):
        code, _, err = run(
            ["sample", r, "--prior", "ebm", "-n", "4", "--out", tmp_path / "n.png", *extra, *CPU], capsys
        )
        assert code == 0, err


def test_an_ensemble_energy_is_the_mean_of_members_fitted_each_by_its_own_loss(tiny, tmp_path, capsys):
    """fit-ebm --ensemble 3: E = (1/3) sum_k E_k, stored and loaded as one energy; the members start from
    their own initialisations and each learns only from its own nce loss, so they differ after the fit;
    a one-member energy's manifest is as before (no `members` key)."""
    tmp, root = tiny
    r = tmp_path / "r"
    shutil.copytree(tmp / "vae", r)
    code, _, err = run(["fit-ebm", r, "--ensemble", "3", "--data-root", root, *TINY_FIT_EBM, *CPU], capsys)
    assert code == 0, err
    m = manifest(r)["priors"]["ebm"]
    assert m["prior"]["energy"]["members"] == 3 and m["settings"]["fit"]["ensemble"] == 3
    from mmvae_cli.model_io import load_model

    net = load_model(r)[0].priors["ebm"].energy
    z = torch.randn(5, 3)
    members = torch.stack([net.member(k)(z) for k in range(3)])
    torch.testing.assert_close(net(z), members.mean(0))
    assert (members[0] - members[1]).abs().max() > 1e-4 and (members[1] - members[2]).abs().max() > 1e-4
    # one member's gradient is its own loss's: the summed loss does not couple the members
    zq, zb = torch.randn(8, 3), torch.randn(8, 3)
    net.requires_grad_(True)
    total = sum(nce_loss(net.member(k), zq, zb) for k in range(3))
    g_total = torch.autograd.grad(total, list(net.nets[1].parameters()))
    g_own = torch.autograd.grad(nce_loss(net.member(1), zq, zb), list(net.nets[1].parameters()))
    for a, b in zip(g_total, g_own):
        torch.testing.assert_close(a, b)
    code, _, err = run(["sample", r, "--prior", "ebm", "-n", "4", "--out", tmp_path / "e.safetensors", *CPU], capsys)
    assert code == 0, err
    assert "members" not in EnergyConfig(dim=3).to_dict()
    with pytest.raises(Exception, match="noise-conditional"):
        EnergyConfig(dim=3, members=2, noise_levels=3)
