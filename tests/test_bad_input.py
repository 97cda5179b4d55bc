"""Bad input to every command: exit code 2 (3 for numerical failures), one `error:` line, nothing written.

Each case runs the CLI in-process on a per-test folder holding copies of the bundles it names
({run}: a tiny trained MoPoE run, {erun}: the same with a fitted energy, {nrun}: an EB-MVAE run with
a noise-conditional energy, {clf}: a classifier bundle). Every file and folder under that per-test folder is snapshotted before the command and
compared byte for byte afterwards: a refused command creates, removes and changes nothing.

The copies hard-link the (large) .safetensors files; every writer in mmvae replaces files
atomically, and `shared_bundles_untouched` checks after each case that no command wrote through a
link into the shared fixture.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import torch
from helpers_cli import TINY_FIT_EBM, run, write_tiny_polymnist

CPU = ["--device", "cpu"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Shared, built once: data root, trained run, run with a fitted energy, EB-MVAE run with an ncsn energy,
    classifier bundle."""
    tmp = tmp_path_factory.mktemp("badinput")
    root = write_tiny_polymnist(tmp / "data", n_train=20, n_test=10)
    run_dir, erun, nrun, clf = tmp / "run", tmp / "erun", tmp / "nrun", tmp / "clf"
    code, _, err = run(
        [
            "train",
            "polymnist",
            "--data-root",
            root,
            "--out",
            run_dir,
            "--epochs",
            "1",
            "--batch-size",
            "10",
            "--latent-dim",
            "4",
            *CPU,
        ]
    )
    assert code == 0, err
    shutil.copytree(run_dir, erun)
    code, _, err = run(["fit-ebm", erun, "--data-root", root, *TINY_FIT_EBM, "--batch-size", "10", *CPU])
    assert code == 0, err
    tiny = ["--data-root", root, "--epochs", "1", "--batch-size", "10", *CPU]
    code, _, err = run(["train", "polymnist", "--out", nrun, "--fusion", "none", "--latent-dim", "2", *tiny])
    assert code == 0, err
    code, _, err = run(["fit-ebm", nrun, "--objective", "ncsn", "--noise-levels", "3", *TINY_FIT_EBM, *tiny])
    assert code == 0, err
    code, _, err = run(["classifier", "train", "polymnist", "--data-root", root, "--out", clf, "--epochs", "1", *CPU])
    assert code == 0, err
    return {"root": root, "run": run_dir, "erun": erun, "nrun": nrun, "clf": clf}


def _stamp(folder):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


BUNDLES = ("run", "erun", "nrun", "clf")


@pytest.fixture
def shared_bundles_untouched(bundles):
    """Fail a case that changed the shared fixture bundles (through a hard link)."""
    before = {k: _stamp(bundles[k]) for k in BUNDLES}
    yield
    assert {k: _stamp(bundles[k]) for k in BUNDLES} == before, "a shared fixture bundle changed"


def _link_or_copy(src, dst):
    if str(src).endswith(".safetensors"):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def copy_bundle(src, dst):
    """A copy of a bundle: weights hard-linked (cheap), everything else copied."""
    shutil.copytree(src, dst, copy_function=_link_or_copy)


# --- preparations a case can ask for (run before the snapshot) -------------------------------------
def _corrupt(tmp, mp):
    p = tmp / "run" / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.unlink()  # break the hard link to the shared fixture before writing
    p.write_bytes(bytes(data))


def _notabundle(tmp, mp):
    (tmp / "notabundle").mkdir()
    (tmp / "notabundle" / "readme.txt").write_text("not a run\n")


def _bad_recipe(tmp, mp):
    (tmp / "bad.toml").write_text('[model]\nfusion = "mopoe"\nno_such_key = 1\n\n[train]\nepochs = 1\n')


def _malformed_recipe(tmp, mp):
    (tmp / "broken.toml").write_text("[model\nfusion = \n")


def _include_recipes(tmp, mp):
    """Recipes whose include is missing, a cycle, or not a file name."""
    (tmp / "inc-missing.toml").write_text('include = ["nope.toml"]\n\n[train]\nepochs = 1\n')
    (tmp / "inc-a.toml").write_text('include = ["inc-b.toml"]\n')
    (tmp / "inc-b.toml").write_text('include = ["inc-a.toml"]\n')
    (tmp / "inc-number.toml").write_text("include = 3\n")


def _empty_dir(tmp, mp):
    (tmp / "empty").mkdir()


def _a_file(tmp, mp):
    (tmp / "afile").write_text("not a folder\n")


def _broken_manifest(tmp, mp):
    (tmp / "broken").mkdir()
    (tmp / "broken" / "manifest.json").write_text('{"format": "mmvae-bundle", ')


def _no_checkpoint(tmp, mp):
    """{run} with trained weights but its checkpoint gone (deleted to save space, say)."""
    import json

    path = tmp / "run" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.pop("training_state")
    manifest["files"].pop("checkpoint.safetensors")
    path.write_text(json.dumps(manifest))
    (tmp / "run" / "checkpoint.safetensors").unlink()


def _data_root(tmp, mp):
    (tmp / "dr").mkdir()


def _garbage_zip(tmp, mp):
    (tmp / "bad.zip").write_bytes(b"this is not a zip file\n" * 10)


def _garbage_safetensors(tmp, mp):
    (tmp / "garbage.safetensors").write_bytes(b"\x00\x01garbage" * 10)


def _bad_masks(tmp, mp):
    """Own data whose presence masks are wrong in each of the ways a user can get them wrong."""
    from safetensors.torch import save_file

    base = {"audio": torch.randn(12, 3), "neural": torch.randn(12, 2), "split": (torch.arange(12) >= 9).long()}
    none = torch.zeros(12, dtype=torch.bool)
    masks = {
        "mask-empty": {"present.audio": none, "present.neural": none.clone()},
        "mask-length": {"present.neural": torch.ones(11, dtype=torch.bool)},
        "mask-dtype": {"present.neural": torch.ones(12)},
        "mask-values": {"present.neural": torch.full((12,), 3, dtype=torch.uint8)},
        "mask-name": {"present.video": torch.ones(12, dtype=torch.bool)},
        "mask-ok": {"present.neural": torch.arange(12) % 2 == 0},  # valid: only audio on half the tuples
    }
    for name, m in masks.items():
        save_file({**base, **m}, str(tmp / f"{name}.safetensors"))


def _no_tensorboard(tmp, mp):
    for name in ("tensorboard", "torch.utils.tensorboard", "tensorboardX"):
        mp.setitem(sys.modules, name, None)  # `import tensorboard` now raises ImportError


def _needs_no_cuda(tmp, mp):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: --device cuda is valid")


PREP = {
    "corrupt": _corrupt,
    "notabundle": _notabundle,
    "bad_recipe": _bad_recipe,
    "malformed_recipe": _malformed_recipe,
    "include_recipes": _include_recipes,
    "empty": _empty_dir,
    "afile": _a_file,
    "broken_manifest": _broken_manifest,
    "no_checkpoint": _no_checkpoint,
    "dr": _data_root,
    "garbage_zip": _garbage_zip,
    "garbage_safetensors": _garbage_safetensors,
    "bad_masks": _bad_masks,
    "no_tensorboard": _no_tensorboard,
    "no_cuda": _needs_no_cuda,
}


# --- the table ---------------------------------------------------------------------------------------
# train: tiny and capped at one step, so a case that is wrongly accepted still finishes quickly
TRAIN = [
    "train",
    "polymnist",
    "--out",
    "{tmp}/x",
    "--epochs",
    "1",
    "--batch-size",
    "10",
    "--latent-dim",
    "4",
    "--max-steps",
    "1",
]
TRAIN_EBM = [*TRAIN, "--prior", "ebm", "--energy-hidden", "8", "--langevin-steps", "2"]
IWAE = ["--fusion", "moe", "--objective", "iwae"]
FIT = ["fit-ebm", "{run}", "--energy-hidden", "8", "--epochs", "1", "--langevin-steps", "2", "--batch-size", "10", *CPU]
PFIT = ["fit-prior", "{run}", *CPU]
CLF = ["classifier", "train", "polymnist", "--out", "{tmp}/c", "--epochs", "1", *CPU]
CROSS = ["cross-generate", "{run}", "--out", "{tmp}/c.png", *CPU]
COH = ["eval", "coherence", "{run}", "--classifiers", "{clf}", "--n-joint", "10", "--limit", "5", *CPU]
LL = ["eval", "likelihood", "{run}", "--k", "2", "--limit", "5", *CPU]
FD_NO_CLF = ["eval", "fid", "{run}", "--n-fid", "10", "--limit", "5", *CPU]
FDF = [*FD_NO_CLF, "--features", "classifier"]
FDC = [*FDF, "--classifiers", "{clf}"]
PRI = ["eval", "prior", "{run}", "--n-prior", "10", "--limit", "5", *CPU]
ALL = [
    "eval",
    "all",
    "{run}",
    "--classifiers",
    "{clf}",
    "--n-joint",
    "10",
    "--k",
    "2",
    "--limit",
    "5",
    "--ll-limit",
    "5",
    "--n-train",
    "10",
    "--n-fid",
    "10",
    *CPU,
]
CLOSED = "http://127.0.0.1:9"  # discard port: closed, connection refused, no network used


def case(id_, argv, code=2, prep=()):
    return pytest.param(argv, code, tuple(prep), id=id_)


CASES = [
    # ---- train ----
    case("train-batch-size-0", [*TRAIN, "--device", "cpu", "--batch-size", "0"]),
    case("train-batch-size-neg", [*TRAIN, *CPU, "--batch-size", "-4"]),
    case("train-lr-neg", [*TRAIN, *CPU, "--lr", "-1"]),
    case("train-lr-0", [*TRAIN, *CPU, "--lr", "0"]),
    case("train-beta-warmup-neg", [*TRAIN, *CPU, "--beta-warmup-epochs", "-1"]),
    case("train-lr-decay-unknown", [*TRAIN, *CPU, "--lr-decay", "step"]),
    case("train-lr-decay-fraction-0", [*TRAIN, *CPU, "--lr-decay", "linear", "--lr-decay-fraction", "0"]),
    case("train-lr-decay-fraction-above-1", [*TRAIN, *CPU, "--lr-decay", "cosine", "--lr-decay-fraction", "1.5"]),
    case("train-latent-dim-0", [*TRAIN, *CPU, "--latent-dim", "0"]),
    case("train-iwae-k-0", [*TRAIN, *CPU, *IWAE, "--k", "0"]),
    case("train-iwae-k-neg", [*TRAIN, *CPU, *IWAE, "--k", "-1"]),
    case("train-epochs-0", [*TRAIN, *CPU, "--epochs", "0"]),
    case("train-epochs-neg", [*TRAIN, *CPU, "--epochs", "-2"]),
    case("train-beta-neg", [*TRAIN, *CPU, "--beta", "-1"]),
    case("train-private-dim-neg", [*TRAIN, *CPU, *IWAE, "--private-dim", "-1"]),
    case("train-mvae-subsets-neg", [*TRAIN, *CPU, "--fusion", "poe", "--objective", "mvae", "--mvae-subsets", "-1"]),
    case("train-mvtcae-alpha-above-1", [*TRAIN, *CPU, "--objective", "mvtcae", "--mvtcae-alpha", "1.5"]),
    case("train-jmvae-alpha-neg", [*TRAIN, *CPU, "--objective", "jmvae", "--jmvae-alpha", "-0.1"]),
    case("train-joint-hidden-0", [*TRAIN, *CPU, "--objective", "jmvae", "--joint-hidden", "0"]),
    case("train-peer-objective-wrong-fusion", [*TRAIN, *CPU, "--fusion", "mopoe", "--objective", "mvtcae"]),
    case("train-joint-fusion-other-objective", [*TRAIN, *CPU, "--fusion", "joint", "--objective", "elbo"]),
    case("train-jmvae-missing-ratio", [*TRAIN, *CPU, "--objective", "jmvae", "--missing-ratio", "0.2"]),
    case("train-mmjsd-laplace", [*TRAIN, *CPU, "--objective", "mmjsd", "--posterior", "laplace"]),
    case("train-mmjsd-prior-ebm", [*TRAIN_EBM, *CPU, "--objective", "mmjsd"]),
    case("train-cmvae-clusters-1", [*TRAIN, *CPU, "--objective", "cmvae", "--clusters", "1"]),
    case("train-cmvae-clusters-above-max", [*TRAIN, *CPU, "--objective", "cmvae", "--clusters", "5000"]),
    case("train-cmvae-wrong-fusion", [*TRAIN, *CPU, "--fusion", "mopoe", "--objective", "cmvae"]),
    case("train-cmvae-prior-ebm", [*TRAIN_EBM, *CPU, "--objective", "cmvae"]),
    case("train-mvae-private-dim", [*TRAIN, *CPU, "--fusion", "poe", "--private-dim", "2"]),
    case("train-likelihood-unknown", [*TRAIN, *CPU, "--likelihood", "nope"]),
    case("train-likelihood-unknown-modality", [*TRAIN, *CPU, "--likelihood", "m9=laplace"]),
    case("train-rec-weight-unknown-modality", [*TRAIN, *CPU, "--rec-weight", "m9=2"]),
    case("train-rec-weight-zero", [*TRAIN, *CPU, "--rec-weight", "m0=0"]),
    case("train-rec-weight-not-a-number", [*TRAIN, *CPU, "--rec-weight", "m0=heavy"]),
    case("train-arch-unknown", [*TRAIN, *CPU, "--arch", "nope"]),
    case("train-subsets-unknown-modality", [*TRAIN, *CPU, "--subsets", "m0,m9;m1"]),
    case("train-recipe-missing", [*TRAIN, *CPU, "--recipe", "{tmp}/nope.toml"]),
    case("train-recipe-unknown-key", [*TRAIN, *CPU, "--recipe", "{tmp}/bad.toml"], prep=["bad_recipe"]),
    case("train-recipe-malformed", [*TRAIN, *CPU, "--recipe", "{tmp}/broken.toml"], prep=["malformed_recipe"]),
    case(
        "train-recipe-include-missing", [*TRAIN, *CPU, "--recipe", "{tmp}/inc-missing.toml"], prep=["include_recipes"]
    ),
    case("train-recipe-include-cycle", [*TRAIN, *CPU, "--recipe", "{tmp}/inc-a.toml"], prep=["include_recipes"]),
    case("train-recipe-include-number", [*TRAIN, *CPU, "--recipe", "{tmp}/inc-number.toml"], prep=["include_recipes"]),
    case("train-unknown-dataset", ["train", "no-such-dataset", "--out", "{tmp}/x", *CPU]),
    case("train-missing-safetensors", ["train", "{tmp}/nope.safetensors", "--out", "{tmp}/x", *CPU]),
    case(
        "train-garbage-safetensors",
        ["train", "{tmp}/garbage.safetensors", "--out", "{tmp}/x", *CPU],
        prep=["garbage_safetensors"],
    ),
    case("train-schedule-unknown", [*TRAIN, *CPU, "--schedule", "nope"]),
    case("train-missing-ratio-1", [*TRAIN, *CPU, "--missing-ratio", "1"]),
    case("train-missing-ratio-neg", [*TRAIN, *CPU, "--missing-ratio", "-0.1"]),
    *[
        case(f"train-{m}", ["train", f"{{tmp}}/{m}.safetensors", "--out", "{tmp}/x", *CPU], prep=["bad_masks"])
        for m in ("mask-empty", "mask-length", "mask-dtype", "mask-values", "mask-name")
    ],
    case(
        "train-mask-subsets-not-held",
        ["train", "{tmp}/mask-ok.safetensors", "--subsets", "audio,neural", "--out", "{tmp}/x", *CPU],
        prep=["bad_masks"],
    ),
    case("train-resume-no-run", ["train", "polymnist", "--out", "{tmp}/empty", "--resume", *CPU], prep=["empty"]),
    case("train-resume-missing-folder", ["train", "polymnist", "--out", "{tmp}/x", "--resume", *CPU]),
    case("train-existing-run-no-overwrite", ["train", "polymnist", "--out", "{run}", "--max-steps", "1", *CPU]),
    case("train-resume-unknown-mode", ["train", "polymnist", "--out", "{tmp}/x", "--resume", "sometimes", *CPU]),
    case(
        "train-resume-auto-changed-lr",
        ["train", "polymnist", "--out", "{run}", "--resume", "auto", "--lr", "0.1", *CPU],
    ),
    case(
        "train-resume-auto-other-dataset",
        ["train", "{tmp}/mask-ok.safetensors", "--out", "{run}", "--resume", "auto", *CPU],
        prep=["bad_masks"],
    ),
    case(
        "train-resume-auto-and-overwrite",
        ["train", "polymnist", "--out", "{run}", "--resume", "auto", "--overwrite", *CPU],
    ),
    case(
        "train-resume-auto-out-is-a-file",
        ["train", "polymnist", "--out", "{tmp}/afile", "--resume", "auto", *CPU],
        prep=["afile"],
    ),
    case(
        "train-resume-auto-corrupted-manifest",
        ["train", "polymnist", "--out", "{tmp}/broken", "--resume", "auto", *CPU],
        prep=["broken_manifest"],
    ),
    case(
        "train-resume-auto-extend-post-hoc-energy",
        ["train", "polymnist", "--out", "{erun}", "--resume", "auto", "--epochs", "2", *CPU],
    ),
    case(
        "train-resume-auto-extend-without-checkpoint",
        ["train", "polymnist", "--out", "{run}", "--resume", "auto", "--epochs", "2", *CPU],
        prep=["no_checkpoint"],
    ),
    case("train-ebm-lr-0", [*TRAIN_EBM, *CPU, "--ebm-lr", "0"]),
    case("train-ebm-feedback-above-1", [*TRAIN_EBM, *CPU, "--ebm-feedback", "1.5"]),
    case("train-ebm-feedback-with-learned-p0", [*TRAIN_EBM, *CPU, "--learn-prior", "--ebm-feedback", "0.5"]),
    case("train-ebm-feedback-0-with-learned-p0", [*TRAIN_EBM, *CPU, "--learn-prior", "--ebm-feedback", "0"]),
    case("train-ebm-reg-on-unknown", [*TRAIN_EBM, *CPU, "--ebm-reg-on", "levels"]),
    case("train-ebm-betas-out-of-range", [*TRAIN_EBM, *CPU, "--ebm-betas", "1.5", "0.999"]),
    case("train-ebm-langevin-steps-neg", [*TRAIN_EBM, *CPU, "--langevin-steps", "-1"]),
    case("train-ebm-step-size-0", [*TRAIN_EBM, *CPU, "--step-size", "0"]),
    case("train-ebm-energy-hidden-0", [*TRAIN_EBM, *CPU, "--energy-hidden", "0"]),
    case("train-ebm-noise-scale-neg", [*TRAIN_EBM, *CPU, "--noise-scale", "-1"]),
    case("train-ebm-clip-grad-neg", [*TRAIN_EBM, *CPU, "--clip-grad", "-1"]),
    case("train-precision-fp16-cpu", [*TRAIN, *CPU, "--precision", "fp16"]),
    case("train-cpu-chunk-neg", [*TRAIN, *CPU, "--cpu-chunk", "-1"]),
    case("train-device-cuda-without-cuda", [*TRAIN, "--device", "cuda"], prep=["no_cuda"]),
    case("train-device-cuda-99", [*TRAIN, "--device", "cuda:99"]),
    case("train-device-unknown", [*TRAIN, "--device", "tpu"]),
    case("train-log-jsonl-missing-dir", [*TRAIN, *CPU, "--log-jsonl", "{tmp}/nodir/log.jsonl"]),
    case("train-tensorboard-not-importable", [*TRAIN, *CPU, "--tensorboard", "{tmp}/tb"], prep=["no_tensorboard"]),
    # ---- sample ----
    case("sample-n-neg", ["sample", "{run}", "-n", "-3", "--out", "{tmp}/s.png", *CPU]),
    case("sample-n-0", ["sample", "{run}", "-n", "0", "--out", "{tmp}/s.png", *CPU]),
    case("sample-out-unknown-ext", ["sample", "{run}", "-n", "2", "--out", "{tmp}/s.xyz", *CPU]),
    case(
        "sample-ebm-steps-neg",
        ["sample", "{erun}", "--prior", "ebm", "--steps", "-1", "-n", "2", "--out", "{tmp}/s.png", *CPU],
    ),
    case(
        "sample-ebm-step-size-0",
        ["sample", "{erun}", "--prior", "ebm", "--step-size", "0", "-n", "2", "--out", "{tmp}/s.png", *CPU],
    ),
    case(
        "sample-ebm-denoise-neg",
        ["sample", "{erun}", "--prior", "ebm", "--denoise", "-0.1", "-n", "2", "--out", "{tmp}/s.png", *CPU],
    ),
    case(
        "sample-save-chain-without-ebm",
        ["sample", "{run}", "--save-chain", "{tmp}/c.png", "-n", "2", "--out", "{tmp}/s.png", *CPU],
    ),
    case(
        "sample-denoise-without-ebm", ["sample", "{run}", "--denoise", "0.1", "-n", "2", "--out", "{tmp}/s.png", *CPU]
    ),
    case(  # a noise-conditional energy's Tweedie step is its smallest level's (0.98 here), issue 25f
        "sample-ncsn-denoise-not-its-smallest-level",
        ["sample", "{nrun}", "--prior", "ebm", "--denoise", "0.001", "-n", "2", "--out", "{tmp}/s.png", *CPU],
    ),
    case(
        "sample-ebm-chain-every-neg",
        [
            "sample",
            "{erun}",
            "--prior",
            "ebm",
            "-n",
            "2",
            "--out",
            "{tmp}/s.png",
            "--save-chain",
            "{tmp}/chain.png",
            "--chain-every",
            "-1",
            *CPU,
        ],
    ),
    case(
        "sample-ebm-diverges",
        ["sample", "{erun}", "--prior", "ebm", "--step-size", "1e4", "-n", "2", "--out", "{tmp}/s.png", *CPU],
        code=3,
    ),
    case("sample-ebm-without-energy", ["sample", "{run}", "--prior", "ebm", "-n", "2", "--out", "{tmp}/s.png", *CPU]),
    case("sample-corrupted-bundle", ["sample", "{run}", "-n", "2", "--out", "{tmp}/s.png", *CPU], prep=["corrupt"]),
    case(
        "sample-not-a-bundle",
        ["sample", "{tmp}/notabundle", "-n", "2", "--out", "{tmp}/s.png", *CPU],
        prep=["notabundle"],
    ),
    case("sample-missing-run", ["sample", "{tmp}/missing", "-n", "2", "--out", "{tmp}/s.png", *CPU]),
    case("sample-classifier-bundle", ["sample", "{clf}", "-n", "2", "--out", "{tmp}/s.png", *CPU]),
    # ---- fit-ebm ----
    case("fit-ebm-langevin-steps-neg", [*FIT, "--langevin-steps", "-1"]),
    case("fit-ebm-epochs-0", [*FIT, "--epochs", "0"]),
    case("fit-ebm-resume-auto-and-overwrite", [*FIT, "--out", "{tmp}/e", "--resume", "auto", "--overwrite"]),
    case("fit-ebm-resume-unknown-mode", [*FIT, "--out", "{tmp}/e", "--resume", "sometimes"]),
    case(
        "fit-prior-resume-missing-out", ["fit-prior", "{run}", "--kind", "flow", "--out", "{tmp}/no", "--resume", *CPU]
    ),
    case("fit-ebm-batch-size-0", [*FIT, "--batch-size", "0"]),
    case("fit-ebm-lr-neg", [*FIT, "--lr", "-1"]),
    case("fit-ebm-betas-out-of-range", [*FIT, "--betas", "1.5", "0.999"]),
    case("fit-ebm-step-size-0", [*FIT, "--step-size", "0"]),
    case("fit-ebm-denoise-neg", [*FIT, "--denoise", "-1"]),
    case("fit-ebm-ncsn-denoise-without-sigma-min", [*FIT, "--objective", "ncsn", "--denoise", "0.1"]),
    case("fit-ebm-ncsn-denoise-not-sigma-min", [*FIT, "--objective", "ncsn", "--sigma-min", "0.1", "--denoise", "0.2"]),
    case("fit-ebm-energy-layers-0", [*FIT, "--energy-layers", "0"]),
    case("fit-ebm-energy-hidden-0", [*FIT, "--energy-hidden", "0"]),
    case("fit-ebm-sigma-0", [*FIT, "--objective", "denoising", "--sigma", "0"]),
    case("fit-ebm-projections-0", [*FIT, "--objective", "sliced", "--projections", "0"]),
    case("fit-ebm-noise-levels-0", [*FIT, "--objective", "ncsn", "--noise-levels", "0"]),
    case("fit-ebm-sigma-max-0", [*FIT, "--objective", "ncsn", "--sigma-max", "0"]),
    case("fit-ebm-sigma-min-neg", [*FIT, "--objective", "ncsn", "--sigma-min", "-0.1"]),
    case("fit-ebm-sigma-min-above-max", [*FIT, "--objective", "ncsn", "--sigma-min", "2", "--sigma-max", "1"]),
    case("fit-ebm-noise-ratio-0", [*FIT, "--objective", "nce", "--noise-ratio", "0"]),
    case("fit-ebm-noise-ratio-for-ml", [*FIT, "--objective", "ml", "--noise-ratio", "4"]),
    case("fit-ebm-ensemble-0", [*FIT, "--objective", "nce", "--ensemble", "0"]),
    case("fit-ebm-ensemble-for-ml", [*FIT, "--objective", "ml", "--ensemble", "3"]),
    case("fit-ebm-n-joint-0", [*FIT, "--classifiers", "{clf}", "--n-joint", "0"]),
    case("fit-ebm-missing-classifiers", [*FIT, "--classifiers", "{tmp}/missing-clf"]),
    case("fit-ebm-out-equals-run", [*FIT, "--out", "{run}"]),
    case("fit-ebm-out-batch-size-0", [*FIT, "--out", "{tmp}/e", "--batch-size", "0"]),
    case("fit-ebm-log-jsonl-missing-dir", [*FIT, "--log-jsonl", "{tmp}/nodir/log.jsonl"]),
    case("fit-ebm-missing-run", ["fit-ebm", "{tmp}/missing", *CPU]),
    case("fit-ebm-corrupted-bundle", [*FIT], prep=["corrupt"]),
    # ---- fit-prior ----
    case("fit-prior-unknown-kind", [*PFIT, "--kind", "nope"]),
    case("fit-prior-ebm-epochs-0", [*PFIT, "--kind", "ebm", "--epochs", "0"]),
    case("fit-prior-ebm-flag-for-gmm", [*PFIT, "--kind", "gmm", "--energy-hidden", "8"]),
    case("fit-prior-ebm-out-is-a-run", [*PFIT, "--kind", "ebm", "--out", "{erun}"]),
    case("fit-prior-no-kind", ["fit-prior", "{run}", *CPU]),
    case("fit-prior-components-0", [*PFIT, "--kind", "gmm", "--components", "0"]),
    case("fit-prior-components-above-samples", [*PFIT, "--kind", "gmm", "--components", "21"]),
    case("fit-prior-reg-covar-0", [*PFIT, "--kind", "gmm", "--reg-covar", "0"]),
    case("fit-prior-n-init-0", [*PFIT, "--kind", "gmm", "--n-init", "0"]),
    case("fit-prior-n-init-for-flow", [*PFIT, "--kind", "flow", "--n-init", "3"]),
    case("fit-prior-flow-flag-for-gmm", [*PFIT, "--kind", "gmm", "--transforms", "2"]),
    case("fit-prior-flow-epochs-0", [*PFIT, "--kind", "flow", "--epochs", "0"]),
    case("fit-prior-flow-lr-neg", [*PFIT, "--kind", "flow", "--lr", "-1"]),
    case("fit-prior-draws-0", [*PFIT, "--kind", "gmm", "--draws", "0"]),
    case("fit-prior-out-equals-run", [*PFIT, "--kind", "gmm", "--out", "{run}"]),
    case("fit-prior-log-jsonl-missing-dir", [*PFIT, "--kind", "flow", "--log-jsonl", "{tmp}/nodir/log.jsonl"]),
    case("fit-prior-missing-run", ["fit-prior", "{tmp}/missing", "--kind", "gmm", *CPU]),
    case("fit-prior-corrupted-bundle", [*PFIT, "--kind", "gmm"], prep=["corrupt"]),
    case("sample-unknown-prior", ["sample", "{run}", "--prior", "nope", "-n", "2", "--out", "{tmp}/s.png", *CPU]),
    case("sample-unfitted-gmm", ["sample", "{run}", "--prior", "gmm", "-n", "2", "--out", "{tmp}/s.png", *CPU]),
    case("ll-unfitted-flow", [*LL, "--prior", "flow"]),
    case("ll-ebm-prior", ["eval", "likelihood", "{erun}", "--k", "2", "--limit", "5", "--prior", "ebm", *CPU]),
    case("coherence-unfitted-gmm", [*COH, "--prior", "gmm"]),
    # ---- cross-generate ----
    case("cross-unknown-modality", [*CROSS, "--given", "m9"]),
    case("cross-given-nothing", [*CROSS, "--given", ","]),
    case("cross-no-inputs", [*CROSS]),
    case("cross-n-0", [*CROSS, "--given", "m0", "-n", "0"]),
    case("cross-n-neg", [*CROSS, "--given", "m0", "-n", "-2"]),
    case(
        "cross-out-unknown-ext", ["cross-generate", "{run}", "--given", "m0", "-n", "2", "--out", "{tmp}/c.xyz", *CPU]
    ),
    case("cross-unknown-target", [*CROSS, "--given", "m0", "--targets", "m9"]),
    case("cross-everything-given", [*CROSS, "--given", "m0,m1,m2,m3,m4"]),
    case("cross-image-missing-file", [*CROSS, "--image", "m0={tmp}/missing.png"]),
    case("cross-image-no-equals", [*CROSS, "--image", "m0"]),
    case("cross-corrupted-bundle", [*CROSS, "--given", "m0", "-n", "2"], prep=["corrupt"]),
    case("cross-missing-run", ["cross-generate", "{tmp}/missing", "--given", "m0", "--out", "{tmp}/c.png", *CPU]),
    case(
        "cross-ncsn-denoise-not-its-smallest-level",
        ["cross-generate", "{nrun}", "--given", "m0", "-n", "2", "--denoise", "0.001", "--out", "{tmp}/c.png", *CPU],
    ),
    # ---- eval ----
    case(
        "eval-coherence-missing-classifiers",
        ["eval", "coherence", "{run}", "--classifiers", "{tmp}/missing-clf", "--n-joint", "10", "--limit", "5", *CPU],
    ),
    case(
        "eval-coherence-classifiers-is-a-run",
        ["eval", "coherence", "{run}", "--classifiers", "{run}", "--n-joint", "10", "--limit", "5", *CPU],
    ),
    case("eval-coherence-no-classifiers", ["eval", "coherence", "{run}", "--limit", "5", *CPU]),
    case("eval-coherence-unknown-prior", [*COH, "--prior", "nope"]),
    case("eval-coherence-ebm-without-energy", [*COH, "--prior", "ebm"]),
    case("eval-coherence-n-joint-0", [*COH, "--n-joint", "0"]),
    case("eval-coherence-n-joint-neg", [*COH, "--n-joint", "-5"]),
    case("eval-coherence-limit-0", [*COH, "--limit", "0"]),
    case(
        "eval-coherence-ebm-steps-neg",
        [
            "eval",
            "coherence",
            "{erun}",
            "--classifiers",
            "{clf}",
            "--prior",
            "ebm",
            "--steps",
            "-1",
            "--n-joint",
            "10",
            "--limit",
            "5",
            *CPU,
        ],
    ),
    case("eval-coherence-report-limit-0", [*COH, "--limit", "0", "--report", "{tmp}/rep"]),
    case(
        "eval-coherence-ncsn-denoise-not-its-smallest-level",
        [a.replace("{run}", "{nrun}") for a in COH] + ["--prior", "ebm", "--denoise", "0.001"],
    ),
    case("eval-likelihood-k-0", [*LL, "--k", "0"]),
    case("eval-likelihood-k-neg", [*LL, "--k", "-2"]),
    case("eval-likelihood-limit-neg", [*LL, "--limit", "-1"]),
    case("eval-likelihood-corrupted-bundle", [*LL], prep=["corrupt"]),
    case("eval-likelihood-missing-run", ["eval", "likelihood", "{tmp}/missing", *CPU]),
    case("eval-likelihood-unknown-split", [*LL, "--split", "nope"]),
    case("eval-latent-n-train-0", ["eval", "latent", "{run}", "--n-train", "0", "--limit", "5", *CPU]),
    case("eval-fid-n-fid-0", ["eval", "fid", "{run}", "--n-fid", "0", "--limit", "5", *CPU]),
    case(
        "eval-fid-missing-weights",
        ["eval", "fid", "{run}", "--inception-weights", "{tmp}/nope.pth", "--n-fid", "10", "--limit", "5", *CPU],
    ),
    case("eval-fid-classifier-features-without-classifiers", FDF),
    case("eval-fid-unknown-features", [*FDC, "--features", "nope"]),
    case("eval-fid-classifiers-without-classifier-features", [*FD_NO_CLF, "--classifiers", "{clf}"]),
    case("eval-fid-classifier-features-with-inception-weights", [*FDC, "--inception-weights", "{tmp}/nope.pth"]),
    case("eval-fid-classifier-features-missing-classifiers", [*FDF, "--classifiers", "{tmp}/missing-clf"]),
    case("eval-fid-classifier-features-classifiers-is-a-run", [*FDF, "--classifiers", "{run}"]),
    case("eval-fid-classifier-features-unfitted-prior", [*FDC, "--prior", "gmm"]),
    case("eval-fid-classifier-features-n-fid-1", [*FDC, "--n-fid", "1"]),
    case("eval-prior-unfitted-prior", [*PRI, "--prior", "gmm"]),
    case("eval-prior-ebm-without-energy", [*PRI, "--prior", "ebm"]),
    case("eval-prior-unknown-prior", [*PRI, "--prior", "nope"]),
    case("eval-prior-n-prior-0", [*PRI, "--n-prior", "0"]),
    case("eval-prior-split-train", [*PRI, "--split", "train"]),
    case("eval-prior-limit-0", [*PRI, "--limit", "0"]),
    case("eval-prior-langevin-on-base-prior", [*PRI, "--steps", "3"]),
    case("eval-prior-ebm-steps-neg", ["eval", "prior", "{erun}", "--prior", "ebm", "--steps", "-1", *CPU]),
    case("eval-prior-missing-run", ["eval", "prior", "{tmp}/missing", *CPU]),
    case("eval-prior-not-a-bundle", ["eval", "prior", "{tmp}/notabundle", *CPU], prep=["notabundle"]),
    case("eval-clusters-not-cmvae", ["eval", "clusters", "{run}", "--limit", "5", *CPU]),
    case("eval-clusters-limit-0", ["eval", "clusters", "{run}", "--limit", "0", *CPU]),
    case("eval-clusters-missing-run", ["eval", "clusters", "{tmp}/missing", *CPU]),
    case("eval-all-n-joint-0", [*ALL, "--n-joint", "0"]),
    case("eval-all-k-0", [*ALL, "--k", "0"]),
    case("eval-all-ll-limit-0", [*ALL, "--ll-limit", "0"]),
    case("eval-all-unknown-prior", [*ALL, "--prior", "nope"]),
    case(
        "eval-all-ncsn-denoise-not-its-smallest-level",
        [a.replace("{run}", "{nrun}") for a in ALL] + ["--prior", "ebm", "--denoise", "0.001"],
    ),
    case("eval-all-missing-classifiers", [*ALL, "--classifiers", "{tmp}/missing-clf"]),
    case("eval-all-not-a-bundle", ["eval", "all", "{tmp}/notabundle", "--limit", "5", *CPU], prep=["notabundle"]),
    # ---- classifier train ----
    case("classifier-epochs-0", [*CLF, "--epochs", "0"]),
    case("classifier-epochs-neg", [*CLF, "--epochs", "-1"]),
    case("classifier-batch-size-0", [*CLF, "--batch-size", "0"]),
    case("classifier-lr-0", [*CLF, "--lr", "0"]),
    case("classifier-lr-neg", [*CLF, "--lr", "-1"]),
    case("classifier-unknown-dataset", ["classifier", "train", "no-such-dataset", "--out", "{tmp}/c", *CPU]),
    case("classifier-out-is-a-run", ["classifier", "train", "polymnist", "--out", "{run}", "--epochs", "1", *CPU]),
    # ---- data ----
    case("data-fetch-unknown-dataset", ["data", "fetch", "no-such-dataset", "--data-root", "{tmp}/dr"], prep=["dr"]),
    case(
        "data-fetch-closed-port",
        ["data", "fetch", "polymnist", "--url", f"{CLOSED}/PolyMNIST.zip", "--data-root", "{tmp}/dr"],
        prep=["dr"],
    ),
    case(
        "data-fetch-bad-scheme",
        ["data", "fetch", "polymnist", "--url", "ftp://127.0.0.1:9/PolyMNIST.zip", "--data-root", "{tmp}/dr"],
        prep=["dr"],
    ),
    case(
        "data-fetch-not-a-url",
        ["data", "fetch", "polymnist", "--url", "::not a url::", "--data-root", "{tmp}/dr"],
        prep=["dr"],
    ),
    case(
        "data-fetch-missing-local-zip",
        ["data", "fetch", "polymnist", "--url", "{tmp}/missing.zip", "--data-root", "{tmp}/dr"],
        prep=["dr"],
    ),
    case(
        "data-fetch-garbage-zip",
        ["data", "fetch", "polymnist", "--url", "{tmp}/bad.zip", "--data-root", "{tmp}/dr"],
        prep=["dr", "garbage_zip"],
    ),
    case(
        "data-fetch-sha256-mismatch",
        ["data", "fetch", "polymnist", "--url", "{tmp}/bad.zip", "--sha256", "0" * 64, "--data-root", "{tmp}/dr"],
        prep=["dr", "garbage_zip"],
    ),
    case(
        "data-fetch-url-for-mini",
        ["data", "fetch", "polymnist-mini", "--url", f"{CLOSED}/x.zip", "--data-root", "{tmp}/dr"],
        prep=["dr"],
    ),
    case("data-build-unknown-dataset", ["data", "build", "no-such-dataset", "--out", "{tmp}/b"]),
    case("data-build-polymnist-missing-options", ["data", "build", "polymnist", "--out", "{tmp}/b"]),
    case(
        "data-build-polymnist-missing-dirs",
        ["data", "build", "polymnist", "--mnist", "{tmp}/nomnist", "--backgrounds", "{tmp}/nobg", "--out", "{tmp}/b"],
    ),
    case("data-info-unknown-dataset", ["data", "info", "no-such-dataset", "--data-root", "{tmp}/dr"], prep=["dr"]),
    case("data-info-missing-safetensors", ["data", "info", "{tmp}/nope.safetensors"]),
    case("data-info-garbage-safetensors", ["data", "info", "{tmp}/garbage.safetensors"], prep=["garbage_safetensors"]),
    # ---- compare ----
    case("compare-missing-run", ["compare", "{tmp}/missing"]),
    case("compare-not-a-bundle", ["compare", "{tmp}/notabundle"], prep=["notabundle"]),
    case("compare-no-evaluations", ["compare", "{run}"]),
    case("compare-no-evaluations-report", ["compare", "{run}", "--report", "{tmp}/rep"]),
    case("compare-no-runs", ["compare"]),
]


def snapshot(root):
    """Every file (its bytes) and folder (None) under root, by relative path."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def diff(before, after):
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return {k: v for k, v in (("added", added), ("removed", removed), ("changed", changed)) if v}


def check_one_error_line(code, expected, out, err):
    assert "Traceback" not in out + err and "internal error" not in out + err, err
    assert code == expected, f"exit {code}, expected {expected}; stderr: {err!r}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}: {err!r}"
    assert lines[0].startswith("error:"), lines[0]


@pytest.mark.parametrize("argv, expected, prep", CASES)
def test_bad_input_is_refused_and_writes_nothing(
    bundles, shared_bundles_untouched, tmp_path, monkeypatch, capsys, argv, expected, prep
):
    monkeypatch.setenv("MMVAE_DATA", str(bundles["root"]))
    text = " ".join(argv)
    for name in BUNDLES:
        if "{" + name + "}" in text:
            copy_bundle(bundles[name], tmp_path / name)
    for p in prep:
        PREP[p](tmp_path, monkeypatch)
    argv = [a.format(tmp=tmp_path, **{name: tmp_path / name for name in BUNDLES}) for a in argv]
    before = snapshot(tmp_path)
    capsys.readouterr()
    code, out, err = run(argv, capsys)
    changes = diff(before, snapshot(tmp_path))
    check_one_error_line(code, expected, out, err)
    assert not changes, f"the refused command changed {tmp_path}: {changes}"


def test_fit_ebm_divergence_exits_3_and_leaves_run_unchanged(
    bundles, shared_bundles_untouched, tmp_path, monkeypatch, capsys
):
    """A chain that diverges mid-fit: exit 3, no traceback, the last stderr line is the only `error:` line
    (the progress lines printed before the fit started are allowed here), RUN byte-for-byte unchanged."""
    monkeypatch.setenv("MMVAE_DATA", str(bundles["root"]))
    copy_bundle(bundles["run"], tmp_path / "run")
    argv = [a.format(run=tmp_path / "run") for a in FIT] + ["--objective", "ml", "--step-size", "1e4"]
    before = snapshot(tmp_path)
    code, out, err = run(argv, capsys)
    changes = diff(before, snapshot(tmp_path))
    assert "Traceback" not in out + err and "internal error" not in out + err, err
    assert code == 3, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "diverged" in lines[-1], err
    assert sum(line.startswith("error:") for line in lines) == 1, err
    assert not changes, f"the failed fit changed {tmp_path}: {changes}"


def test_sample_jpeg_is_real_or_refused(bundles, shared_bundles_untouched, tmp_path, capsys):
    """--out s.jpg: either a real JPEG (magic bytes FF D8) or a one-line refusal that writes nothing."""
    out = tmp_path / "s.jpg"
    code, stdout, err = run(["sample", bundles["run"], "-n", "2", "--out", out, *CPU], capsys)
    assert "Traceback" not in stdout + err and "internal error" not in stdout + err, err
    if code == 0:
        assert out.read_bytes()[:2] == b"\xff\xd8", f"{out} is not a JPEG: starts with {out.read_bytes()[:8]!r}"
    else:
        check_one_error_line(code, 2, stdout, err)
        assert not out.exists()


def test_the_table_covers_every_command():
    """Every command `mmvae --help` lists has at least one case above."""
    from mmvae_cli.cli import cli

    seen = {tuple(p.values[0][:2]) for p in CASES} | {(p.values[0][0],) for p in CASES}
    for name, cmd in cli.commands.items():
        if name == "evaluate":
            continue  # an alias of eval
        subs = getattr(cmd, "commands", None)
        if subs:
            for sub in subs:
                assert (name, sub) in seen, f"no bad-input case for `mmvae {name} {sub}`"
        else:
            assert (name,) in seen, f"no bad-input case for `mmvae {name}`"
    assert len(CASES) >= 45
