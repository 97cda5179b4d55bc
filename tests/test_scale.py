"""Cluster-job behaviour of `train` with real processes: SIGTERM mid-epoch then --resume, and kill -9
anywhere then the same command with --resume auto, give bit-identical parameters; 2-process DDP
(gloo, torchrun) matches a single-process computation of the same global batch; precision flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from helpers_cli import TINY_FIT_EBM, run, write_tiny_polymnist
from safetensors.torch import load_file


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("MMVAE_DEBUG", None)
    return env


def _mmvae(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "mmvae_cli", *map(str, args)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _finish(p, timeout=120):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


@contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_tiny_polymnist(tmp_path_factory.mktemp("scale") / "data", n_train=40, n_test=4)


def test_sigterm_mid_epoch_then_resume_is_bit_identical(data_root, tmp_path):
    args = [
        "train",
        "polymnist",
        "--data-root",
        data_root,
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--latent-dim",
        "4",
        "--seed",
        "3",
        "--device",
        "cpu",
    ]  # 10 steps per epoch
    ref, killed, log = tmp_path / "ref", tmp_path / "killed", tmp_path / "log.jsonl"
    p = _mmvae(args + ["--out", killed, "--log-jsonl", log, "--step-delay", "0.1"])
    deadline = time.time() + 90
    while not (log.exists() and log.read_text().strip()):  # epoch 1 done: now inside epoch 2
        assert p.poll() is None and time.time() < deadline, p.communicate()[1]
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    code, out, err = _finish(p)
    assert code == 75, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: stopped by signal") and "--resume" in lines[-1] and "Traceback" not in err
    state = json.loads((killed / "manifest.json").read_text())["training_state"]
    assert state["epoch"] >= 1 and 0 < state["step"] < 10, state  # stopped mid-epoch
    assert state["partial"]["seen"] == 4 * state["step"]

    # the uninterrupted run and the resumption run in this process, with the killed process's thread count
    with one_thread():
        assert run(args + ["--out", ref])[0] == 0
        assert (
            run(
                [
                    "train",
                    "polymnist",
                    "--out",
                    killed,
                    "--resume",
                    "--data-root",
                    data_root,
                    "--device",
                    "cpu",
                    "--log-jsonl",
                    log,
                ]
            )[0]
            == 0
        )
    a, b = load_file(ref / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha = json.loads((ref / "manifest.json").read_text())["history"]
    hb = json.loads((killed / "manifest.json").read_text())["history"]
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(ha) == strip(hb) and len(ha) == 3  # partial-epoch statistics survived the kill
    assert [json.loads(x)["epoch"] for x in log.read_text().splitlines()] == [1, 2, 3]


def test_fit_ebm_sigterm_mid_epoch_then_resume_is_bit_identical(data_root, tmp_path, capsys):
    """fit-ebm: SIGTERM mid-epoch writes a checkpoint and exits 75; --resume (into --out, with persistent
    chains, so the chains and both RNG streams must survive) gives the uninterrupted fit's energy."""
    vae = tmp_path / "vae"
    with one_thread():
        assert (
            run(
                [
                    "train",
                    "polymnist",
                    "--data-root",
                    data_root,
                    "--epochs",
                    "1",
                    "--batch-size",
                    "8",
                    "--latent-dim",
                    "4",
                    "--device",
                    "cpu",
                    "--out",
                    vae,
                ]
            )[0]
            == 0
        )
    fit = [
        "fit-ebm",
        vae,
        "--data-root",
        data_root,
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--langevin-steps",
        "3",
        "--energy-hidden",
        "16",
        "--persistent",
        "--base",
        "base",
        "--objective",
        "ml",
        "--seed",
        "5",
        "--device",
        "cpu",
    ]  # 10 steps per epoch
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    p = _mmvae(fit + ["--out", killed, "--step-delay", "0.1"])
    deadline = time.time() + 90
    while not (killed / "prior-checkpoint.safetensors").exists():  # epoch 1 done: now inside epoch 2
        assert p.poll() is None and time.time() < deadline, p.communicate()[1]
        time.sleep(0.01)
    time.sleep(0.25)
    p.send_signal(signal.SIGTERM)
    code, _, err = _finish(p)
    assert code == 75, err
    assert err.strip().splitlines()[-1].startswith("error: stopped by signal") and "Traceback" not in err
    state = json.loads((killed / "manifest.json").read_text())["prior_fit_state"]
    assert state["epoch"] == 1 and 0 < state["start"] < 40, state  # stopped mid-epoch 2
    capsys.readouterr()
    code, _, err = run(["sample", killed, "--prior", "ebm", "-n", "2", "--out", tmp_path / "s.png"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--resume" in err, err  # no energy until the fit ends

    with one_thread():
        assert run(fit + ["--out", ref])[0] == 0
        assert run(["fit-ebm", vae, "--out", killed, "--resume", "--data-root", data_root, "--device", "cpu"])[0] == 0
    a, b = load_file(ref / "prior-ebm.safetensors"), load_file(killed / "prior-ebm.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (ref, killed))
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    ha, hb = (m["priors"]["ebm"]["fit"]["history"] for m in (ma, mb))
    assert strip(ha) == strip(hb) and len(ha) == 3
    assert "prior_fit_state" not in mb and not (killed / "prior-checkpoint.safetensors").exists()
    assert "prior-checkpoint.safetensors" not in mb["files"]
    capsys.readouterr()
    before = {f.name: f.read_bytes() for f in killed.iterdir()}
    code, _, err = run(["fit-ebm", vae, "--out", killed, "--resume", "--data-root", data_root], capsys)
    assert code == 0 and "nothing to do" in err, err  # finished: a requeued job writes nothing
    assert {f.name: f.read_bytes() for f in killed.iterdir()} == before


def test_fit_ebm_in_place_interrupted_then_resumed(data_root, tmp_path):
    """Without --out the checkpoint lives in RUN itself and is removed once the resumed fit ends."""
    vae = tmp_path / "vae"
    assert (
        run(
            [
                "train",
                "polymnist",
                "--data-root",
                data_root,
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--latent-dim",
                "4",
                "--device",
                "cpu",
                "--out",
                vae,
            ]
        )[0]
        == 0
    )
    p = _mmvae(
        [
            "fit-ebm",
            vae,
            "--data-root",
            data_root,
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--langevin-steps",
            "3",
            "--energy-hidden",
            "16",
            "--device",
            "cpu",
            "--step-delay",
            "0.1",
        ]
    )
    deadline = time.time() + 90
    while not (vae / "prior-checkpoint.safetensors").exists():
        assert p.poll() is None and time.time() < deadline, p.communicate()[1]
        time.sleep(0.01)
    p.send_signal(signal.SIGUSR1)
    code, _, err = _finish(p)
    assert code == 75, err
    m = json.loads((vae / "manifest.json").read_text())
    assert "priors" not in m and m["prior_fit_state"]["settings"]["settings"]["fit"]["epochs"] == 2
    assert (
        run(
            [
                "fit-ebm",
                vae,
                "--resume",
                "--data-root",
                data_root,
                "--device",
                "cpu",
                "--log-jsonl",
                tmp_path / "log.jsonl",
            ]
        )[0]
        == 0
    )
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(x["event"], x["epoch"]) for x in lines][-1] == ("fit-ebm-epoch", 2)
    m = json.loads((vae / "manifest.json").read_text())
    assert [h["epoch"] for h in m["priors"]["ebm"]["fit"]["history"]] == [1, 2] and "prior_fit_state" not in m
    assert not (vae / "prior-checkpoint.safetensors").exists() and "prior-ebm.safetensors" in m["files"]
    assert run(["sample", vae, "--prior", "ebm", "-n", "2", "--out", tmp_path / "s.png", "--device", "cpu"])[0] == 0


# --- kill -9 (a lost node, the OOM killer: no signal, no checkpoint on the way out), then the same command ---
VEC = Path(__file__).parent / "data" / "loop" / "vec.safetensors"  # 24 training tuples of two vectors
REQUEUE = [
    *("train", VEC, "--epochs", "4", "--batch-size", "5", "--latent-dim", "3", "--hidden", "8", "--seed", "2"),
    *("--lr-decay", "cosine", "--lr-decay-fraction", "0.5", "--device", "cpu"),
]  # 5 steps per epoch


def _uninterrupted(tmp_path) -> tuple[dict, list]:
    """(weights, history without seconds) of the run without interruption, in this process (one thread)."""
    with one_thread():
        code, _, err = run([*REQUEUE, "--out", tmp_path / "ref"])
    assert code == 0, err
    return _result(tmp_path / "ref")


def _result(out) -> tuple[dict, list]:
    history = json.loads((out / "manifest.json").read_text())["history"]
    return load_file(out / "model.safetensors"), [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def _kill_after(p, line: str, delay: float) -> None:
    """SIGKILL `p` `delay` seconds after it logged a line starting with `line` (unless it ended first)."""
    while not (got := p.stderr.readline()).startswith(line):
        assert got, p.communicate()[1]  # ended without that line
    time.sleep(delay)
    if p.poll() is None:
        p.kill()
        assert p.wait(timeout=30) == -signal.SIGKILL


def test_kill_9_before_the_first_checkpoint_then_resume_starts_it_again(tmp_path, capsys):
    """Killed in its first epoch: RUN holds a manifest and no checkpoint. Without --resume the command is
    refused (RUN holds a run); with --resume the run starts again from the beginning with the settings
    its manifest records: the uninterrupted run's weights and history, bit for bit."""
    out = tmp_path / "killed"
    p = _mmvae([*REQUEUE, "--out", out, "--step-delay", "0.3"])  # the first checkpoint after 1.5 s
    _kill_after(p, "training ", 0.0)  # logged once the run folder exists
    manifest = json.loads((out / "manifest.json").read_text())
    assert "training_state" not in manifest and not manifest["files"], manifest  # nothing was saved
    code, _, err = run([*REQUEUE, "--out", out], capsys)
    assert code == 2 and "already holds a run" in err and "--resume" in err, err
    with one_thread():
        code, _, err = run(["train", VEC, "--out", out, "--resume", "--device", "cpu"], capsys)  # recorded settings
    assert code == 0 and "from the beginning" in err, err
    (wa, ha), (wb, hb) = _uninterrupted(tmp_path), _result(out)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert ha == hb and len(hb) == 4


def test_resume_auto_after_kill_9_at_a_random_point_is_bit_identical(tmp_path, capsys):
    """One idempotent command (`--resume auto`) run again after a kill -9 at a point drawn by a seeded
    random (anywhere after the first epoch's line, checkpoint writes included): it starts the run, then
    continues it from whatever the kill left, and finally says it finished without writing."""
    import random

    rng = random.Random(11)
    out = tmp_path / "killed"
    command = [*REQUEUE, "--out", out, "--resume", "auto"]
    p = _mmvae([*command, "--step-delay", "0.05"])  # 0.25 s an epoch
    _kill_after(p, "epoch ", rng.uniform(0.0, 0.6))  # an epoch logged (its checkpoint may be underway), then anywhere
    with one_thread():
        code, _, err = run(command)
    assert code == 0, err
    (wa, ha), (wb, hb) = _uninterrupted(tmp_path), _result(out)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert ha == hb and len(hb) == 4
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    capsys.readouterr()
    code, _, err = run(command, capsys)  # a requeued job after the run finished: nothing to do
    assert code == 0 and "already finished" in err and err.count("\n") == 1, err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_resume_auto_on_a_finished_run_with_its_energy_writes_nothing(tmp_path, capsys):
    """A job requeued after its last stage (fit-ebm into RUN) runs `train --resume auto` again: the run
    already finished, so the command exits 0 and leaves RUN as it was (extending it is refused)."""
    out = tmp_path / "run"
    command = [*REQUEUE, "--epochs", "1", "--out", out, "--resume", "auto"]
    assert run(command, capsys)[0] == 0
    code, _, err = run(["fit-ebm", out, *TINY_FIT_EBM, "--device", "cpu"], capsys)
    assert code == 0, err
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    code, _, err = run(command, capsys)
    assert code == 0 and "already finished" in err, err
    code, _, err = run([*command, "--epochs", "2"], capsys)
    assert code == 2 and "fitted to its weights" in err, err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


FITS = {  # the post-hoc fits' idempotent commands (RUN, --out NEW, --resume auto appended): 2 epochs of 5 steps
    "fit-ebm": ["fit-ebm", "--energy-hidden", "8", "--epochs", "2", "--langevin-steps", "2", "--batch-size", "5"],
    "fit-prior": ["fit-prior", "--kind", "flow", "--epochs", "2", "--batch-size", "5"],
}


def _fit_result(out) -> tuple[dict, list]:
    """(prior weights, fit history without seconds) of a post-hoc fit's --out bundle."""
    priors = json.loads((out / "manifest.json").read_text())["priors"]
    kind = "ebm" if "ebm" in priors else next(iter(priors))  # fit-ebm's bundle also holds the gmm it tilts
    section = priors[kind]
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in section["fit"]["history"]]
    return load_file(out / f"prior-{kind}.safetensors"), history


@pytest.mark.parametrize("fit", sorted(FITS))
@pytest.mark.parametrize("when", ["before-first-checkpoint", "random"])
def test_fit_resume_auto_after_kill_9_is_bit_identical(tmp_path, capsys, fit, when):
    """fit-ebm and fit-prior killed with kill -9 before their first checkpoint (the --out bundle exists,
    nothing saved) or at a seeded random point, then the same `--resume auto` command: the uninterrupted
    fit's weights and history, bit for bit; once more: it already finished, nothing written."""
    import random

    base = tmp_path / "run"
    assert run([*REQUEUE, "--epochs", "1", "--out", base], capsys)[0] == 0
    (*head,) = FITS[fit]
    with one_thread():
        assert run([*head[:1], base, *head[1:], "--out", tmp_path / "ref", "--device", "cpu"], capsys)[0] == 0
    out = tmp_path / "killed"
    command = [*head[:1], base, *head[1:], "--out", out, "--device", "cpu", "--resume", "auto"]
    if when == "random":
        p = _mmvae([*command, "--step-delay", "0.05"])  # 0.25 s an epoch
        _kill_after(p, "fit-", random.Random(5).uniform(0.0, 0.4))  # after the first epoch's line, anywhere
    else:
        p = _mmvae([*command, "--step-delay", "0.5"])  # the first checkpoint after 2.5 s
        _kill_after(p, "fitting ", 1.0)
        manifest = json.loads((out / "manifest.json").read_text())
        assert "prior_fit_state" not in manifest and not manifest.get("priors"), manifest  # nothing saved
    with one_thread():
        code, _, err = run(command, capsys)
    assert code == 0, err
    (wa, ha), (wb, hb) = _fit_result(tmp_path / "ref"), _fit_result(out)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert ha == hb and len(hb) == 2
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    code, _, err = run(command, capsys)  # requeued after it finished
    assert code == 0 and "nothing to do" in err, err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_two_process_ddp_matches_single_process_global_batch(data_root, tmp_path):
    """torchrun with 2 gloo processes, global batch 8 (4 per rank), 5 steps. Reference, computed here in
    one process: the same initial weights, and for every step the gradient of the global-batch mean as
    the average of the two halves' gradients, each half drawing its reparameterisation noise from that
    rank's stream (the one thing that must differ from a 1-process run: noise is per rank). Processes
    differ only in floating-point reduction order, so the tolerance is tight; a run without gradient
    averaging (each rank on its own half) is far outside it."""
    from mmvae_cli.data import load_dataset
    from mmvae_cli.model import MultimodalVAE, build_config
    from mmvae_cli.recipe import TrainConfig
    from mmvae_cli.runtime import Dist, noise_seed
    from mmvae_cli.train import epoch_permutation, make_optimizer

    out, log = tmp_path / "ddp", tmp_path / "ddp.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "mmvae_cli",
        "train",
        "polymnist",
        "--data-root",
        str(data_root),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--latent-dim",
        "4",
        "--seed",
        "5",
        "--device",
        "cpu",
        "--log-jsonl",
        str(log),
    ]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(log.read_text().splitlines()) == 1  # only rank 0 logs
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runtime"]["world_size"] == 2 and manifest["epochs_done"] == 1
    got = load_file(out / "model.safetensors")

    data = load_dataset("polymnist", "train", data_root)
    settings = TrainConfig.from_dict(manifest["settings"])

    def reference(ranks_averaged: bool) -> dict[str, torch.Tensor]:
        with one_thread():
            torch.manual_seed(5)
            model = MultimodalVAE(build_config(settings.model, data)).train()
            opt = make_optimizer(model, settings.train)
            streams = []
            for rank in (0, 1):
                torch.manual_seed(noise_seed(5, rank))
                streams.append(torch.get_rng_state())
            perm = epoch_permutation(len(data), 5, 0)
            for step in range(len(data) // 8):
                gidx = perm[step * 8 : (step + 1) * 8]
                opt.zero_grad(set_to_none=True)
                for rank in (0, 1) if ranks_averaged else (0,):
                    torch.set_rng_state(streams[rank])
                    loss, _ = model(data.batch(Dist(rank, 2).shard(gidx)))
                    (loss / 2 if ranks_averaged else loss).backward()
                    streams[rank] = torch.get_rng_state()
                opt.step()
            return {k: v.detach().clone() for k, v in model.state_dict().items()}

    want, unsynced = reference(True), reference(False)
    assert got.keys() == want.keys()
    diff = max((got[k] - want[k]).abs().max().item() for k in want)
    far = max((got[k] - unsynced[k]).abs().max().item() for k in want)
    assert diff < 1e-5, diff
    assert far > 1e-4, far


def test_precision_flags(data_root, tmp_path, capsys):
    base = [
        "train",
        "polymnist",
        "--data-root",
        data_root,
        "--epochs",
        "1",
        "--batch-size",
        "40",
        "--latent-dim",
        "4",
        "--device",
        "cpu",
    ]
    code, _, err = run(base + ["--out", tmp_path / "fp16", "--precision", "fp16"], capsys)
    assert code == 2 and err.strip() == "error: --precision fp16 needs a CUDA device (use bf16 or fp32 on the CPU)"
    code, _, err = run(base + ["--out", tmp_path / "bf16", "--precision", "bf16", "--channels-last"], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "bf16" / "manifest.json").read_text())
    assert manifest["runtime"]["precision"] == "bf16" and manifest["runtime"]["channels_last"] is True
    weights = load_file(tmp_path / "bf16" / "model.safetensors")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())  # fp32 master weights
    code, _, err = run(base + ["--out", tmp_path / "x", "--distributed"], capsys)
    assert code == 2 and err.strip().startswith("error: --distributed: no process group") and "torchrun" in err


def test_mixed_precision_keeps_the_math_in_fp32():
    """Under bf16 the networks run in bfloat16 but experts and decoder outputs come back as fp32, so the
    products of experts, KLs and likelihoods are computed in fp32."""
    from mmvae_cli.model import ModalitySpec, ModelConfig, MultimodalVAE

    torch.manual_seed(0)
    model = MultimodalVAE(ModelConfig([ModalitySpec(f"m{i}", [3, 28, 28]) for i in range(2)], latent_dim=4))
    x = {f"m{i}": torch.rand(3, 3, 28, 28) for i in range(2)}
    torch.manual_seed(1)
    loss32, _ = model(x)
    model.amp_dtype = torch.bfloat16
    e = model.experts(x)
    assert e.loc.dtype == torch.float32 and model.decode(torch.zeros(3, 4))["m0"].dtype == torch.float32
    torch.manual_seed(1)
    loss16, _ = model(x)
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    assert abs(loss16.item() - loss32.item()) / abs(loss32.item()) < 0.05


def test_stop_flag_catches_sigterm_and_sigusr1_and_restores_handlers():
    from mmvae_cli.runtime import StopFlag

    before = signal.getsignal(signal.SIGUSR1)
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        stop = StopFlag()
        with stop.installed():
            assert not stop.requested()
            os.kill(os.getpid(), sig)
            deadline = time.time() + 5
            while not stop and time.time() < deadline:
                time.sleep(0.01)
            assert stop.requested() and stop.signal == sig
    assert signal.getsignal(signal.SIGUSR1) == before
