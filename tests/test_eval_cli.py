"""`mmvae eval likelihood|latent|fid|all` and `mmvae compare` on a tiny PolyMNIST-layout dataset."""

import json
import math
import shutil

import pytest
import torch
from helpers_cli import TINY_FIT_EBM, run, write_tiny_polymnist
from PIL import Image

from mmvae_cli.evaluate import fid as F


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalcli")
    root = write_tiny_polymnist(tmp / "data", n_train=40, n_test=12)
    run_dir, clf = tmp / "runs" / "mopoe", tmp / "runs" / "clf"
    assert (
        run(
            [
                "train",
                "polymnist",
                "--data-root",
                root,
                "--out",
                run_dir,
                "--epochs",
                "2",
                "--batch-size",
                "20",
                "--latent-dim",
                "4",
                "--device",
                "cpu",
            ]
        )[0]
        == 0
    )
    assert (
        run(
            ["classifier", "train", "polymnist", "--data-root", root, "--out", clf, "--epochs", "1", "--device", "cpu"]
        )[0]
        == 0
    )
    return tmp, root, run_dir, clf


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(F.ENV_VAR, raising=False)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def _copy(run_dir, dst):
    shutil.copytree(run_dir, dst)
    return dst


def test_eval_all_json_report_and_manifest(trained, capsys, no_weights, tmp_path):
    _, root, run_dir, clf = trained
    rd = _copy(run_dir, tmp_path / "r")
    report = tmp_path / "report"
    code, out, err = run(
        [
            "eval",
            "all",
            rd,
            "--classifiers",
            clf,
            "--n-joint",
            "40",
            "--k",
            "3",
            "--n-train",
            "30",
            "--json",
            "--report",
            report,
            "--data-root",
            root,
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads(out)
    assert set(res) == {"run", "seed", "coherence", "likelihood", "latent", "fid", "skipped", "training_missing_ratio"}
    assert res["training_missing_ratio"] == 0.0  # evaluation on complete test tuples states the training ratio
    assert res["fid"] is None and "Inception" in res["skipped"]["fid"]
    c, ll, lat = res["coherence"], res["likelihood"], res["latent"]
    assert c["n_joint"] == 40 and c["prior"] == "base" and set(c["conditional"]) == {"1", "2", "3", "4"}
    assert c["joint_se"] == pytest.approx(math.sqrt(c["joint"] * (1 - c["joint"]) / 40))
    assert c["class_entropy_max"] == pytest.approx(math.log(10))
    for m, h in c["joint_class_histogram"].items():  # each modality's entropy is its histogram's
        assert sum(h) == pytest.approx(1) and c["joint_class_entropy"][m] == pytest.approx(
            -sum(p * math.log(p) for p in h if p > 0)
        )
    assert c["n_coherent"] == round(c["joint"] * 40)
    if c["n_coherent"]:
        assert sum(c["coherent_class_histogram"]) == pytest.approx(1)
        assert 0 <= c["coherent_class_entropy"] <= math.log(10) + 1e-12
    else:
        assert c["coherent_class_histogram"] is None and c["coherent_class_entropy"] is None
    assert len(c["per_subset"]) == 30 and 0 <= c["cross_pairs_mean"] <= 1
    assert ll["k"] == 3 and ll["n_test"] == 12 and len(ll["per_subset"]) == 31 and ll["unit"] == "nats"
    assert set(ll["by_inputs"]) == {"1", "2", "3", "4", "5"} and ll["joint"] == ll["per_subset"]["m0,m1,m2,m3,m4"]
    assert lat["n_train"] == 30 and lat["n_test"] == 12 and len(lat["per_subset"]) == 31
    assert all(0 <= v <= 1 for v in lat["per_subset"].values())
    # report page and figures
    text = (report / "report.md").read_text()
    for png in ("by_inputs.png", "joint_samples.png", "conditional_samples.png", "loss_curves.png"):
        assert f"]({png})" in text
        assert Image.open(report / png).size[0] > 50
    assert not [p for p in report.iterdir() if p.name.startswith(".")]  # no temp files left
    w, h = Image.open(report / "joint_samples.png").size
    assert h == 3 * (5 * 30 + 2) and w == 3 * (10 * 30 + 2)  # 5 modalities x 10 samples, x3
    # every metric is recorded in the manifest with the command
    ev = json.loads((rd / "manifest.json").read_text())["evaluations"]
    assert [e["metric"] for e in ev[-3:]] == ["coherence", "likelihood", "latent"]
    assert all(e["command"].startswith("mmvae eval all") for e in ev[-3:])


def test_single_metrics_reproduce_eval_all(trained, capsys, tmp_path):
    _, root, run_dir, clf = trained
    rd = _copy(run_dir, tmp_path / "r")
    common = ["--data-root", root, "--device", "cpu", "--json"]
    code, out, _ = run(
        [
            "eval",
            "all",
            rd,
            "--classifiers",
            clf,
            "--n-joint",
            "30",
            "--k",
            "4",
            "--n-train",
            "20",
            "--seed",
            "7",
            *common,
        ],
        capsys,
    )
    assert code == 0
    both = json.loads(out)
    code, out, _ = run(["evaluate", "likelihood", rd, "--k", "4", "--seed", "7", *common], capsys)
    single = json.loads(out)
    assert code == 0 and single["per_subset"] == both["likelihood"]["per_subset"]
    assert single["run"] == str(rd) and single["metric"] == "likelihood"
    code, out, _ = run(["eval", "likelihood", rd, "--k", "4", "--seed", "8", *common], capsys)
    assert json.loads(out)["joint"] != single["joint"]  # the seed matters
    code, out, _ = run(["eval", "latent", rd, "--n-train", "20", "--seed", "7", *common], capsys)
    assert json.loads(out)["per_subset"] == both["latent"]["per_subset"]
    code, out, _ = run(
        ["eval", "coherence", rd, "--classifiers", clf, "--n-joint", "30", "--seed", "7", *common], capsys
    )
    assert {k: json.loads(out)[k] for k in ("joint", "per_subset")} == {
        k: both["coherence"][k] for k in ("joint", "per_subset")
    }


def test_text_table_says_how_many_samples(trained, capsys, tmp_path):
    _, root, run_dir, _ = trained
    rd = _copy(run_dir, tmp_path / "r")
    code, out, _ = run(
        ["eval", "likelihood", rd, "--k", "2", "--limit", "5", "--data-root", root, "--device", "cpu"], capsys
    )
    assert code == 0
    assert "K=2, 5 tuples" in out and "|X_k| = 5" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["eval", "fid", "{run}"], F.WEIGHTS_FILE),
        (["eval", "fid", "{run}", "--inception-weights", "{tmp}/nope.pth"], "nope.pth"),
        (["eval", "all", "{run}", "--inception-weights", "{tmp}/nope.pth"], "nope.pth"),
        (["eval", "coherence", "{run}", "--classifiers", "{clf}", "--prior", "ebm"], "energy-based prior"),
        (["eval", "coherence", "{run}"], "--classifiers"),
        (["eval", "likelihood", "{run}", "--k", "0"], "'--k': 0 is not in the range x>=1"),
        (["compare", "{run}"], "has recorded evaluations"),
        (["compare", "{tmp}/missing"], "no such run"),
    ],
)
def test_eval_errors_are_one_line(trained, capsys, no_weights, tmp_path, argv, needle):
    _, root, run_dir, clf = trained
    rd = _copy(run_dir, tmp_path / "r")
    if argv[0] == "compare":  # a bundle without evaluations
        m = json.loads((rd / "manifest.json").read_text())
        m["evaluations"] = []
        (rd / "manifest.json").write_text(json.dumps(m))
    argv = [a.format(run=rd, tmp=tmp_path, clf=clf) for a in argv]
    if argv[0] == "eval":
        argv += ["--data-root", str(root), "--device", "cpu"]
    code, out, err = run(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    if needle == F.WEIGHTS_FILE:  # says where to put the file
        assert str(no_weights / "checkpoints") in lines[0] and "MMVAE_INCEPTION_WEIGHTS" in lines[0]


def test_compare_side_by_side(trained, capsys, tmp_path):
    _, root, run_dir, clf = trained
    a, b = _copy(run_dir, tmp_path / "runA"), _copy(run_dir, tmp_path / "runB")
    for r, seed in ((a, "1"), (b, "2")):
        assert (
            run(["eval", "likelihood", r, "--k", "2", "--seed", seed, "--data-root", root, "--device", "cpu"], capsys)[
                0
            ]
            == 0
        )
    assert run(["eval", "latent", a, "--n-train", "20", "--data-root", root, "--device", "cpu"], capsys)[0] == 0
    code, out, _ = run(["compare", a, b, "--report", tmp_path / "cmp"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert "runA" in lines[0] and "runB" in lines[0]
    row = next(line for line in lines if line.startswith("log p(X) (nats)"))
    ja = json.loads((a / "manifest.json").read_text())["evaluations"][0]["result"]["joint"]
    assert f"{ja:.1f}" in row
    lat = next(line for line in lines if line.startswith("latent probe accuracy, 1 input"))
    assert lat.split()[-1] == "-"  # runB has no latent result
    code, out, _ = run(["compare", a, b, "--json"], capsys)
    res = json.loads(out)
    assert [r["run"] for r in res["runs"]] == [str(a), str(b)]
    assert res["runs"][0]["likelihood"]["joint"] == ja and "latent" not in res["runs"][1]
    assert (tmp_path / "cmp" / "report.md").exists() and (tmp_path / "cmp" / "by_inputs.png").exists()


def test_eval_prior_and_classifier_fd_end_to_end(trained, capsys, tmp_path):
    """eval prior (gmm: log-density; ebm: none, with the reason) and eval fid --features classifier on a
    tiny bundle; the test tuples' memorisation distances recomputed from latent.encode_means and numpy."""
    import numpy as np

    from mmvae_cli.data import load_dataset
    from mmvae_cli.evaluate.latent import encode_means
    from mmvae_cli.model_io import load_model

    _, root, run_dir, clf = trained
    rd = _copy(run_dir, tmp_path / "r")
    cpu = ["--data-root", root, "--device", "cpu"]
    code, _, err = run(["fit-prior", rd, "--kind", "gmm", "--components", "2", *cpu], capsys)
    assert code == 0, err
    code, out, err = run(["eval", "prior", rd, "--prior", "gmm", "--n-prior", "30", "--json", *cpu], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["metric"] == "prior" and res["prior"] == "gmm" and res["log_density_unavailable"] is None
    ld, mem = res["log_density"], res["memorisation"]
    assert ld["test"]["n"] == 12 and ld["train"]["n"] == 40 and ld["unit"] == "nats"
    assert np.isfinite(ld["test"]["mean"]) and ld["test"]["se"] > 0
    assert mem["prior"]["n"] == 30 and mem["test"]["n"] == 12 and mem["n_train"] == 40
    assert mem["ratio"] == pytest.approx(mem["prior"]["mean"] / mem["test"]["mean"])
    assert list(mem["prior"]["quantiles"]) == ["0.05", "0.25", "0.5", "0.75", "0.95"]
    model, _ = load_model(rd)
    names = list(model.names)
    key = ",".join(names)
    mu_test = encode_means(model, load_dataset("polymnist", "test", root), [names], "cpu")[key]
    mu_train = encode_means(model, load_dataset("polymnist", "train", root), [names], "cpu")[key]
    d = np.sqrt(((mu_test[:, None].astype(np.float64) - mu_train[None]) ** 2).sum(-1)).min(1)
    assert mem["test"]["mean"] == pytest.approx(d.mean(), rel=1e-5, abs=1e-7)
    assert json.loads((rd / "manifest.json").read_text())["evaluations"][-1]["metric"] == "prior"
    # the text table says what it measured
    code, out, err = run(["eval", "prior", rd, "--n-prior", "10", "--limit", "4", *cpu], capsys)
    assert code == 0, err
    assert "held-out log p(z), z ~ q(z | X) of 4 test tuples (base prior, nats)" in out and "memorisation" in out
    # classifier-space Frechet distance: every modality and the mean, recorded as fd_classifier
    code, out, err = run(
        ["eval", "fid", rd, "--features", "classifier", "--classifiers", clf, "--prior", "gmm", "--json", *cpu],
        capsys,
    )
    assert code == 0, err
    fd = json.loads(out)
    assert fd["metric"] == "fd_classifier" and fd["features"] == "classifier" and fd["prior"] == "gmm"
    assert set(fd["unconditional"]) == set(fd["conditional"]) == set(names) and fd["n_generated"] == 12
    assert fd["unconditional_mean"] == pytest.approx(np.mean(list(fd["unconditional"].values())))
    assert all(v >= -1e-6 for v in fd["unconditional"].values())
    assert fd["weights"].startswith("classifiers.safetensors:sha256:") and fd["classifiers"] == str(clf)
    assert json.loads((rd / "manifest.json").read_text())["evaluations"][-1]["metric"] == "fd_classifier"
    code, out, _ = run(["compare", rd], capsys)
    assert code == 0 and "memorisation ratio" in out and "classifier features" in out
    # the energy's density has no known normaliser: null and the reason, the memorisation check still runs
    code, _, err = run(["fit-ebm", rd, *TINY_FIT_EBM, "--batch-size", "10", *cpu], capsys)
    assert code == 0, err
    code, out, err = run(["eval", "prior", rd, "--prior", "ebm", "--n-prior", "8", "--json", *cpu], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["log_density"] is None and "normaliser" in res["log_density_unavailable"]
    assert res["memorisation"]["prior"]["n"] == 8
