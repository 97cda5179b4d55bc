"""Bundles written before issue 24 (tests/data/bundle-0.2, see helpers_legacy.py) load and give the numbers
that code gave: `sample --prior ebm`, EB-MVAE's clamped `cross-generate`, and `fit-ebm` refits (JSON and
weights). Exact equality under the torch version that wrote numbers.json (the computations run in the same
order); under another torch, float rounding may differ, so 1e-5 relative."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers_legacy import measure

from mmvae_cli.model_io import load_model

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
