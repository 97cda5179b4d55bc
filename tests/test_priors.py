"""priors/: the registry, the GMM (exact against scikit-learn), the flow (fits a 2-d toy), storage
through safetensors, and `fit-prior` / `sample|eval --prior KIND` end to end on a tiny bundle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers_cli import TINY_FIT_EBM, run, write_tiny_polymnist
from helpers_data import SampleBank
from safetensors.torch import load_file, save_file

from mmvae_cli import config, priors
from mmvae_cli.errors import MMVAEError


def two_moons_ish(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n // 2, 2, generator=g) * 0.3 + torch.tensor([2.0, 0.5])
    b = torch.randn(n // 2, 2, generator=g) * torch.tensor([0.6, 0.2]) - torch.tensor([1.0, 1.0])
    return torch.cat([a, b])


# --- the registry ------------------------------------------------------------------------------------
def test_registry_lists_every_kind_and_refuses_unknown_ones():
    assert priors.names() == ("base", "ebm", "gmm", "flow")
    assert priors.fittable() == ("ebm", "gmm", "flow")
    with pytest.raises(MMVAEError, match="unknown prior 'nope'; choose one of base, ebm, gmm, flow"):
        priors.get("nope")
    assert priors.get("gmm").tractable and priors.get("flow").tractable and not priors.get("ebm").tractable


# --- gmm ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cov", ["full", "diag", "tied", "spherical"])
def test_gmm_log_prob_equals_sklearn_score_samples(cov):
    from sklearn.mixture import GaussianMixture

    z = two_moons_ish().double()
    gm = GaussianMixture(3, covariance_type=cov, random_state=0).fit(z.numpy())
    p = priors.get("gmm").from_sklearn(gm)
    pts = torch.randn(200, 2, dtype=torch.float64) * 2
    np.testing.assert_allclose(p.log_prob(pts).numpy(), gm.score_samples(pts.numpy()), rtol=0, atol=1e-9)


def test_gmm_samples_have_the_mixture_moments():
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    mu = torch.tensor([[2.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    cov = torch.stack([torch.tensor([[0.5, 0.2], [0.2, 0.3]]), torch.eye(2) * 0.1]).double()
    p = priors.get("gmm")(w, mu, cov)
    torch.manual_seed(0)
    z = p.sample(40000).double()
    mean = (w[:, None] * mu).sum(0)
    second = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0)
    torch.testing.assert_close(z.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), second - mean[:, None] * mean[None], atol=0.03, rtol=0)


def test_fitted_priors_round_trip_through_safetensors(tmp_path):
    bank = SampleBank(two_moons_ish())
    gmm, stats = priors.get("gmm").fit(bank, config.PriorFitSettings(), config.GMMSettings(components=2))
    assert stats["converged"] and stats["samples"] == 600
    flow, fstats = priors.get("flow").fit(
        bank, config.PriorFitSettings(), config.FlowSettings(epochs=2, batch_size=200, flow_hidden=8)
    )
    pts = torch.randn(50, 2)
    for p in (gmm, flow):
        path = tmp_path / f"{p.kind}.safetensors"
        save_file(p.tensors(), path)  # safetensors: tensors only, nothing pickled
        settings = json.loads(json.dumps(p.to_json()))  # the manifest's JSON
        q = type(p).from_stored(settings, load_file(path))
        assert torch.equal(p.log_prob(pts), q.log_prob(pts))
        torch.manual_seed(1)
        a = p.sample(5)
        torch.manual_seed(1)
        assert torch.equal(a, q.sample(5))
    assert b"pickle" not in (tmp_path / "flow.safetensors").read_bytes()[:2000]


# --- flow --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["maf", "nsf"])
def test_flow_fits_a_2d_toy_better_than_the_base_prior(kind):
    z = two_moons_ish()
    bank = SampleBank(z)
    s = config.FlowSettings(flow=kind, epochs=40 if kind == "maf" else 25, batch_size=100, flow_hidden=32, transforms=2)
    flow, stats = priors.get("flow").fit(bank, config.PriorFitSettings(seed=1), s)
    held_out = two_moons_ish(seed=7)
    ll = flow.log_prob(held_out).mean().item()
    base = torch.distributions.Normal(0.0, 1.0).log_prob(held_out).sum(-1).mean().item()
    gauss = torch.distributions.MultivariateNormal(z.mean(0), torch.cov(z.T)).log_prob(held_out).mean().item()
    assert stats["nll_last"] < stats["nll_first"]
    assert ll > base + 1.0 and ll > gauss + 0.2, (ll, base, gauss)


# --- the CLI on a tiny bundle ------------------------------------------------------------------------
CPU = ["--device", "cpu"]
FLOW = ["--kind", "flow", "--epochs", "2", "--batch-size", "10", "--flow-hidden", "8", "--transforms", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("priors")
    root = write_tiny_polymnist(tmp / "data", n_train=30, n_test=6)
    code, _, err = run(
        [
            "train",
            "polymnist",
            "--out",
            tmp / "vae",
            "--data-root",
            root,
            "--epochs",
            "1",
            "--batch-size",
            "10",
            "--latent-dim",
            "3",
            *CPU,
        ]
    )
    assert code == 0, err
    return tmp, root


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def snapshot(folder):
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fit_prior_sample_and_likelihood_end_to_end(tiny, tmp_path, capsys):
    import shutil

    tmp, root = tiny
    r = tmp_path / "r"
    shutil.copytree(tmp / "vae", r)
    code, out, err = run(
        ["fit-prior", r, "--kind", "gmm", "--components", "2", "--draws", "2", "--data-root", root, "--json", *CPU],
        capsys,
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["kind"] == "gmm" and res["prior"]["components"] == 2 and res["samples"] == 60 and res["seconds"] >= 0
    assert np.isfinite(res["log_lik"]) and np.isfinite(res["base_log_lik"])  # fresh draws under both densities
    log = tmp_path / "fit.jsonl"
    code, out, err = run(["fit-prior", r, *FLOW, "--data-root", root, "--log-jsonl", log, *CPU], capsys)
    assert code == 0, err
    assert "flow prior fitted in" in out and "base prior p0" in out
    assert [json.loads(x)["event"] for x in log.read_text().splitlines()] == ["fit-prior-flow-epoch"] * 2
    m = manifest(r)
    assert set(m["priors"]) == {"gmm", "flow"}
    assert m["priors"]["flow"]["prior"] == {"dim": 3, "flow": "maf", "transforms": 1, "hidden": 8, "layers": 2}
    assert m["priors"]["gmm"]["settings"]["components"] == 2 and m["priors"]["gmm"]["seconds"] >= 0
    assert {"prior-gmm.safetensors", "prior-flow.safetensors"} <= set(m["files"])
    assert "prior_fit_state" not in m and not (r / "prior-checkpoint.safetensors").exists()
    assert m["files"]["model.safetensors"] == manifest(tmp / "vae")["files"]["model.safetensors"]  # VAE frozen
    from mmvae_cli.model_io import load_model

    model, _ = load_model(r)
    assert model.available_priors() == ["base", "gmm", "flow"]
    assert model.sample_latents(4, prior="flow").shape == (4, 3)
    for kind in ("gmm", "flow"):
        code, _, err = run(
            ["sample", r, "--prior", kind, "-n", "4", "--out", tmp_path / f"{kind}.safetensors", *CPU], capsys
        )
        assert code == 0, err
        assert load_file(tmp_path / f"{kind}.safetensors")["generated.m0"].shape == (4, 3, 28, 28)
    code, out, err = run(
        ["eval", "likelihood", r, "--prior", "gmm", "--k", "2", "--limit", "3", "--data-root", root, "--json", *CPU],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["prior"] == "gmm"
    code, out, err = run(
        ["eval", "likelihood", r, "--k", "2", "--limit", "3", "--data-root", root, "--json", *CPU], capsys
    )
    assert code == 0 and json.loads(out)["prior"] == "base"
    code, out, err = run(["compare", r], capsys)
    assert code == 0 and "2 / 3 / base" in out
    # a second fit of a kind needs --overwrite
    code, _, err = run(["fit-prior", r, "--kind", "gmm", "--components", "2", "--data-root", root, *CPU], capsys)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1


def test_gmm_n_init_keeps_the_run_with_the_highest_lower_bound(tiny, tmp_path, capsys):
    """--n-init N: N EM runs from k-means starts drawn from one seeded generator, the first of them the
    single run of --n-init 1; the kept one has the highest training lower bound, so at least that run's."""
    import shutil

    tmp, root = tiny
    bounds = {}
    for n in (1, 4):
        r = tmp_path / f"n{n}"
        shutil.copytree(tmp / "vae", r)
        argv = ["fit-prior", r, "--kind", "gmm", "--components", "3", "--n-init", str(n), "--seed", "1"]
        code, out, err = run([*argv, "--data-root", root, "--json", *CPU], capsys)
        assert code == 0, err
        bounds[n] = json.loads(out)["lower_bound"]
        assert manifest(r)["priors"]["gmm"]["settings"]["n_init"] == n
    assert bounds[4] >= bounds[1]


def test_fit_prior_out_makes_a_prior_only_bundle(tiny, tmp_path, capsys):
    tmp, root = tiny
    child = tmp_path / "child"
    code, _, err = run(
        ["fit-prior", tmp / "vae", "--kind", "gmm", "--components", "2", "--out", child, "--data-root", root, *CPU],
        capsys,
    )
    assert code == 0, err
    assert set(manifest(child)["files"]) == {"prior-gmm.safetensors"} and "priors" not in manifest(tmp / "vae")
    assert run(["sample", child, "--prior", "gmm", "-n", "2", "--out", tmp_path / "c.png", *CPU], capsys)[0] == 0


BAD = [
    ("unknown kind", ["sample", "{vae}", "--prior", "nope", "-n", "2", "--out", "{tmp}/s.png"], "'nope' is not one of"),
    (
        "unfitted kind",
        ["sample", "{vae}", "--prior", "gmm", "-n", "2", "--out", "{tmp}/s.png"],
        "has no gmm prior; fit one with `mmvae fit-prior",
    ),
    (
        "unfitted flow in eval",
        ["eval", "likelihood", "{vae}", "--prior", "flow", "--k", "2", "--data-root", "{root}"],
        "fit-prior {vae} --kind flow",
    ),
    ("unfittable kind", ["fit-prior", "{vae}", "--kind", "base", "--data-root", "{root}"], "'base' is not one of"),
    (
        "components 0",
        ["fit-prior", "{vae}", "--kind", "gmm", "--components", "0", "--data-root", "{root}"],
        "--components must be >= 1, got 0",
    ),
    (
        "too many components",
        ["fit-prior", "{vae}", "--kind", "gmm", "--components", "31", "--data-root", "{root}"],
        "more components than posterior samples (30)",
    ),
    (
        "flow flag for gmm",
        ["fit-prior", "{vae}", "--kind", "gmm", "--epochs", "3", "--data-root", "{root}"],
        "--epochs applies to --kind ebm or flow, not gmm",
    ),
    ("lr 0", ["fit-prior", "{vae}", *FLOW, "--lr", "0", "--data-root", "{root}"], "--lr must be > 0"),
    (
        "ebm likelihood",
        ["eval", "likelihood", "{erun}", "--prior", "ebm", "--data-root", "{root}"],
        "no known normaliser",
    ),
    (
        "langevin flags for gmm",
        ["sample", "{grun}", "--prior", "gmm", "--steps", "3", "--out", "{tmp}/s.png"],
        "need --prior ebm",
    ),
    (
        "out is run",
        ["fit-prior", "{vae}", "--kind", "gmm", "--out", "{vae}", "--data-root", "{root}"],
        "--out must differ from RUN",
    ),
]


@pytest.fixture(scope="module")
def bad_bundles(tiny):
    import shutil

    tmp, root = tiny
    erun, grun = tmp / "erun", tmp / "grun"
    shutil.copytree(tmp / "vae", erun)
    assert run(["fit-ebm", erun, "--data-root", root, *TINY_FIT_EBM, *CPU])[0] == 0
    shutil.copytree(tmp / "vae", grun)
    assert run(["fit-prior", grun, "--kind", "gmm", "--components", "2", "--data-root", root, *CPU])[0] == 0
    return {"vae": tmp / "vae", "erun": erun, "grun": grun, "root": root, "tmp": tmp}


@pytest.mark.parametrize("what,argv,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(bad_bundles, capsys, what, argv, needle):
    tmp = bad_bundles["tmp"]
    before = snapshot(tmp)
    args = [a.format(**bad_bundles) for a in argv] + CPU
    code, _, err = run(args, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle.format(**bad_bundles) in err, err
    assert snapshot(tmp) == before


# --- SIGTERM -> checkpoint -> exit 75 -> --resume ---------------------------------------------------------
def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("MMVAE_DEBUG", None)
    return env


def test_flow_fit_sigterm_then_resume_is_bit_identical(tiny, tmp_path, capsys):
    tmp, root = tiny
    fit = [
        "fit-prior",
        tmp / "vae",
        *FLOW[:2],
        "--epochs",
        "3",
        "--batch-size",
        "3",
        "--flow-hidden",
        "8",
        "--seed",
        "4",
        "--data-root",
        root,
        *CPU,
    ]  # 10 steps per epoch
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    p = subprocess.Popen(
        [sys.executable, "-m", "mmvae_cli", *map(str, fit), "--out", killed, "--step-delay", "0.1"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 90
    while not (killed / "prior-checkpoint.safetensors").exists():  # epoch 1 done: now inside epoch 2
        assert p.poll() is None and time.time() < deadline, p.communicate()[1]
        time.sleep(0.01)
    time.sleep(0.25)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 75, err
    assert err.strip().splitlines()[-1].startswith("error: stopped by signal") and "Traceback" not in err
    state = manifest(killed)["prior_fit_state"]
    assert state["kind"] == "flow" and state["epoch"] == 1 and 0 < state["start"] < 30, state
    code, _, err = run(["sample", killed, "--prior", "flow", "-n", "2", "--out", tmp_path / "s.png", *CPU], capsys)
    assert code == 2 and "fit-prior" in err and "--resume" in err and len(err.strip().splitlines()) == 1, err
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run([*fit, "--out", ref])[0] == 0
        assert (
            run(["fit-prior", tmp / "vae", "--kind", "flow", "--out", killed, "--resume", "--data-root", root, *CPU])[0]
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    a, b = load_file(ref / "prior-flow.safetensors"), load_file(killed / "prior-flow.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = manifest(ref), manifest(killed)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(ma["priors"]["flow"]["fit"]["history"]) == strip(mb["priors"]["flow"]["fit"]["history"])
    assert "prior_fit_state" not in mb and not (killed / "prior-checkpoint.safetensors").exists()


@pytest.mark.parametrize(
    "model,flags",
    [
        ("mmvae", ["--fusion", "moe", "--objective", "iwae", "--latent-dim", "3"]),
        ("mmvaeplus", ["--fusion", "moe", "--objective", "dreg", "--latent-dim", "3", "--private-dim", "2"]),
    ],
)
def test_every_prior_kind_samples_mmvae_and_mmvaeplus_bundles(tiny, tmp_path, capsys, model, flags):
    """`sample --prior KIND` for base, gmm, flow and ebm on MoE bundles (MoPoE: the test above); MMVAE+'s
    priors are fitted to the shared z (dim 3), its private w still come from p(w)."""
    tmp, root = tiny
    r = tmp_path / model
    common = ["--data-root", root, *CPU]
    code, _, err = run(["train", "polymnist", "--out", r, "--epochs", "1", "--batch-size", "10", *flags, *common])
    assert code == 0, err
    fits = {
        "gmm": ["fit-prior", r, "--kind", "gmm", "--components", "2"],
        "flow": ["fit-prior", r, *FLOW],
        "ebm": ["fit-ebm", r, "--energy-hidden", "8", "--epochs", "1", "--langevin-steps", "3"],
    }
    for kind, argv in fits.items():
        code, _, err = run([*argv, *common], capsys)
        assert code == 0, f"{kind}: {err}"
    from mmvae_cli.model_io import load_model

    vae, _ = load_model(r)
    assert set(vae.available_priors()) == {"base", "gmm", "flow", "ebm"}
    for kind in ("base", "gmm", "flow", "ebm"):
        assert vae.sample_latents(5, prior=kind).shape == (5, 3)
        out = tmp_path / f"{model}-{kind}.safetensors"
        code, _, err = run(["sample", r, "--prior", kind, "-n", "4", "--out", out, *CPU], capsys)
        assert code == 0, f"{kind}: {err}"
        gen = load_file(out)
        assert set(gen) == {f"generated.m{i}" for i in range(5)} and gen["generated.m0"].shape == (4, 3, 28, 28)
        assert all(bool(v.isfinite().all()) for v in gen.values())
