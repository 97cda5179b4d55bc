"""The training loop's numbers, pinned: tiny runs of `train` (with a cosine learning-rate decay and a
beta warm-up; with a jointly trained energy) and `fit-prior --kind flow` against the weights and
histories under tests/data/loop/, written by the code of the loop before `train` and `fit-prior`
shared one (regenerate with `python tests/test_loop_fixture.py` only when a change of numbers is
intended). Bit for bit where the fixture's torch version and CPU kernels are these (one thread),
else to float rounding. A run stopped mid-epoch (--max-steps) and resumed lands on the same bits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_cli import run
from safetensors.torch import load_file, save_file

HERE = Path(__file__).parent / "data" / "loop"
DATA = HERE / "vec.safetensors"  # 30 tuples of two vector modalities (24 train, 6 test)
CPU = ["--device", "cpu"]
TRAIN = [
    *("--epochs", "3", "--batch-size", "5", "--latent-dim", "3", "--hidden", "8", "--seed", "2"),
    *("--lr-decay", "cosine", "--lr-decay-fraction", "0.5", "--beta-warmup-epochs", "1.5", *CPU),
]  # 5 steps per epoch, the last one of 4 tuples
JOINT = [
    *("--epochs", "2", "--batch-size", "6", "--latent-dim", "3", "--hidden", "8", "--seed", "5"),
    *("--prior", "ebm", "--energy-hidden", "8", "--langevin-steps", "2", *CPU),
]
FLOW = ["--kind", "flow", "--epochs", "2", "--batch-size", "7", "--flow-hidden", "8", "--seed", "3", *CPU]


def _write_data(path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    n = 30
    label = torch.arange(n) % 3
    base = torch.randn(n, 2, generator=g) + label[:, None].float()
    a = torch.cat([base, 0.3 * torch.randn(n, 4, generator=g)], 1)
    b = torch.cat([2 * base, 0.3 * torch.randn(n, 2, generator=g)], 1)
    split = (torch.arange(n) >= 24).to(torch.uint8)
    save_file({"a": a, "b": b, "label": label, "split": split}, str(path))


def _runs(tmp: Path, resume_after: int | None = None) -> dict[str, Path]:
    """The three runs in `tmp` (one thread); with `resume_after`, `train` stops after that many steps and
    is resumed. Returns {name: bundle}."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {"train": tmp / "train", "joint": tmp / "joint", "flow": tmp / "flow"}
        if resume_after is None:
            code, _, err = run(["train", DATA, "--out", out["train"], *TRAIN])
        else:
            code, _, err = run(["train", DATA, "--out", out["train"], *TRAIN, "--max-steps", resume_after])
            assert code == 0, err
            state = json.loads((out["train"] / "manifest.json").read_text())["training_state"]
            assert 0 < state["step"] < 5, state  # stopped mid-epoch
            code, _, err = run(["train", DATA, "--out", out["train"], "--resume", *CPU])
        assert code == 0, err
        code, _, err = run(["train", DATA, "--out", out["joint"], *JOINT])
        assert code == 0, err
        code, _, err = run(["fit-prior", out["train"], "--out", out["flow"], *FLOW])
        assert code == 0, err
        return out
    finally:
        torch.set_num_threads(threads)


def _results(out: dict[str, Path]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, list]]:
    """({file name: tensors}, {run: history without seconds}) of the runs."""
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    man = {k: json.loads((p / "manifest.json").read_text()) for k, p in out.items()}
    tensors = {
        "train-model.safetensors": load_file(out["train"] / "model.safetensors"),
        "joint-model.safetensors": load_file(out["joint"] / "model.safetensors"),
        "joint-ebm.safetensors": load_file(out["joint"] / "prior-ebm.safetensors"),
        "flow-prior.safetensors": load_file(out["flow"] / "prior-flow.safetensors"),
    }
    history = {
        "train": strip(man["train"]["history"]),
        "joint": strip(man["joint"]["history"]),
        "flow": strip(man["flow"]["priors"]["flow"]["fit"]["history"]),
    }
    return tensors, history


def _environment() -> dict:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def regenerate(tmp: Path) -> None:
    """Write the fixture (the data, then the runs' weights and histories) from the code as it is."""
    HERE.mkdir(parents=True, exist_ok=True)
    _write_data(DATA)
    tensors, history = _results(_runs(tmp))
    for name, t in tensors.items():
        save_file(t, str(HERE / name))
    (HERE / "expected.json").write_text(json.dumps({**_environment(), "history": history}, indent=1) + "\n")


def _check(out: dict[str, Path]) -> None:
    expected = json.loads((HERE / "expected.json").read_text())
    exact = {k: expected[k] for k in ("torch", "cpu")} == _environment()
    tensors, history = _results(out)
    for name, got in tensors.items():
        want = load_file(HERE / name)
        assert got.keys() == want.keys(), name
        for k in want:
            if exact:
                assert torch.equal(got[k], want[k]), f"{name}: {k}"
            else:
                torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")
    for name, rows in history.items():
        want = expected["history"][name]
        rows = [{k: r[k] for k in w} for r, w in zip(rows, want)] + rows[len(want) :]  # statistics added later
        assert rows == (want if exact else [pytest.approx(r, rel=1e-4) for r in want]), name


def test_train_and_flow_fit_reproduce_the_fixture(tmp_path):
    _check(_runs(tmp_path))


def test_train_stopped_mid_epoch_and_resumed_reproduces_the_fixture(tmp_path):
    _check(_runs(tmp_path, resume_after=7))


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        regenerate(Path(d))
