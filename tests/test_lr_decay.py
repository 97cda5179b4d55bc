"""--lr-decay: the learning-rate multiplier is an exact function of the global step, the training loop
applies it to every optimizer group, and an interrupted run resumes onto the same schedule."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers_cli import run, write_tiny_polymnist

from mmvae_cli.model_io import load_model
from mmvae_cli.train import beta_ramp, lr_factor


def test_lr_factor_is_the_stated_schedule():
    assert all(lr_factor("none", 0.3, s, 10) == 1.0 for s in range(10))
    # linear over the last half of 10 steps: constant until step 5, then 1 - (s - 5) / 5
    assert [lr_factor("linear", 0.5, s, 10) for s in range(10)] == pytest.approx(
        [1, 1, 1, 1, 1, 1.0, 0.8, 0.6, 0.4, 0.2]
    )
    # cosine over the whole run: (1 + cos(pi s / T)) / 2
    assert [lr_factor("cosine", 1.0, s, 8) for s in range(8)] == pytest.approx(
        [(1 + math.cos(math.pi * s / 8)) / 2 for s in range(8)]
    )
    assert lr_factor("cosine", 1.0, 4, 8) == pytest.approx(0.5)


def _common(root):
    # 16 tuples at batch 8: 2 steps an epoch, 4 in the run
    return ["--data-root", root, "--batch-size", "8", "--latent-dim", "4", "--device", "cpu", "--lr", "1e-3"]


def test_lr_decay_is_applied_and_resume_follows_it(tmp_path, capsys):
    root = write_tiny_polymnist(tmp_path / "data", n_train=16, n_test=4)
    decay = ["--lr-decay", "linear", "--lr-decay-fraction", "1"]
    out = tmp_path / "whole"
    code, _, err = run(["train", "polymnist", "--out", out, "--epochs", "2", *_common(root), *decay], capsys)
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["settings"]["train"]["lr_decay"] == "linear"
    # the rate of each epoch's last step: steps 1 and 3 of 4 -> 1e-3 * (1 - 1/4), 1e-3 * (1 - 3/4)
    assert [h["lr"] for h in m["history"]] == pytest.approx([0.75e-3, 0.25e-3])
    # interrupted after 3 steps (mid-epoch 2), resumed: bit-identical to the uninterrupted run
    part = tmp_path / "part"
    args = ["train", "polymnist", "--out", part, "--epochs", "2", *_common(root), *decay]
    assert run([*args, "--max-steps", "3"], capsys)[0] == 0
    code, _, err = run(
        ["train", "polymnist", "--out", part, "--resume", "--data-root", root, "--device", "cpu"], capsys
    )
    assert code == 0, err
    a, _ = load_model(out, "cpu")
    b, _ = load_model(part, "cpu")
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n
    # the schedule changes the result: a constant-rate run ends elsewhere
    flat = tmp_path / "flat"
    assert run(["train", "polymnist", "--out", flat, "--epochs", "2", *_common(root)], capsys)[0] == 0
    c, _ = load_model(flat, "cpu")
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))


def test_beta_ramp_is_linear_then_one():
    assert [beta_ramp(4, s) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert beta_ramp(0, 0) == 1.0


def test_beta_warmup_starts_from_the_reconstruction_alone(tmp_path, capsys):
    """One step of 16 tuples: the warm-up's first step has beta x 0: its update equals a --beta 0 run's bit for bit, and differs
    from the constant-beta run's."""
    root = write_tiny_polymnist(tmp_path / "data", n_train=16, n_test=4)

    def one_step(name, *opts):
        out = tmp_path / name
        argv = ["train", "polymnist", "--out", out, "--epochs", "1", *_common(root), "--batch-size", "16", *opts]
        code, _, err = run(argv, capsys)
        assert code == 0, err
        return load_model(out, "cpu")[0].state_dict()

    warm = one_step("warm", "--beta-warmup-epochs", "1")
    zero = one_step("zero", "--beta", "0")
    plain = one_step("plain")
    assert all(torch.equal(p, q) for p, q in zip(warm.values(), zero.values()))
    assert any(not torch.equal(p, q) for p, q in zip(warm.values(), plain.values()))


def test_beta_warmup_scale_is_reset_when_fit_stops_early(tmp_path, capsys, monkeypatch):
    """fit leaves the model at beta x 1 however it ends, here stopped by --max-steps inside the warm-up."""
    from mmvae_cli import train
    from mmvae_cli.commands import train as train_command

    seen = []

    def recording_fit(model, *args, **kwargs):
        seen.append(model)
        try:
            return train.fit(model, *args, **kwargs)
        finally:
            seen.append(model.beta_scale)

    monkeypatch.setattr(train_command, "fit", recording_fit)
    root = write_tiny_polymnist(tmp_path / "data", n_train=16, n_test=4)
    argv = ["train", "polymnist", "--out", tmp_path / "r", "--epochs", "2", *_common(root), "--max-steps", "3"]
    code, _, err = run([*argv, "--beta-warmup-epochs", "2"], capsys)
    assert code == 0, err
    assert seen[1] == 1.0 and seen[0].beta == seen[0].config.beta  # the ramp stood at 2/4 when it stopped
