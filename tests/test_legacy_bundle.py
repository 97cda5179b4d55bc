"""Bundles written before issue 24 (tests/data/bundle-0.2, see helpers_legacy.py) load and give the numbers
that code gave: `sample --prior ebm`, EB-MVAE's clamped `cross-generate`, and `fit-ebm` refits (JSON and
weights). Exact equality under the torch version that wrote numbers.json (the computations run in the same
order); under another torch, float rounding may differ, so 1e-5 relative."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from helpers_legacy import CPU, FIT, SAMPLE, cli, measure, ok

from mmvae_cli.model_io import load_model
from mmvae_cli.recipe import TrainConfig

FIXTURE = Path(__file__).parent / "data" / "bundle-0.2"


def same(got, want, exact: bool, where: str = "") -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            same(got[k], want[k], exact, f"{where}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            same(g, w, exact, f"{where}[{i}]")
    elif isinstance(want, float) and not exact:
        assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.mark.parametrize("run", ["vae", "ebm-only", "joint", "ebmvae"])
def test_legacy_bundle_loads_with_its_energy(run, monkeypatch):
    monkeypatch.chdir(FIXTURE)
    model, _ = load_model(Path(run))
    assert "ebm" in model.available_priors()
    if run == "vae":
        assert "gmm" in model.available_priors()


def test_legacy_bundle_gives_the_same_numbers(tmp_path):
    want = json.loads((FIXTURE / "numbers.json").read_text())
    got = measure(FIXTURE, tmp_path)
    exact = got.pop("torch") == want.pop("torch")
    same(got, want, exact)


def test_a_legacy_joint_energy_is_the_training_prior(monkeypatch):
    monkeypatch.chdir(FIXTURE)
    model, manifest = load_model(Path("joint"))
    assert "ebm" not in manifest and manifest["priors"]["ebm"]["prior"]["training"] == "joint"
    assert model.train_prior is model.priors["ebm"]
    assert manifest["settings"]["joint"]["reg_on"] == "level"  # the gauge's former name: resumes as gauge
    assert TrainConfig.from_dict(manifest["settings"]).joint.reg_on == "gauge"


def test_writing_a_legacy_bundle_moves_its_energy_to_the_new_layout(tmp_path, monkeypatch):
    """fit-prior on a legacy bundle rewrites its manifest with the energy as priors.ebm (still in
    ebm.safetensors); refitting the energy writes prior-ebm.safetensors and removes ebm.safetensors."""
    shutil.copytree(FIXTURE, tmp_path / "b", ignore=shutil.ignore_patterns("numbers.json"))
    monkeypatch.chdir(tmp_path / "b")
    ok(["fit-prior", "vae", "--kind", "gmm", "--components", "3", "--overwrite", *CPU])
    m = json.loads(Path("vae/manifest.json").read_text())
    assert "ebm" not in m and m["priors"]["ebm"]["file"] == "ebm.safetensors" and "ebm.safetensors" in m["files"]
    assert m["priors"]["gmm"]["prior"]["components"] == 3
    ok(["sample", "vae", "--prior", "ebm", *SAMPLE, "--out", "s.png"])
    ok(["fit-ebm", "vae", "--overwrite", *FIT])
    m = json.loads(Path("vae/manifest.json").read_text())
    assert "file" not in m["priors"]["ebm"] and set(m["files"]) == {
        "model.safetensors",
        "prior-ebm.safetensors",
        "prior-gmm.safetensors",
    }
    assert not Path("vae/ebm.safetensors").exists()
    model, _ = load_model(Path("vae"))
    assert set(model.available_priors()) == {"base", "ebm", "gmm"}
    ok(["sample", "vae", "--prior", "ebm", *SAMPLE, "--out", "s.png"])


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["fit-ebm", "joint", *FIT], "trained jointly"),
        (["fit-ebm", "ebm-only", *FIT], "energy-only bundle"),
        (["fit-ebm", "vae", *FIT], "--overwrite"),
        (
            ["train", "data.safetensors", "--out", "vae", "--resume", "--epochs", "2", *CPU],
            "fitted to its weights (gmm, ebm)",
        ),
    ],
)
def test_legacy_bundles_are_refused_as_before(argv, needle, tmp_path, monkeypatch):
    shutil.copytree(FIXTURE, tmp_path / "b", ignore=shutil.ignore_patterns("numbers.json"))
    monkeypatch.chdir(tmp_path / "b")
    before = {p: p.read_bytes() for p in sorted(Path().rglob("*")) if p.is_file()}
    code, _, err = cli(argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert {p: p.read_bytes() for p in sorted(Path().rglob("*")) if p.is_file()} == before


def test_legacy_training_checkpoints_name_the_joint_energy_ebm():
    """Before issue 24 the jointly trained energy was the model's submodule `ebm`: its checkpoint keys load
    into today's `train_prior`."""
    import torch

    from mmvae_cli.model import ModalitySpec, ModelConfig, MultimodalVAE
    from mmvae_cli.priors.ebm import EnergyPrior

    def model():
        m = MultimodalVAE(ModelConfig([ModalitySpec("a", [3], arch="mlp")], 2, "moe", hidden=4))
        m.attach_prior(EnergyPrior({"dim": 2, "hidden": 3, "layers": 2}, joint=True))
        return m

    torch.manual_seed(0)
    a, b = model(), model()
    old = {k.replace("train_prior.", "ebm."): v for k, v in a.state_dict().items()}
    assert any(k.startswith("ebm.energy.") for k in old)
    b.load_state_dict(old)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
