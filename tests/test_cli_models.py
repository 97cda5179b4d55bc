"""`mmvae train` for every model of the papers, one epoch on tiny PolyMNIST-, MNIST-SVHN- and
vector-shaped data; every bundle reloads and generates; model options fail with one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_cli import run, write_tiny_polymnist
from safetensors.torch import save_file
from test_data_mnist_svhn import write_mnist_svhn

from mmvae_cli.model_io import load_model

MODELS = {
    "mvae": ["--fusion", "poe"],
    "mvae-subsets": ["--fusion", "poe", "--mvae-subsets", "2"],
    "mmvae-elbo": ["--fusion", "moe", "--objective", "elbo"],
    "mmvae-iwae": ["--fusion", "moe", "--objective", "iwae", "--k", "3"],
    "mmvae-dreg": ["--fusion", "moe", "--objective", "dreg", "--k", "3"],
    "mopoe": ["--fusion", "mopoe", "--subsets", "unimodal+full"],
    "mmvaeplus": ["--fusion", "moe", "--objective", "dreg", "--private-dim", "3"],
}
EXPECTED = {  # (fusion, objective, private_dim) each bundle's manifest must record
    "mvae": ("poe", "mvae", 0),
    "mvae-subsets": ("poe", "mvae", 0),
    "mmvae-elbo": ("moe", "elbo", 0),
    "mmvae-iwae": ("moe", "iwae", 0),
    "mmvae-dreg": ("moe", "dreg", 0),
    "mopoe": ("mopoe", "elbo", 0),
    "mmvaeplus": ("moe", "dreg", 3),
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    poly = write_tiny_polymnist(tmp / "poly", n_train=32, n_test=10)
    ms = tmp / "ms"
    write_mnist_svhn(ms)
    g = torch.Generator().manual_seed(0)
    vec = tmp / "events.safetensors"  # audio features + neural recordings of the same events
    save_file(
        {
            "audio": torch.randn(40, 12, generator=g),
            "neural": torch.randn(40, 7, generator=g),
            "label": torch.arange(40) % 4,
            "split": (torch.arange(40) >= 32).long(),
        },
        str(vec),
    )
    return tmp, poly, ms, vec


def _check_bundle(run_dir, name, names):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    m = manifest["model"]
    assert (m["fusion"], m["objective"], m["private_dim"]) == EXPECTED[name]
    assert manifest["epochs_done"] == 1
    model, _ = load_model(run_dir)
    assert model.names == names
    z = model.sample_prior(3)
    out = model.generate(z)
    assert set(out) == set(names) and all(torch.isfinite(v).all() for v in out.values())
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_on_polymnist_shaped_data(roots, name, capsys):
    tmp, poly, _, _ = roots
    out = tmp / "runs" / f"poly-{name}"
    code, _, err = run(
        [
            "train",
            "polymnist",
            "--data-root",
            poly,
            "--out",
            out,
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--latent-dim",
            "4",
            "--device",
            "cpu",
            *MODELS[name],
        ],
        capsys,
    )
    assert code == 0, err
    model = _check_bundle(out, name, [f"m{i}" for i in range(5)])
    assert model.config.extra.get("mvae_k", 0) == (2 if name == "mvae-subsets" else 0)
    gen = model.cross_generate({"m0": torch.rand(2, 3, 28, 28)}, ["m3"])
    assert gen["m3"].shape == (2, 3, 28, 28)


@pytest.mark.parametrize("name", ["mvae", "mmvae-dreg", "mopoe"])
def test_mnist_svhn_models_use_the_recipe_nets_and_rescaling(roots, name, capsys):
    tmp, _, ms, _ = roots
    out = tmp / "runs" / f"ms-{name}"
    code, _, err = run(
        [
            "train",
            "mnist-svhn",
            "--data-root",
            ms,
            "--out",
            out,
            "--schedule",
            "cpu",
            "--epochs",
            "1",
            "--latent-dim",
            "4",
            "--device",
            "cpu",
            *MODELS[name][:2],
        ],
        capsys,
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["recipe"] == f"mnist-svhn-{name.split('-')[0]}.toml"
    specs = {m["name"]: m for m in manifest["model"]["modalities"]}
    assert specs["mnist"]["arch"] == "mlp" and specs["svhn"]["arch"] == "conv32"
    assert specs["mnist"]["rescale"] == pytest.approx(3072 / 784) and specs["svhn"]["rescale"] == 1.0
    model = _check_bundle(out, name, ["mnist", "svhn"])
    if name == "mmvae-dreg":  # MMVAE on MNIST-SVHN: Laplace, learned prior scale, K from the cpu schedule
        assert (manifest["model"]["posterior"], manifest["model"]["k"]) == ("laplace", 4)
        assert model.prior.raw.requires_grad


@pytest.mark.parametrize("name", ["mvae", "mmvae-dreg", "mopoe", "mmvaeplus"])
def test_vector_data_models(roots, name, capsys):
    tmp, _, _, vec = roots
    out = tmp / "runs" / f"vec-{name}"
    code, _, err = run(
        [
            "train",
            vec,
            "--out",
            out,
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--latent-dim",
            "3",
            "--likelihood",
            "audio=gaussian,neural=laplace",
            "--device",
            "cpu",
            *MODELS[name],
        ],
        capsys,
    )
    assert code == 0, err
    model = _check_bundle(out, name, ["audio", "neural"])
    specs = {m.name: m for m in model.config.modalities}
    assert (specs["audio"].likelihood, specs["neural"].likelihood) == ("gaussian", "laplace")
    assert all(type(model.encoders[n]).__name__ == "MLPEncoder" for n in model.names)


def test_generic_image_shape_gets_a_conv_net_sized_to_it(roots, capsys):
    tmp, _, _, _ = roots
    path = tmp / "shapes.safetensors"
    g = torch.Generator().manual_seed(1)
    save_file(
        {
            "spec": torch.rand(24, 2, 17, 23, generator=g),
            "trace": torch.randn(24, 5, generator=g),
            "split": (torch.arange(24) >= 20).long(),
        },
        str(path),
    )
    out = tmp / "runs" / "shapes"
    code, _, err = run(
        [
            "train",
            path,
            "--out",
            out,
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--latent-dim",
            "3",
            "--fusion",
            "moe",
            "--objective",
            "dreg",
            "--k",
            "2",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    model, _ = load_model(out)
    assert type(model.encoders["spec"]).__name__ == "ConvEncoder"
    assert model.generate(model.sample_prior(2))["spec"].shape == (2, 2, 17, 23)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--likelihood", "audio=gaussian,video=laplace"], "'video' is not a modality"),
        (["--likelihood", "poisson"], "unknown value 'poisson'"),
        (["--arch", "neural=conv28"], "conv28 needs (C, 28, 28)"),
        (["--fusion", "mopoe", "--private-dim", "2"], "--private-dim (MMVAE+) needs --fusion moe"),
        (["--fusion", "poe", "--posterior", "laplace"], "needs Gaussian posteriors"),
    ],
)
def test_model_option_errors_are_one_line(roots, extra, needle, capsys):
    tmp, _, _, vec = roots
    code, _, err = run(
        ["train", vec, "--out", tmp / "runs" / "bad", "--overwrite", "--epochs", "1", "--device", "cpu", *extra], capsys
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
