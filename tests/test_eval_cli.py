"""`mmvae eval likelihood|latent|fid|all` and `mmvae compare` on a tiny PolyMNIST-layout dataset."""

import json
import shutil

import pytest
import torch
from helpers_cli import run, write_tiny_polymnist
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
