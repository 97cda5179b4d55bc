"""Modality kinds own their nets and likelihoods: the likelihoods are the torch densities, every kind's
nets and likelihoods are the --arch / --likelihood choices, a kind registered in KINDS is all a new
kind needs (its class names its nets and likelihood), and ModelConfig's defaults are ModelSettings'."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_cli import run
from safetensors.torch import save_file
from torch import distributions as td
from torch import nn

from mmvae_cli import distributions as D
from mmvae_cli import modalities
from mmvae_cli.config import ModelSettings, default_of
from mmvae_cli.errors import MMVAEError
from mmvae_cli.modalities import TextKind, VectorKind
from mmvae_cli.model import ModalitySpec, ModelConfig
from mmvae_cli.model_io import load_model
from mmvae_cli.registry import FUSIONS


def test_likelihoods_are_the_torch_densities_summed_over_each_sample():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)  # (S, B, *shape)
    x = torch.rand(3, 4, 5, generator=g, dtype=torch.float64)
    onehot = nn.functional.one_hot(torch.randint(0, 5, (3, 4), generator=g), 5).double()
    binary = torch.randint(0, 2, (3, 4, 5), generator=g).double()
    cases = {
        "laplace": (x, td.Laplace(out, 0.3).log_prob(x), out),
        "gaussian": (x, td.Normal(out, 0.3).log_prob(x), out),
        "bernoulli": (binary, td.Bernoulli(logits=out).log_prob(binary.expand_as(out)), torch.sigmoid(out)),
        "categorical": (onehot, td.Categorical(logits=out).log_prob(onehot.argmax(-1))[..., None], out.softmax(-1)),
    }
    assert list(D.LIKELIHOODS) == list(cases)
    for name, (data, lp, mean) in cases.items():
        lik = D.LIKELIHOODS[name]
        got = lik.log_likelihood(out, data, 0.3)
        assert got.shape == (2, 3)
        torch.testing.assert_close(got, lp.flatten(2).sum(-1), rtol=1e-12, atol=1e-12, msg=name)
        torch.testing.assert_close(lik.mean(out), mean, rtol=0, atol=0, msg=name)


def test_every_kinds_nets_and_likelihoods_are_the_choices():
    assert list(modalities.archs()) == ["conv28", "conv32", "conv", "mlp", "char", "words"]
    assert list(modalities.likelihoods()) == ["laplace", "gaussian", "bernoulli", "categorical"]
    assert list(TextKind.likelihoods) == ["categorical"] and list(VectorKind.archs) == ["mlp"]
    m = ModalitySpec("t", [8, 71], kind="text").modality()
    assert (m.likelihood.name, m.arch) == ("categorical", "char")
    with pytest.raises(MMVAEError, match="laplace does not apply to text modality 't'; choose categorical"):
        ModalitySpec("t", [8, 71], "laplace", kind="text").modality()


def test_two_kinds_may_not_give_one_name_two_meanings(monkeypatch):
    class Other(VectorKind):
        archs = {"mlp": lambda shape, latent, hidden: (nn.Identity(), nn.Identity())}

    monkeypatch.setitem(modalities.KINDS, "other", Other)
    with pytest.raises(MMVAEError, match="'mlp' names something else"):
        modalities.archs()


def test_model_config_defaults_are_model_settings():
    cfg = ModelConfig([ModalitySpec("a", [2]), ModalitySpec("t", [8, 71], kind="text")])
    for f in ("latent_dim", "fusion", "subsets", "k", "beta", "posterior", "prior", "learn_prior", "hidden"):
        assert getattr(cfg, f) == default_of(ModelSettings, f), f
    assert (cfg.private_dim, cfg.private_prior) == (0, default_of(ModelSettings, "private_prior"))
    assert cfg.objective == FUSIONS[cfg.fusion].objective and ModelConfig([], fusion="moe").objective == "iwae"
    a, t = cfg.modalities
    assert a.scale == t.scale == default_of(ModelSettings, "likelihood_scale")
    assert (a.likelihood, t.likelihood) == (default_of(ModelSettings, "likelihood"), "categorical")


class Poisson(D.Likelihood):
    """Poisson(exp(out)): x out - exp(out) - log x!."""

    name = "poisson"

    def log_prob(self, out, x, scale):
        return x * out - out.exp() - torch.lgamma(x + 1)

    def mean(self, out):
        return out.exp()


class TinyEncoder(nn.Module):
    def __init__(self, shape, latent):
        super().__init__()
        self.loc, self.raw = nn.Linear(shape[0], latent), nn.Linear(shape[0], latent)

    def forward(self, x):
        return self.loc(x), self.raw(x)


class CountKind(VectorKind):
    """Counts per feature (N, D): a Poisson likelihood and one-layer nets, named by the class alone."""

    name = "counts"
    likelihoods = {"poisson": Poisson()}
    default_likelihood = "poisson"
    archs = {"linear": lambda shape, latent, hidden: (TinyEncoder(shape, latent), nn.Linear(latent, shape[0]))}
    own_defaults = True

    def default_arch(self, shape):
        return "linear"


def test_a_kind_registered_in_kinds_brings_its_nets_and_likelihood(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(modalities.KINDS, "counts", CountKind)
    g = torch.Generator().manual_seed(0)
    data = tmp_path / "counts.safetensors"
    counts = torch.poisson(torch.full((24, 3), 2.0), generator=g)
    save_file({"n": counts, "v": torch.randn(24, 2, generator=g)}, str(data), metadata={"kind.n": "counts"})
    args = [
        "train",
        data,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--latent-dim",
        "2",
        "--hidden",
        "4",
        "--device",
        "cpu",
    ]
    code, _, err = run([*args, "--out", tmp_path / "r"], capsys)
    assert code == 0, err
    spec = {m["name"]: m for m in json.loads((tmp_path / "r" / "manifest.json").read_text())["model"]["modalities"]}
    assert (spec["n"]["kind"], spec["n"]["likelihood"], spec["n"]["arch"]) == ("counts", "poisson", "linear")
    model, _ = load_model(tmp_path / "r")
    assert isinstance(model.modalities["n"].likelihood, Poisson) and isinstance(model.encoders["n"], TinyEncoder)
    out = torch.randn(5, 3, generator=g)
    want = (counts[:5] * out - out.exp() - torch.lgamma(counts[:5] + 1)).sum(-1)
    torch.testing.assert_close(model.log_likelihoods({"n": out}, {"n": counts[:5]}), want)
    code, _, err = run([*args, "--out", tmp_path / "bad", "--likelihood", "v=poisson"], capsys)
    assert code == 2 and "poisson does not apply to vector modality 'v'; choose laplace" in err
