"""Text modalities: the kind (encode/decode, categorical likelihood, char nets, rendering), tiny image+text
data through the CLI for every fusion, text classifiers and coherence, --text/--input/--json, old bundles."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers_cli import digit_pattern, run, write_tiny_polymnist
from PIL import Image
from safetensors.torch import save_file

from mmvae_cli import distributions as D
from mmvae_cli.data import load_dataset
from mmvae_cli.data.polymnist_text import WORDS, digit_strings
from mmvae_cli.errors import MMVAEError
from mmvae_cli.modalities import KINDS, TextKind
from mmvae_cli.model import ModelConfig
from mmvae_cli.model_io import load_model
from mmvae_cli.nets.text import CharDecoder, CharEncoder

CPU = ["--device", "cpu"]


def write_image_text(path, n_train=32, n_test=10):
    """A tiny safetensors file: one 3x28x28 image modality and a text modality (digit names), labels, split."""
    n = n_train + n_test
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 10
    img = np.stack([digit_pattern(int(d), rng, 0) for d in labels]).transpose(0, 3, 1, 2)
    ids = TextKind().encode(digit_strings(labels, "train"), 8)
    save_file(
        {
            "img": torch.from_numpy(np.ascontiguousarray(img)),
            "text": ids,
            "label": torch.from_numpy(labels),
            "split": (torch.arange(n) >= n_train).long(),
        },
        str(path),
        metadata={"kind.text": "text"},
    )
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_image_text(tmp_path_factory.mktemp("text") / "pairs.safetensors")


def test_text_kind_encodes_decodes_and_refuses_bad_strings():
    k = TextKind()
    assert k.vocab == 71 and k.index["-"] == 36  # the reference alphabet; '-' listed twice
    ids = k.encode(["Three", "a b"], 8)
    assert k.decode(ids) == ["three   ", "a b     "]
    with pytest.raises(MMVAEError, match="outside the alphabet"):
        k.encode(["é"], 8)
    with pytest.raises(MMVAEError, match="has 9 characters"):
        k.encode(["ninetynin"], 8)
    assert set(KINDS) >= {"image", "vector", "text"}


def test_categorical_log_likelihood_is_exact_on_a_hand_made_example():
    k = TextKind(alphabet="ab ")
    ids = k.encode(["b "], 2)  # ids [1, 2]
    out = torch.tensor([[[0.0, math.log(3.0), 0.0], [math.log(2.0), 0.0, math.log(5.0)]]])
    # position 1: softmax([0, log 3, 0])[1] = 3/5; position 2: softmax([log 2, 0, log 5])[2] = 5/8
    expected = math.log(3 / 5) + math.log(5 / 8)
    got = D.log_likelihood("categorical", out, k.to_model(ids), 1.0)
    assert got.shape == (1,) and abs(float(got) - expected) < 1e-6


@pytest.mark.parametrize("length", [3, 8, 13, 32])
def test_char_nets_fit_any_length(length):
    enc, dec = CharEncoder((length, 71), 6), CharDecoder((length, 71), 6)
    loc, raw = enc(torch.rand(4, length, 71))
    assert loc.shape == raw.shape == (4, 6)
    assert dec(torch.randn(4, 6)).shape == (4, length, 71)
    if length == 8:  # the MoPoE reference layout: 8 -> 4 -> 1
        convs = [m for m in enc.body.net if isinstance(m, torch.nn.Conv1d)]
        assert [(c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [(1, 1, 0), (4, 2, 1), (4, 2, 0)]


def test_polymnist_text_mini_strings_name_the_digit(tmp_path):
    root = write_tiny_polymnist(tmp_path / "d", n_train=20, n_test=10)
    (root / "polymnist").rename(root / "polymnist-mini")  # stands in for the built polymnist-mini
    a = load_dataset("polymnist-text-mini", "train", str(root))
    b = load_dataset("polymnist-text-mini", "train", str(root))
    assert a.modalities == ["m0", "m1", "m2", "text"] and a.kind("text").name == "text"
    assert a.fingerprint == b.fingerprint and torch.equal(a.tensors["text"], b.tensors["text"])
    strings = a.kind("text").decode(a.tensors["text"])
    assert all(len(s) == 8 and s.strip() == WORDS[int(y)] for s, y in zip(strings, a.labels))
    assert len({s for s in strings if s.strip() == "one"}) > 1  # random offsets
    assert a.batch(torch.arange(3))["text"].shape == (3, 8, 71)


FUSIONS = {
    "poe": ["--fusion", "poe"],
    "moe-iwae": ["--fusion", "moe", "--objective", "iwae", "--k", "2"],
    "mopoe": ["--fusion", "mopoe", "--objective", "elbo"],
    "moe-private": ["--fusion", "moe", "--private-dim", "2"],
}


@pytest.mark.parametrize("name", list(FUSIONS))
def test_every_fusion_trains_on_image_and_text(tiny, tmp_path, name, capsys):
    out = tmp_path / name
    code, _, err = run(
        ["train", tiny, "--out", out, "--epochs", "1", "--batch-size", "16", "--latent-dim", "4", *CPU, *FUSIONS[name]],
        capsys,
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    spec = {m["name"]: m for m in manifest["model"]["modalities"]}
    assert spec["text"]["kind"] == "text" and spec["text"]["likelihood"] == "categorical"
    assert spec["text"]["arch"] == "char" and spec["text"]["shape"] == [8, 71] and spec["img"]["kind"] == "image"
    model, _ = load_model(out)
    gen = model.cross_generate({"img": torch.rand(2, 3, 28, 28)}, ["text"])
    assert gen["text"].shape == (2, 8, 71)
    assert torch.allclose(gen["text"].sum(-1), torch.ones(2, 8))
    assert all(len(s) == 8 for s in model.kinds["text"].to_json(gen["text"]))


def test_rec_weight_names_a_weight_that_wins_over_rescale(tiny, tmp_path, capsys):
    """--rec-weight text=20 weights log p(text | z) by 20; --rescale still weights the others."""
    out = tmp_path / "w"
    args = ["train", tiny, "--out", out, "--epochs", "1", "--batch-size", "16", "--latent-dim", "4", *CPU]
    code, _, err = run([*args, "--rescale", "--rec-weight", "text=20"], capsys)
    assert code == 0, err
    spec = {m["name"]: m for m in json.loads((out / "manifest.json").read_text())["model"]["modalities"]}
    assert spec["text"]["rescale"] == 20.0 and spec["img"]["rescale"] == 1.0  # img is the largest
    model, _ = load_model(out)
    assert [s.rescale for s in model.config.modalities] == [spec[n]["rescale"] for n in model.names]


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("textruns")
    rd, clf = tmp / "mopoe", tmp / "clf"
    assert run(["train", tiny, "--out", rd, "--epochs", "2", "--batch-size", "8", "--latent-dim", "4", *CPU])[0] == 0
    assert run(["classifier", "train", tiny, "--out", clf, "--epochs", "3", *CPU])[0] == 0
    return tmp, rd, clf


def test_text_classifier_and_coherence_end_to_end(trained, capsys):
    _, rd, clf = trained
    manifest = json.loads((clf / "manifest.json").read_text())
    assert manifest["kinds"]["text"]["kind"] == "text" and manifest["modalities"]["text"] == [8, 71]
    assert 0.0 <= manifest["test_accuracy"]["text"] <= 1.0
    code, out, err = run(
        [
            "eval",
            "coherence",
            rd,
            "--classifiers",
            clf,
            "--n-joint",
            "20",
            "--json",
            "--report",
            rd.parent / "report",
            *CPU,
        ],
        capsys,
    )
    assert code == 0, err
    c = json.loads(out)
    assert "text" in json.dumps(c) and "img" in json.dumps(c)
    assert (rd.parent / "report" / "joint_samples.png").is_file()


def test_cross_generate_text_input_json_and_png(trained, tmp_path, capsys):
    _, rd, _ = trained
    png = tmp_path / "t.png"
    code, out, err = run(["cross-generate", rd, "--text", "text=  seven ", "--out", png, "--json", *CPU], capsys)
    assert code == 0, err
    obj = json.loads(out.strip().splitlines()[0])
    assert obj["index"] == 0 and obj["input"]["text"] == "  seven " and "img" not in obj.get("generated", {})
    rows = np.asarray(Image.open(png))
    assert rows.shape[0] > 2 * 16  # two rows: the rendered input text, the image
    txt = tmp_path / "in.txt"
    txt.write_text("four\n", encoding="utf-8")
    img = tmp_path / "in.png"
    Image.fromarray(digit_pattern(4, np.random.default_rng(0), 0)).save(img)
    code, out, err = run(
        ["cross-generate", rd, "--input", f"img={img}", "--out", tmp_path / "g.png", "--json", *CPU], capsys
    )
    assert code == 0, err
    assert len(json.loads(out)["generated"]["text"]) == 8
    code, _, err = run(["cross-generate", rd, "--input", f"text={txt}", "--out", tmp_path / "h.png", *CPU], capsys)
    assert code == 0, err
    code, _, err = run(["cross-generate", rd, "--text", "text=ünïcode", "--out", tmp_path / "x.png", *CPU], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "alphabet" in err


def test_rendered_text_tile_has_ink():
    k = TextKind()
    tiles = k.render(k.to_model(k.encode(["eight", "        "], 8)))
    assert tiles.shape[0] == 2 and tiles.dtype == np.uint8
    assert (tiles[0] < 128).any() and not (tiles[1] < 128).any()


def test_old_manifests_without_kind_still_load(trained, tmp_path):
    _, rd, clf = trained
    d = ModelConfig.from_dict({"modalities": [{"name": "a", "shape": [3, 28, 28]}, {"name": "b", "shape": [7]}]})
    assert [m.kind for m in d.modalities] == ["image", "vector"]
    import shutil

    old = shutil.copytree(rd, tmp_path / "old")  # an image-only-style manifest: strip kinds
    m = json.loads((old / "manifest.json").read_text())
    for spec in m["model"]["modalities"]:
        if spec["kind"] == "image":
            spec.pop("kind")
            spec.pop("params")
    (old / "manifest.json").write_text(json.dumps(m))
    model, _ = load_model(old)
    assert model.kinds["img"].name == "image" and model.kinds["text"].name == "text"
    from mmvae_cli.classifier import load_classifiers

    old_clf = shutil.copytree(clf, tmp_path / "oldclf")
    m = json.loads((old_clf / "manifest.json").read_text())
    m["kinds"].pop("img")
    (old_clf / "manifest.json").write_text(json.dumps(m))
    c, _ = load_classifiers(old_clf)
    assert c.kinds["img"].name == "image"


def test_energy_chain_figure_draws_text_rows(trained, tmp_path, capsys):
    """Yuan et al. fig. 4 with text: fit-ebm on an image+text run, then `sample --prior ebm --save-chain`
    draws, per chain, an image row and a text row (strings rendered into tiles) along the chain."""
    import shutil

    _, rd, _ = trained
    r = tmp_path / "ebm"
    shutil.copytree(rd, r)
    ebm = ["--energy-hidden", "16", "--epochs", "1", "--langevin-steps", "4", *CPU]
    code, _, err = run(["fit-ebm", r, *ebm], capsys)
    assert code == 0, err
    chain = tmp_path / "chain.png"
    args = ["sample", r, "--prior", "ebm", "-n", "3", "--out", tmp_path / "s.png", "--save-chain", chain]
    code, _, err = run([*args, "--chain-every", "2", *CPU], capsys)
    assert code == 0, err
    img = np.asarray(Image.open(chain).convert("RGB"))
    text_tile = TextKind().render(torch.zeros(1, 8, 71))[0]  # the text tile's size; images are 28x28
    h, w = max(28, text_tile.shape[0]), max(28, text_tile.shape[1])
    assert img.shape[:2] == (3 * 2 * (h + 2) + 2, 3 * (w + 2) + 2)  # 3 chains x (img, text) rows; 4/2 + 1 columns
    text_rows = [img[2 + (2 * i + 1) * (h + 2) : (2 * i + 2) * (h + 2), 2 : 2 + text_tile.shape[1]] for i in range(3)]
    assert all((row == (255, 255, 240)).all(-1).any() for row in text_rows)  # the text tiles' background is there
