"""Bundles written before modalities owned their nets and likelihoods (tests/data/modality-legacy/,
made by `python tests/test_modality_legacy.py DIR` with that version) still load under the same
state-dict keys (parameters in the same order, so old checkpoints' optimizer states fit) and give the outputs they gave then: prior samples decoded, cross-generation,
posteriors, log-likelihoods and the training objective, for a fixed seed.

The bundles: tiny images (1, 4, 4) (black and white) and (3, 4, 4) (conv or mlp nets), vectors (5,) and strings over a
4-character alphabet (text kind, mlp nets), with every likelihood (laplace, gaussian, bernoulli,
categorical), for MoPoE, MMVAE+ (private latents, DReG) and MVAE (PoE)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

HERE = Path(__file__).parent / "data" / "modality-legacy"
ALPHABET = "abc "
BUNDLES = {
    "mopoe": ["--fusion", "mopoe", "--likelihood", "vec=gaussian", "--arch", "txt=mlp"],
    "mmvaeplus": [
        *("--fusion", "moe", "--objective", "dreg", "--k", "2", "--private-dim", "2"),
        *("--likelihood", "img=bernoulli,vec=gaussian", "--arch", "pic=mlp,txt=mlp"),
    ],
    "mvae": ["--fusion", "poe", "--arch", "img=mlp,pic=mlp,txt=mlp", "--rescale"],
}


def inputs() -> dict[str, torch.Tensor]:
    """Model-space inputs (B = 4) of every modality."""
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, len(ALPHABET), (4, 4), generator=g)
    return {
        "img": torch.randint(0, 2, (4, 1, 4, 4), generator=g).float(),
        "pic": torch.rand(4, 3, 4, 4, generator=g),
        "txt": torch.nn.functional.one_hot(ids, len(ALPHABET)).float(),
        "vec": torch.randn(4, 5, generator=g),
    }


def outputs(model, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a bundle gives for a fixed seed, by names."""
    out = {}
    with torch.no_grad():
        torch.manual_seed(0)
        out.update({f"generate.{n}": t for n, t in model.generate(model.sample_prior(3)).items()})
        torch.manual_seed(1)
        out.update({f"cross.{n}": t for n, t in model.cross_generate({"img": x["img"], "txt": x["txt"]}).items()})
        q = model.posterior(x)
        out["posterior.loc"], out["posterior.scale"] = q.components.mean, q.components.stddev
        torch.manual_seed(2)
        z = q.rsample_each(2)
        outs = model.decode(z)
        out["log_likelihoods"] = model.log_likelihoods(outs, x)
        out.update({f"means.{n}": t for n, t in model.means(outs).items()})
    torch.manual_seed(3)
    loss, _ = model(x)
    out["loss"] = loss.detach().reshape(1)
    return out


def make(folder: Path) -> None:
    """Train the bundles one epoch on tiny data with the installed mmvae; write them and their outputs."""
    from helpers_cli import run

    from mmvae_cli.modalities import TextKind
    from mmvae_cli.model_io import load_model

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    n = 24
    save_file(
        {
            "img": torch.randint(0, 2, (n, 1, 4, 4), generator=g, dtype=torch.uint8) * 255,
            "pic": torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8),
            "vec": torch.randn(n, 5, generator=g),
            "txt": TextKind(ALPHABET).encode(["ab", "c", "abca", "ba"] * (n // 4), 4),
            "split": (torch.arange(n) >= 16).long(),
        },
        str(folder / "data.safetensors"),
        metadata={"kind.txt": "text", "alphabet.txt": ALPHABET},
    )
    common = ["--epochs", "1", "--batch-size", "8", "--latent-dim", "3", "--hidden", "8", "--device", "cpu"]
    for name, args in BUNDLES.items():
        out = folder / name
        code, _, err = run(["train", folder / "data.safetensors", "--out", out, *common, *args])
        assert code == 0, err
        (out / "checkpoint.safetensors").unlink()
        model, _ = load_model(out)
        order = json.dumps([k for k, _ in model.named_parameters()])  # the optimizer state's order
        tensors = {k: v.contiguous() for k, v in outputs(model, inputs()).items()}
        save_file(tensors, str(out / "expected.safetensors"), metadata={"parameters": order})
    (folder / "data.safetensors").unlink()


@pytest.mark.parametrize("name", list(BUNDLES))
def test_legacy_bundle_loads_and_gives_its_outputs(name, tmp_path):
    from mmvae_cli.model_io import load_model

    run = tmp_path / name
    shutil.copytree(HERE / name, run)
    model, _ = load_model(run)
    assert sorted(model.state_dict()) == sorted(load_file(str(run / "model.safetensors")))
    with safe_open(str(run / "expected.safetensors"), "pt") as f:  # old checkpoints' Adam states fit by order
        assert [k for k, _ in model.named_parameters()] == json.loads(f.metadata()["parameters"])
    expected = load_file(str(run / "expected.safetensors"))
    got = outputs(model, inputs())
    assert sorted(got) == sorted(expected)
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{name} {k}: {m}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    make(Path(sys.argv[1]))
