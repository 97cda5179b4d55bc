"""CUB image–captions: a tiny archive in the MMVAE reference layout served on 127.0.0.1, fetched through
the CLI, parsed (vocabulary, <eos>/<pad>, 10 captions per image), trained one epoch, cross-generated."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_cli import run
from helpers_data import free_port, http_server, listing, zip_folder
from PIL import Image

from mmvae_cli.data import cub as C
from mmvae_cli.data import dataset_info, load_dataset
from mmvae_cli.modalities.words import tokenize

CPU = ["--device", "cpu"]
COLOURS = ["red", "blue", "yellow"]


def captions_for(colour: str, k: int) -> list[str]:
    """Ten captions of a bird of `colour`; 'rare' words occur at most 3 times in the training file."""
    return [f"This bird has a {colour} crown and a short beak{' rare' + str(k) if j == 0 else ''}." for j in range(10)]


def write_cub(base, per_class=(("001.Red_bird", 2), ("002.Blue_bird", 2)), test=(("003.Yellow_bird", 2),)):
    """cub/{train,test}/<class>/*.jpg and text_{trainval,test}classes.txt (10 lines per image, image order)."""
    rng = np.random.default_rng(0)
    for split, classes, fname in (("train", per_class, C.TEXT_FILES["train"]), ("test", test, C.TEXT_FILES["test"])):
        lines = []
        for c, (cls, n) in enumerate(classes):
            (base / split / cls).mkdir(parents=True, exist_ok=True)
            colour = cls.split(".")[1].split("_")[0].lower()
            for i in range(n):
                arr = rng.integers(0, 255, (30 + 5 * i, 40, 3), dtype=np.uint8)
                Image.fromarray(arr).save(base / split / cls / f"{cls}_{i:04d}.jpg")
                lines += captions_for(colour, 10 * c + i)
        (base / fname).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return base


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cub")
    write_cub(tmp / "src" / "cub")
    www = tmp / "www"
    www.mkdir()
    zip_folder(tmp / "src", www / "cub.zip")  # members cub/train/..., as the reference's data/cub
    broken = tmp / "broken" / "cub"
    write_cub(broken)
    (broken / C.TEXT_FILES["test"]).write_text("only one caption\n")
    zip_folder(tmp / "broken", www / "short.zip")
    (www / "corrupt.zip").write_bytes(b"PK\x03\x04 not really a zip" * 20)
    with http_server(www) as url:
        yield url


def test_tokens_vocabulary_and_encoding(tmp_path):
    assert tokenize("This bird's beak, red.") == ["this", "bird", "'s", "beak", ",", "red", "."]
    vocab = C.build_vocab(["a a a a b b b b c c c", "a"])
    assert vocab == ["<exc>", "<pad>", "<eos>", "a", "b"]  # c occurs 3 times: not more than 3


def test_fetch_train_and_cross_generate(served, tmp_path, capsys):
    root = tmp_path / "data"
    code, out, err = run(["data", "fetch", "cub", "--url", f"{served}/cub.zip", "--data-root", root], capsys)
    assert code == 0, err
    assert out.strip() == str(root / "cub") and listing(root) == ["cub"]
    d = load_dataset("cub", "train", str(root))
    assert len(d) == 40 and d.modalities == ["image", "caption"] and d.labels is None
    assert d.shape("image") == (3, 64, 64) and d.shape("caption") == (32,)
    kind = d.kind("caption")
    assert kind.name == "words" and kind.alphabet[:3] == ["<exc>", "<pad>", "<eos>"]
    # tuples 0..9 share image 0; caption 0 carries a rare word -> <exc>, then <eos> and <pad>
    assert torch.equal(d.rows("image", torch.tensor([0])), d.rows("image", torch.tensor([9])))
    assert kind.decode(d.rows("caption", torch.tensor([0, 1]))) == [
        "this bird has a red crown and a short beak <exc> .",
        "this bird has a red crown and a short beak .",
    ]
    ids = d.rows("caption", torch.tensor([1]))[0].tolist()
    assert ids[11] == kind.index["<eos>"] and set(ids[12:]) == {kind.index["<pad>"]}
    test = load_dataset("cub", "test", str(root))
    assert len(test) == 20 and test.kind("caption").params == kind.params  # the training vocabulary
    assert "yellow" not in kind.index and test.kind("caption").decode(test.rows("caption", torch.tensor([1])))[0] == (
        "this bird has a <exc> crown and a short beak ."
    )
    info = dataset_info("cub", str(root))
    assert info["modalities"]["caption"]["kind"] == "words" and info["labels"] is False

    rd = tmp_path / "run"
    args = ["--out", rd, "--epochs", "1", "--batch-size", "16", "--latent-dim", "4", "--data-root", root, *CPU]
    code, _, err = run(["train", "cub", "--fusion", "moe", *args], capsys)
    assert code == 0, err
    png = tmp_path / "x.png"
    code, out, err = run(
        ["cross-generate", rd, "--given", "image", "-n", "3", "--json", "--out", png, "--data-root", root, *CPU], capsys
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert len(rows) == 3 and all(isinstance(r["generated"]["caption"], str) for r in rows)
    code, out, err = run(
        ["cross-generate", rd, "--text", "caption=A red bird.", "--json", "--out", png, "--data-root", root, *CPU],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[0])["input"]["caption"] == "a red bird ."
    code, _, err = run(["eval", "coherence", rd, "--data-root", root, *CPU], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "does not apply to cub" in err
    code, out, err = run(["eval", "all", rd, "--limit", "4", "--k", "2", "--json", "--data-root", root, *CPU], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["likelihood"] and res["coherence"] is None and "no class labels" in res["skipped"]["coherence"]


@pytest.mark.parametrize(
    "name, expected",
    [("missing.zip", "HTTP 404"), ("corrupt.zip", "zip"), ("short.zip", "1 captions for 2 images")],
)
def test_bad_archives_exit_2_and_leave_nothing(served, tmp_path, capsys, name, expected):
    root = tmp_path / "data"
    code, out, err = run(["data", "fetch", "cub", "--url", f"{served}/{name}", "--data-root", root], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert listing(root) == []


def test_no_url_or_unreachable_is_one_line(tmp_path, capsys):
    code, _, err = run(["data", "fetch", "cub", "--data-root", tmp_path], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "dead" in err and "--url" in err
    url = f"http://127.0.0.1:{free_port()}/cub.zip"
    code, _, err = run(["data", "fetch", "cub", "--archive", url, "--data-root", tmp_path], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "could not download" in err
    assert listing(tmp_path) == []
    code, _, err = run(["train", "cub", "--data-root", tmp_path, "--out", tmp_path / "r", *CPU], capsys)
    assert code == 2 and "mmvae data fetch cub" in err and not (tmp_path / "r").exists()
