"""`mmvae fit-ebm`, `sample --prior ebm`, `train --prior ebm` and EB-MVAE (`--fusion none`) on tiny data."""

import json
import shutil

import pytest
import torch
from helpers_cli import run, write_tiny_polymnist
from PIL import Image

from mmvae_cli.model_io import load_model

TINY_EBM = ["--energy-hidden", "16", "--epochs", "2", "--langevin-steps", "5", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ebmcli")
    root = write_tiny_polymnist(tmp / "data", n_train=40, n_test=10)
    common = ["--data-root", root, "--epochs", "1", "--batch-size", "20", "--device", "cpu"]
    for name, extra in (("mopoe", ["--latent-dim", "6"]), ("none", ["--fusion", "none", "--latent-dim", "2"])):
        assert run(["train", "polymnist", "--out", tmp / name, *common, *extra])[0] == 0
    assert (
        run(
            [
                "classifier",
                "train",
                "polymnist",
                "--data-root",
                root,
                "--out",
                tmp / "clf",
                "--epochs",
                "1",
                "--device",
                "cpu",
            ]
        )[0]
        == 0
    )
    return tmp, root


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def energy_section(path):
    """The bundle's energy (manifest priors.ebm): its prior settings, the fit's settings and statistics."""
    s = manifest(path)["priors"]["ebm"]
    return {**s["prior"], "fit": s.get("settings", {}).get("fit"), "stats": s.get("fit")}


def ebm_coherence(bundle, runs, capsys):
    """`mmvae eval coherence BUNDLE --prior ebm --json` (3 Langevin steps, 10 joint samples): (code, out, err)."""
    tmp, root = runs
    argv = ["eval", "coherence", bundle, "--classifiers", tmp / "clf", "--prior", "ebm", "--steps", "3"]
    return run([*argv, "--n-joint", "10", "--data-root", root, "--json", "--device", "cpu"], capsys)


def test_fit_ebm_round_trips_the_bundle(runs, capsys):
    tmp, root = runs
    r = tmp / "rt"
    shutil.copytree(tmp / "mopoe", r)
    code, out, err = run(
        ["fit-ebm", r, "--data-root", root, "--json", *TINY_EBM, "--classifiers", tmp / "clf", "--n-joint", "20"],
        capsys,
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["objective"] == "nce" and res["density"] == "tilted" and res["loss_curve"]["epochs"] == 2
    assert set(res["joint_coherence"]) == {"base", "ebm", "n_joint"}
    m, ebm = manifest(r), energy_section(r)
    assert ebm["energy"] == {"dim": 6, "hidden": 16, "layers": 4, "activation": "gelu", "members": 5}
    assert ebm["langevin"]["steps"] == 5 and ebm["training"] == "post-hoc"
    assert m["files"]["prior-ebm.safetensors"]["sha256"]
    assert m["files"]["model.safetensors"] == manifest(tmp / "mopoe")["files"]["model.safetensors"]  # VAE frozen
    model, _ = load_model(r)
    from safetensors.torch import load_file

    saved = load_file(r / "prior-ebm.safetensors")
    assert set(saved) == set(model.priors["ebm"].state_dict())
    for k, v in model.priors["ebm"].state_dict().items():
        assert v.equal(saved[k])
    assert model.priors["ebm"].langevin_settings["steps"] == 5
    # sample from it, with the chain figure: 8 chains x 5 modalities rows, steps/every + 1 columns
    code, _, err = run(
        [
            "sample",
            r,
            "--prior",
            "ebm",
            "-n",
            "9",
            "--out",
            tmp / "s.png",
            "--save-chain",
            tmp / "chain.png",
            "--chain-every",
            "1",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    w, h = Image.open(tmp / "chain.png").size
    assert h == 8 * 5 * 30 + 2 and w == 6 * 30 + 2
    code, out, _ = ebm_coherence(r, runs, capsys)
    assert code == 0 and json.loads(out)["prior"] == "ebm" and json.loads(out)["langevin"] == {"steps": 3}
    # a second fit needs --overwrite
    code, _, err = run(["fit-ebm", r, "--data-root", root, *TINY_EBM], capsys)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1


def test_fit_ebm_out_refers_to_its_parent_by_fingerprint(runs, capsys):
    tmp, root = runs
    parent, child = tmp / "parent", tmp / "child"
    shutil.copytree(tmp / "mopoe", parent)
    assert run(["fit-ebm", parent, "--out", child, "--data-root", root, *TINY_EBM], capsys)[0] == 0
    m = manifest(child)  # the energy and the gmm it tilts, fitted first (RUN has none), RUN untouched
    assert set(m["files"]) == {"prior-ebm.safetensors", "prior-gmm.safetensors"} and "priors" not in manifest(parent)
    assert m["parent"]["model_sha256"] == manifest(parent)["files"]["model.safetensors"]["sha256"]
    assert (
        run(["sample", child, "--prior", "ebm", "-n", "2", "--out", tmp / "c.png", "--device", "cpu"], capsys)[0] == 0
    )
    pm = manifest(parent)  # the parent is retrained: its weights change, the child refuses to load
    pm["files"]["model.safetensors"]["sha256"] = "0" * 64
    (parent / "manifest.json").write_text(json.dumps(pm))
    code, _, err = run(["sample", child, "--prior", "ebm", "-n", "2", "--out", tmp / "c2.png"], capsys)
    assert code == 2 and "parent" in err and "fit-ebm" in err
    code, _, err = run(["fit-ebm", child, "--data-root", root, *TINY_EBM], capsys)
    assert code == 2 and "energy-only bundle" in err


@pytest.mark.parametrize(
    "what, argv, needle",
    [
        ("classifier bundle", ["fit-ebm", "{clf}"], "expected 'mmvae'"),
        ("no weights yet", ["fit-ebm", "{fresh}"], "no trained weights"),
        ("exact on a big latent", ["fit-ebm", "{big}", "--objective", "exact"], "sliced or denoising"),
        (
            "score matching with a non-smooth energy",
            ["fit-ebm", "{mopoe}", "--objective", "sliced", "--energy-activation", "leaky_relu"],
            "twice-differentiable",
        ),
    ],
)
def test_fit_ebm_refuses_what_it_cannot_fit(runs, capsys, what, argv, needle):
    tmp, root = runs
    fresh = tmp / "fresh"
    if not fresh.exists():
        run(
            [
                "train",
                "polymnist",
                "--data-root",
                root,
                "--out",
                fresh,
                "--epochs",
                "2",
                "--batch-size",
                "20",
                "--latent-dim",
                "4",
                "--max-steps",
                "1",
                "--device",
                "cpu",
            ]
        )
    big = tmp / "big"
    if not big.exists():  # a 129-dimensional latent: over the exact objective's limit of 128
        shutil.copytree(tmp / "mopoe", big)
        m = manifest(big)
        m["model"]["latent_dim"] = 129
        (big / "manifest.json").write_text(json.dumps(m))
    args = [a.format(clf=tmp / "clf", fresh=fresh, big=big, mopoe=tmp / "mopoe") for a in argv]
    code, _, err = run([*args, "--data-root", root, "--device", "cpu"], capsys)
    assert code == 2, what
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and needle in lines[-1] and "Traceback" not in err, err
    assert "priors" not in manifest(tmp / "mopoe")


def test_a_diverging_chain_is_reported_and_nothing_is_written(runs, capsys):
    tmp, root = runs
    r = tmp / "div"
    shutil.copytree(tmp / "mopoe", r)
    before = (r / "manifest.json").read_bytes()
    code, _, err = run(
        ["fit-ebm", r, "--data-root", root, *TINY_EBM, "--objective", "ml", "--step-size", "1e4"], capsys
    )
    assert code == 3
    assert err.strip().splitlines()[-1].startswith("error: Langevin chain diverged") and "--step-size" in err
    assert (r / "manifest.json").read_bytes() == before and not (r / "prior-ebm.safetensors").exists()
    persistent = ["--persistent", "--base", "base", "--objective", "ml"]
    assert run(["fit-ebm", r, "--data-root", root, *TINY_EBM, *persistent], capsys)[0] == 0
    assert energy_section(r)["fit"]["persistent"] is True
    code, _, err = run(
        ["sample", r, "--prior", "ebm", "--step-size", "1e4", "-n", "4", "--out", tmp / "d.png", "--device", "cpu"],
        capsys,
    )
    assert code == 3 and "diverged" in err and not (tmp / "d.png").exists()


def test_eb_mvae_fit_cross_generate_and_coherence(runs, capsys):
    tmp, root = runs
    r = tmp / "ebmvae"
    shutil.copytree(tmp / "none", r)
    m = manifest(r)
    assert m["model"]["fusion"] == "none" and m["model"]["beta"] == 0.1  # the EB-MVAE recipe
    for objective in ("exact", "sliced", "denoising"):
        code, out, err = run(
            ["fit-ebm", r, "--objective", objective, "--overwrite", "--json", "--data-root", root, *TINY_EBM], capsys
        )
        assert code == 0, err
        assert json.loads(out)["density"] == "gibbs"
    ebm = energy_section(r)
    assert ebm["energy"]["dim"] == 10 and ebm["energy"]["activation"] == "softplus"
    model, _ = load_model(r)
    assert model.priors["ebm"].init_scale.shape == (10,) and (model.priors["ebm"].init_scale > 0).all()
    code, _, err = run(
        [
            "cross-generate",
            r,
            "--given",
            "m0,m1",
            "-n",
            "3",
            "--out",
            tmp / "x.safetensors",
            "--steps",
            "4",
            "--data-root",
            root,
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    code, out, err = ebm_coherence(r, runs, capsys)
    assert code == 0, err
    assert set(json.loads(out)["conditional"]) == {"1", "2", "3", "4"}
    code, _, err = run(
        ["train", "polymnist", "--fusion", "none", "--prior", "ebm", "--out", tmp / "no", "--data-root", root], capsys
    )
    assert code == 2 and "fit-ebm" in err


def test_joint_training_writes_and_resumes_the_energy(runs, capsys):
    tmp, root = runs
    out = tmp / "joint"
    args = [
        "train",
        "polymnist",
        "--prior",
        "ebm",
        "--fusion",
        "moe",
        "--objective",
        "elbo",
        "--data-root",
        root,
        "--out",
        out,
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--latent-dim",
        "4",
        "--energy-hidden",
        "8",
        "--langevin-steps",
        "3",
        "--device",
        "cpu",
    ]
    assert run(args + ["--max-steps", "1"], capsys)[0] == 0
    code, _, err = run(["train", "polymnist", "--out", out, "--resume", "--data-root", root, "--device", "cpu"], capsys)
    assert code == 0, err
    m = manifest(out)
    assert energy_section(out)["training"] == "joint" and energy_section(out)["density"] == "tilted"
    assert m["settings"]["joint"]["ebm_lr"] == 2e-5 and m["settings"]["joint"]["ebm_betas"] == [0.5, 0.999]
    assert m["settings"]["joint"]["reg"] == 1.0 and m["settings"]["langevin"]["steps"] == 3
    assert m["settings"]["joint"]["reg_on"] == "gauge" and m["settings"]["joint"]["feedback"] == 0.5
    assert {"prior-ebm.safetensors", "model.safetensors"} <= set(m["files"])
    assert "ebm_ml" in m["history"][-1] and "energy_q" in m["history"][-1] and m["epochs_done"] == 1
    model, _ = load_model(out)
    assert model.train_prior is model.priors["ebm"] and model.train_prior.trained_with_vae
    code, _, err = run(["fit-ebm", out, "--data-root", root, *TINY_EBM], capsys)
    assert code == 2 and "jointly" in err


def test_eb_mvae_ncsn_energy_is_stored_and_sampled_by_annealed_langevin(runs, capsys):
    tmp, root = runs
    r = tmp / "ncsn"
    shutil.copytree(tmp / "none", r)
    code, out, err = run(
        ["fit-ebm", r, "--objective", "ncsn", "--noise-levels", "3", "--json", "--data-root", root, *TINY_EBM], capsys
    )
    assert code == 0, err
    assert json.loads(out)["density"] == "gibbs"
    ebm = energy_section(r)
    sigmas = ebm["stats"]["sigmas"]
    assert ebm["energy"]["noise_levels"] == 3 and ebm["energy"]["standardise"] is True
    assert ebm["fit"]["objective"] == "ncsn" and len(sigmas) == 3
    assert ebm["langevin"]["steps"] == 5 and ebm["langevin"]["step_size"] == 0.8  # ncsn's default ratio
    assert sigmas[0] > sigmas[-1] > 0 and sigmas[0] == pytest.approx(1.0, rel=1e-4)
    model, _ = load_model(r)
    prior = model.priors["ebm"]
    assert prior.energy.sigmas.tolist() == pytest.approx(sigmas)
    assert torch.allclose(prior.energy.shift, prior.init_loc)
    code, _, err = run(
        ["sample", r, "--prior", "ebm", "-n", "4", "--out", tmp / "n.png", "--steps", "6", "--device", "cpu"], capsys
    )
    assert code == 0, err
    denoise = ["--steps", "3", "--denoise", f"{sigmas[-1]:.6g}", "--device", "cpu"]  # its smallest level, as printed
    code, _, err = run(["sample", r, "--prior", "ebm", "-n", "4", "--out", tmp / "d.png", *denoise], capsys)
    assert code == 0, err  # (any other --denoise: tests/test_bad_input.py)
    code, _, err = run(["cross-generate", r, "--given", "m0", "--out", tmp / "c.png", "--data-root", root, *denoise])
    assert code == 0, err
    code, out, err = ebm_coherence(r, runs, capsys)
    assert code == 0, err
    res = json.loads(out)
    assert set(res["conditional"]) == {"1", "2", "3", "4"}
    assert set(res["per_target_by_inputs"]["m2"]) == {"1", "2", "3", "4"}


@pytest.mark.parametrize("objective", ["denoising", "ncsn"])
def test_ebmvae_diagnosis_script_on_a_tiny_bundle(runs, capsys, objective):
    import importlib.util
    from pathlib import Path

    tmp, root = runs
    r = tmp / f"diag-{objective}"
    shutil.copytree(tmp / "none", r)
    code, _, err = run(["fit-ebm", r, "--objective", objective, "--data-root", root, *TINY_EBM], capsys)
    assert code == 0, err
    path = Path(__file__).parents[1] / "benchmarks" / "ebmvae_diagnosis.py"
    spec = importlib.util.spec_from_file_location("ebmvae_diagnosis", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = [str(r), "--classifiers", str(tmp / "clf"), "--data-root", str(root), "--n-test", "8", "--n-probe", "30"]
    res = mod.main([*argv, "--steps", "0,2,3", "--step-sizes", "0.1"])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(res))
    assert "| oracle: same-digit posterior mean |" in out and "Langevin 3 steps, size 0.1" in out
    assert set(res["a"]) == {"m0", "m1", "m2", "m3", "m4", "all"}
    assert set(res["b_knn"]["by_inputs"]) == {"1", "2", "3", "4"}
    assert [c["steps"] for c in res["c"]] == [0, 2, 3]
    for c in res["c"]:
        assert 0 <= c["joint"] <= 1 and set(c["per_target_by_inputs"]["m2"]) == {"1", "2", "3", "4"}
    oracle = res["b_oracle"]
    assert oracle["per_target_by_inputs"]["m4"]["1"] == oracle["per_target"]["m4"]  # the oracle ignores k
    if objective == "denoising":  # the stored Tweedie step: each row judged with and without it
        assert res["ebm"]["denoise"] == 0.25 and all("raw" in c for c in res["c"] if c["steps"])
        # --smoothed: the smoothed aggregate posterior as the energy, exactly a Gaussian mixture's -log density
        res = mod.main([*argv, "--steps", "2", "--step-sizes", "0.1", "--smoothed", "0.3"])
        capsys.readouterr()
        assert [c["steps"] for c in res["c"]] == [2]
        from mmvae_cli.data import load_dataset
        from mmvae_cli.priors.bank import ExpertBank

        model, _ = load_model(r)
        bank = ExpertBank(model, load_dataset("polymnist", "train", str(root)), "cpu")
        energy = mod.SmoothedAggregate(bank, 0.3)
        n = bank.loc.shape[1]
        loc = bank.loc.permute(1, 0, 2).reshape(n, -1)
        std = (bank.scale.permute(1, 0, 2).reshape(n, -1) ** 2 + 0.09).sqrt()
        mix = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(logits=torch.zeros(n)),
            torch.distributions.Independent(torch.distributions.Normal(loc, std), 1),
        )
        z = loc[:5] + torch.randn(5, loc.shape[1])
        de, dl = energy(z) - energy(z[:1]), -(mix.log_prob(z) - mix.log_prob(z[:1]))
        torch.testing.assert_close(de, dl, rtol=1e-4, atol=1e-3)


def test_eb_mvae_defaults_to_its_measured_denoising_energy_and_langevin(runs, capsys):
    from mmvae_cli import config

    tmp, root = runs
    r = tmp / "default-objective"
    shutil.copytree(tmp / "none", r)
    code, out, err = run(["fit-ebm", r, "--json", "--data-root", root, "--epochs", "1"], capsys)
    assert code == 0, err
    ebm = energy_section(r)
    want = config.EBMVAE_DENOISING_LANGEVIN
    assert ebm["fit"]["objective"] == "denoising" and ebm["energy"]["hidden"] == config.EBMVAE_FIT["energy_hidden"]
    assert ebm["langevin"]["steps"] == want["steps"] and ebm["langevin"]["step_size"] == want["step_size"]
    assert ebm["langevin"]["denoise"] == config.default_of(config.FitSettings, "sigma")
    assert config.FitSettings().resolved("none").epochs == config.EBMVAE_FIT["epochs"]
    assert config.FitSettings().resolved("mopoe").epochs == 20
    assert config.FitSettings(objective="exact").resolved("none").epochs == 20


def test_eb_mvae_denoising_stores_its_tweedie_step_and_sample_takes_denoise(runs, capsys):
    """fit-ebm --objective denoising on an EB-MVAE bundle stores a last Tweedie step at its sigma (the
    measured default); --denoise overrides it at fit and at sampling time, and 0 turns it off."""
    tmp, root = runs
    r = tmp / "tweedie"
    shutil.copytree(tmp / "none", r)
    argv = ["fit-ebm", r, "--objective", "denoising", "--sigma", "0.2", "--data-root", root, *TINY_EBM]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert energy_section(r)["langevin"]["denoise"] == 0.2
    code, _, err = run([*argv, "--overwrite", "--denoise", "0"], capsys)
    assert code == 0, err
    assert energy_section(r)["langevin"]["denoise"] == 0.0
    outs = {}
    for den in ("0", "0.5"):
        out = tmp / f"tw-{den}.safetensors"
        argv = ["sample", r, "--prior", "ebm", "-n", "4", "--steps", "3", "--denoise", den, "--out", out]
        code, _, err = run([*argv, "--seed", "1", "--device", "cpu"], capsys)
        assert code == 0, err
        from safetensors.torch import load_file

        outs[den] = load_file(out)
    assert not torch.equal(outs["0"]["generated.m0"], outs["0.5"]["generated.m0"])


def test_maximum_likelihood_negatives_are_the_chains_states_whatever_denoise(runs, capsys):
    """--denoise is stored for sampling; eq. 10's negatives during the fit are the Langevin states, so the
    fitted energy is the same bit for bit with and without it."""
    from safetensors.torch import load_file

    tmp, root = runs
    weights = {}
    for den in ("0", "0.5"):
        r = tmp / f"ml-denoise-{den}"
        shutil.copytree(tmp / "mopoe", r)
        code, _, err = run(["fit-ebm", r, "--denoise", den, "--data-root", root, *TINY_EBM], capsys)
        assert code == 0, err
        assert energy_section(r)["langevin"]["denoise"] == float(den)
        weights[den] = load_file(r / "prior-ebm.safetensors")
    assert weights["0"].keys() == weights["0.5"].keys()
    assert all(torch.equal(weights["0"][k], weights["0.5"][k]) for k in weights["0"])


def test_fit_prior_kind_ebm_is_fit_ebm(runs, capsys):
    """`fit-prior --kind ebm` is fit-ebm's job with fit-ebm's flags: the same seed gives the same energy bit
    for bit, the same JSON and the same manifest section (but for its command line and times)."""
    from safetensors.torch import load_file

    tmp, root = runs
    flags = [
        "--data-root",
        root,
        "--json",
        *TINY_EBM,
        "--persistent",
        "--base",
        "base",
        "--objective",
        "ml",
        "--seed",
        "3",
        "--langevin-steps",
        "3",
    ]
    got = {}
    for name, cmd in (("fit-ebm", ["fit-ebm"]), ("fit-prior", ["fit-prior", "--kind", "ebm"])):
        r = tmp / f"same-{name}"
        shutil.copytree(tmp / "mopoe", r)
        code, out, err = run([cmd[0], r, *cmd[1:], *flags], capsys)
        assert code == 0, err
        section = manifest(r)["priors"]["ebm"]
        for k in ("created", "command", "seconds"):
            section.pop(k)
        for row in section["fit"]["history"]:
            row.pop("seconds")
        got[name] = (json.loads(out), load_file(r / "prior-ebm.safetensors"), section)
    (ja, wa, sa), (jb, wb, sb) = got["fit-ebm"], got["fit-prior"]
    assert {k: v for k, v in ja.items() if k not in ("run", "seconds")} == {
        k: v for k, v in jb.items() if k not in ("run", "seconds")
    }
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa["fit"].pop("seconds"), sb["fit"].pop("seconds")
    assert sa == sb and sa["common"]["seed"] == 3 and sa["settings"]["fit"]["persistent"] is True


def test_fit_ebm_flags_are_fit_prior_flags():
    """Every flag of fit-ebm is fit-prior's too, with the same default; fit-prior refuses another kind's."""
    from mmvae_cli.cli import cli

    def opts(name):
        return {o: p.default for p in cli.commands[name].params for o in p.opts}

    ebm, prior = opts("fit-ebm"), opts("fit-prior")
    assert set(ebm) <= set(prior) and all(prior[o] == d for o, d in ebm.items())
    assert {"--langevin-steps", "--energy-hidden", "--objective", "--n-joint", "--classifiers"} <= set(ebm)


def test_fit_prior_reports_joint_coherence_for_every_kind(runs, capsys):
    """--classifiers is the post-hoc fit job's, whatever the kind: a gmm reports it as the energy does."""
    tmp, root = runs
    r = tmp / "gmm-coherence"
    shutil.copytree(tmp / "mopoe", r)
    argv = ["fit-prior", r, "--kind", "gmm", "--components", "2", "--classifiers", tmp / "clf", "--n-joint", "10"]
    code, out, err = run([*argv, "--json", "--data-root", root, "--device", "cpu"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert set(res["joint_coherence"]) == {"base", "gmm", "n_joint"} and res["joint_coherence"]["n_joint"] == 10
    assert manifest(r)["priors"]["gmm"]["joint_coherence"] == res["joint_coherence"]
    code, out, err = run([*argv, "--overwrite", "--data-root", root, "--device", "cpu"], capsys)
    assert code == 0 and "joint coherence: base prior" in out and "->  gmm prior" in out, err
