"""The bundles in tests/data/bundle-0.2/, written by the code before issue 24 (energies in ebm.safetensors
and a top-level `ebm` manifest section), and the numbers that code gives on them (numbers.json).

    python tests/helpers_legacy.py DEST      # (re)build the bundles and their numbers in DEST

Bundles (all on `data.safetensors`, two vector modalities, 40 training tuples; paths relative to the
folder, so commands run with it as the working directory):

    vae      MoPoE, latent 4; a post-hoc energy (fit-ebm, ml) and a gmm prior (fit-prior) in it
    ebm-only an energy-only bundle of vae (fit-ebm --out, denoising score matching; parent ../vae)
    joint    MoPoE trained with its energy (train --prior ebm)
    ebmvae   EB-MVAE (fusion none) with a post-hoc energy (denoising score matching)

`measure(folder)` gives the numbers: `sample --prior ebm` of each bundle with an energy, EB-MVAE's
`cross-generate` (clamped Langevin), and refits (`fit-ebm` on vae and on ebmvae: the JSON it prints
and the energy's weights). The tests recompute them with today's code (test_legacy_bundle.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CPU = ["--device", "cpu"]
TRAIN = ["data.safetensors", "--latent-dim", "4", "--hidden", "16", "--epochs", "1", "--batch-size", "16", *CPU]
FIT = ["--energy-hidden", "8", "--epochs", "2", "--langevin-steps", "3", "--batch-size", "16", *CPU]
SAMPLE = ["-n", "4", "--steps", "5", "--seed", "0", *CPU]
# the refits measured: (bundle copied, fit-ebm flags); the energy weights and JSON stdout recorded
REFITS = {
    "vae-ml": (
        "vae",
        ["--overwrite", *FIT, "--seed", "3", "--base", "base", "--objective", "ml"],
    ),  # 0.2's default (0.4: nce over the gmm)
    "ebmvae-denoising": ("ebmvae", ["--overwrite", *FIT, "--seed", "3"]),
}


def cli(argv):
    """Run `mmvae ARGV` in-process; (exit code, stdout, stderr) with capture by redirection."""
    import contextlib
    import io

    from mmvae_cli.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def ok(argv) -> str:
    code, out, err = cli(argv)
    assert code == 0, f"mmvae {' '.join(map(str, argv))}: exit {code}: {err}"
    return out


@contextmanager
def inside(folder: Path):
    old = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def write_data(path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    n = 48
    c = torch.randn(n, 2, generator=g)
    a = torch.cat([c, 0.3 * torch.randn(n, 4, generator=g)], 1) @ torch.randn(6, 6, generator=g)
    b = torch.cat([c, 0.3 * torch.randn(n, 3, generator=g)], 1) @ torch.randn(5, 5, generator=g)
    save_file({"a": a.contiguous(), "b": b.contiguous(), "split": (torch.arange(n) >= 40).long()}, str(path))


def build(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with inside(dest):
        write_data(Path("data.safetensors"))
        ok(["train", *TRAIN, "--fusion", "mopoe", "--out", "vae"])
        ok(["fit-ebm", "vae", *FIT])
        ok(["fit-prior", "vae", "--kind", "gmm", "--components", "2", *CPU])
        ok(["fit-ebm", "vae", "--out", "ebm-only", "--objective", "denoising", *FIT])
        man = json.loads(Path("ebm-only/manifest.json").read_text())
        man["parent"]["path"] = "../vae"  # relative: no path of this machine in the fixture
        Path("ebm-only/manifest.json").write_text(json.dumps(man, indent=2) + "\n")
        ok(["train", *TRAIN, "--prior", "ebm", "--energy-hidden", "8", "--langevin-steps", "2", "--out", "joint"])
        ok(["train", *TRAIN, "--fusion", "none", "--out", "ebmvae"])
        ok(["fit-ebm", "ebmvae", *FIT])
        for run in ("vae", "joint", "ebmvae"):
            Path(run, "checkpoint.safetensors").unlink()  # finished runs: not needed, keeps the fixture small
            man = json.loads(Path(run, "manifest.json").read_text())
            man["files"].pop("checkpoint.safetensors", None)
            man.pop("training_state", None)
            Path(run, "manifest.json").write_text(json.dumps(man, indent=2) + "\n")
    (dest / "numbers.json").write_text(json.dumps(measure(dest), indent=1) + "\n")


def tensors(path: Path) -> dict[str, list]:
    return {k: v.flatten().tolist() for k, v in sorted(load_file(str(path)).items())}


def measure(folder: Path, work: Path | None = None) -> dict:
    """The numbers of the bundles in `folder` (copied to `work`, default a temporary folder, first)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(work or tmp) / "bundles"
        shutil.copytree(folder, work, ignore=shutil.ignore_patterns("numbers.json"))
        res: dict = {"torch": torch.__version__, "sample": {}, "cross_generate": {}, "refit": {}}
        with inside(work):
            for run in ("vae", "ebm-only", "joint", "ebmvae"):
                ok(["sample", run, "--prior", "ebm", *SAMPLE, "--out", f"{run}-s.safetensors"])
                res["sample"][run] = tensors(Path(f"{run}-s.safetensors"))
            ok(["cross-generate", "ebmvae", "--given", "a", "--split", "test", *SAMPLE, "--out", "x.safetensors"])
            res["cross_generate"]["ebmvae"] = tensors(Path("x.safetensors"))
            for name, (run, flags) in REFITS.items():
                shutil.copytree(run, name)
                out = json.loads(ok(["fit-ebm", name, "--json", *flags]))
                del out["run"], out["seconds"]
                res["refit"][name] = {"stdout": out, "weights": tensors(energy_file(Path(name)))}
    return res


def energy_file(run: Path) -> Path:
    """Where a bundle keeps its energy's weights (prior-ebm.safetensors; ebm.safetensors before issue 24)."""
    new = run / "prior-ebm.safetensors"
    return new if new.exists() else run / "ebm.safetensors"


if __name__ == "__main__":
    build(Path(sys.argv[1]))
