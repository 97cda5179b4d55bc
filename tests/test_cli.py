"""The whole CLI path of the quick start on a tiny PolyMNIST-layout dataset, and its error paths."""

import json
import subprocess
import sys

import pytest
from helpers_cli import run, write_tiny_polymnist
from PIL import Image


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    root = write_tiny_polymnist(tmp / "data")
    run_dir, clf = tmp / "runs" / "mopoe", tmp / "runs" / "clf"
    code, _, _ = run(
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
            "16",
            "--latent-dim",
            "8",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    code, _, _ = run(
        ["classifier", "train", "polymnist", "--data-root", root, "--out", clf, "--epochs", "3", "--device", "cpu"]
    )
    assert code == 0
    return tmp, root, run_dir, clf


def test_train_writes_bundle_with_resolved_settings(trained):
    _, _, run_dir, _ = trained
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["kind"] == "mmvae" and manifest["model"]["fusion"] == "mopoe"
    assert manifest["settings"]["train"]["epochs"] == 2 and manifest["settings"]["model"]["latent_dim"] == 8
    assert manifest["settings"]["recipe"] == "polymnist-mopoe.toml"
    assert manifest["settings"]["model"]["beta"] == 2.5  # from the recipe
    assert len(manifest["history"]) == 2 and manifest["epochs_done"] == 2
    assert manifest["dataset"]["fingerprint"]
    assert [m["arch"] for m in manifest["model"]["modalities"]] == ["conv28"] * 5
    assert {"mmvae", "torch", "python"} <= set(manifest["versions"])
    for f in ("model.safetensors", "checkpoint.safetensors"):
        assert manifest["files"][f]["sha256"]


def test_sample_grid_has_one_row_per_modality(trained, capsys):
    tmp, _, run_dir, _ = trained
    out = tmp / "samples.png"
    code, _, _ = run(["sample", run_dir, "-n", "6", "--out", out, "--device", "cpu"], capsys)
    assert code == 0
    w, h = Image.open(out).size
    assert h == 5 * 30 + 2 and w == 6 * 30 + 2


def test_cross_generate_png_and_tensors(trained, capsys):
    tmp, root, run_dir, _ = trained
    code, _, _ = run(
        [
            "cross-generate",
            run_dir,
            "--given",
            "m1,m2,m3,m4",
            "--split",
            "test",
            "-n",
            "4",
            "--out",
            tmp / "cross.png",
            "--data-root",
            root,
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0
    assert Image.open(tmp / "cross.png").size[1] == 5 * 30 + 2  # 4 input rows + 1 generated row
    code, _, _ = run(
        [
            "cross-generate",
            run_dir,
            "--given",
            "m0",
            "-n",
            "3",
            "--out",
            tmp / "cross.safetensors",
            "--data-root",
            root,
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0
    from safetensors.torch import load_file

    t = load_file(tmp / "cross.safetensors")
    assert set(t) == {"input.m0", "generated.m1", "generated.m2", "generated.m3", "generated.m4"}
    assert t["generated.m1"].shape == (3, 3, 28, 28)
    img = tmp / "one.png"
    Image.open(root / "polymnist/MMNIST/test/m0/0.0.png").save(img)
    code, _, _ = run(
        ["cross-generate", run_dir, "--image", f"m0={img}", "--out", tmp / "fromfile.png", "--device", "cpu"], capsys
    )
    assert code == 0


def test_eval_coherence_json(trained, capsys):
    _, root, run_dir, clf = trained
    code, out, _ = run(
        [
            "eval",
            "coherence",
            run_dir,
            "--classifiers",
            clf,
            "--n-joint",
            "50",
            "--json",
            "--data-root",
            root,
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0
    result = json.loads(out)
    assert set(result["conditional"]) == {"1", "2", "3", "4"}
    assert 0 <= result["joint"] <= 1 and result["n_joint"] == 50
    assert len(result["per_subset"]) == 30 and result["n_test"] == 20
    code, out2, _ = run(
        [
            "evaluate",
            "coherence",
            run_dir,
            "--classifiers",
            clf,
            "--n-joint",
            "50",
            "--json",
            "--data-root",
            root,
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0 and json.loads(out2)["conditional"] == result["conditional"]  # seeded: identical
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["evaluations"][-1]["metric"] == "coherence"
    assert "eval" in manifest["evaluations"][-1]["command"] or "evaluate" in manifest["evaluations"][-1]["command"]


def test_interrupted_run_resumes(trained, capsys):
    tmp, root, _, _ = trained
    out = tmp / "runs" / "resume"
    args = [
        "train",
        "polymnist",
        "--data-root",
        root,
        "--out",
        out,
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--latent-dim",
        "8",
        "--device",
        "cpu",
    ]
    assert run(args + ["--max-steps", "3"], capsys)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training_state"]["step"] == 3 and "epochs_done" not in manifest
    code, _, err = run(args, capsys)
    assert code == 2 and "--resume" in err
    assert run(["train", "polymnist", "--out", out, "--resume", "--data-root", root, "--device", "cpu"], capsys)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["epochs_done"] == 2 and "finished" in manifest
    # a finished run can be trained for longer, never shorter
    resume = ["train", "polymnist", "--out", out, "--resume", "--data-root", root, "--device", "cpu"]
    assert run(resume + ["--epochs", "3"], capsys)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["epochs_done"] == 3 and len(manifest["history"]) == 3 and manifest["settings"]["train"]["epochs"] == 3
    )
    code, _, err = run(resume + ["--epochs", "1"], capsys)
    assert code == 2 and "already trained 3 epochs" in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "polymnist", "--data-root", "{empty}", "--out", "{tmp}/x"], "mmvae data fetch polymnist"),
        (["train", "no-such-dataset", "--out", "{tmp}/x"], "no-such-dataset"),
        (["sample", "{tmp}/missing-run", "--out", "{tmp}/s.png"], "no such run"),
        (
            ["cross-generate", "{run}", "--given", "m9", "--out", "{tmp}/c.png", "--data-root", "{root}"],
            "unknown modality 'm9'",
        ),
        (["eval", "coherence", "{run}", "--classifiers", "{run}", "--data-root", "{root}"], "expected 'classifier'"),
    ],
)
def test_errors_are_one_line(trained, capsys, argv, needle):
    tmp, root, run_dir, _ = trained
    (tmp / "empty").mkdir(exist_ok=True)
    argv = [a.format(tmp=tmp, empty=tmp / "empty", run=run_dir, root=root) for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_tampered_bundle_is_refused_by_the_real_executable(trained, tmp_path):
    _, _, run_dir, _ = trained
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    p = bad / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    r = subprocess.run(
        [sys.executable, "-m", "mmvae_cli", "sample", str(bad), "--out", str(tmp_path / "s.png")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and "checksum" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s.png").exists()


def test_help_and_version(capsys):
    r = subprocess.run([sys.executable, "-m", "mmvae_cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "mmvae" in r.stdout
    for cmd in (
        ["train"],
        ["sample"],
        ["cross-generate"],
        ["eval", "coherence"],
        ["evaluate", "coherence"],
        ["classifier", "train"],
        ["data", "fetch"],
        ["data", "build"],
        ["data", "info"],
    ):
        code, out, _ = run([*cmd, "--help"], capsys)
        assert code == 0 and "Usage" in out and len(out.splitlines()) > 5, cmd
