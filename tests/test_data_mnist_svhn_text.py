"""MNIST-SVHN-Text: torchvision's MNIST and SVHN downloads pointed at a local HTTP server (127.0.0.1)
serving tiny files in the real formats, fetched through the CLI, paired as mnist-svhn plus the digit's
name as text; trained one epoch and cross-generated to text. Failed downloads leave nothing behind."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets as tvd
from helpers_cli import run
from helpers_data import free_port, http_server, listing, write_mnist_raw

from mmvae_cli.data import load_dataset
from mmvae_cli.data.mnist_svhn_text import text_rows, text_table
from mmvae_cli.data.polymnist_text import WORDS

CPU = ["--device", "cpu"]


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # noqa: S324 (torchvision's checksum)


@pytest.fixture()
def mirror(tmp_path, monkeypatch):
    """MNIST .gz files and SVHN .mat files served on 127.0.0.1; torchvision's URLs and md5s point at them."""
    www = tmp_path / "www"
    write_mnist_raw(www, per_class_train=1, per_class_test=1, compress=True)
    raw = www / "MNIST" / "raw"
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 10)):
        y = rng.permutation(np.arange(n) % 10)
        scipy.io.savemat(
            www / f"{split}_32x32.mat",
            {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8), "y": np.where(y == 0, 10, y).reshape(-1, 1)},
        )
    with http_server(www) as url:
        monkeypatch.setattr(tvd.MNIST, "mirrors", [f"{url}/MNIST/raw/"])
        monkeypatch.setattr(tvd.MNIST, "resources", [(p.name, md5(p)) for p in sorted(raw.glob("*.gz"))])
        monkeypatch.setattr(
            tvd.SVHN,
            "split_list",
            {s: [f"{url}/{s}_32x32.mat", f"{s}_32x32.mat", md5(www / f"{s}_32x32.mat")] for s in ("train", "test")},
        )
        yield url, www


def test_text_table_and_reproducible_starts():
    strings, first = text_table()
    assert len(strings) == sum(9 - len(w) for w in WORDS) and all(len(s) == 8 for s in strings)
    labels = np.arange(200) % 10
    rows = text_rows(labels, "train")
    assert np.array_equal(rows, text_rows(labels, "train")) and not np.array_equal(rows, text_rows(labels, "test"))
    assert all(strings[r].strip() == WORDS[d] for r, d in zip(rows, labels))
    starts = {strings[r].index(WORDS[d]) for r, d in zip(rows, labels) if d == 1}
    assert starts == set(range(6))  # "one": every start in [0, 5] occurs


def test_fetch_pairs_train_and_cross_generate_text(mirror, tmp_path, capsys):
    root = tmp_path / "data"
    code, out, err = run(["data", "fetch", "mnist-svhn-text", "--data-root", root], capsys)
    assert code == 0, err
    assert out.strip() == str(root / "mnist-svhn") and listing(root) == ["mnist-svhn"]
    d = load_dataset("mnist-svhn-text", "train", str(root))
    base = load_dataset("mnist-svhn", "train", str(root))
    assert d.modalities == ["mnist", "svhn", "text"] and len(d) == len(base) == 300  # 10 classes x 1 x dm 30
    assert torch.equal(d.labels, base.labels) and d.kind("text").name == "text" and d.shape("text") == (8,)
    texts = d.kind("text").decode(d.rows("text", torch.arange(len(d))))
    assert all(t.strip() == WORDS[int(y)] for t, y in zip(texts, d.labels))
    assert load_dataset("mnist-svhn-text", "train", str(root)).fingerprint == d.fingerprint != base.fingerprint

    rd = tmp_path / "run"
    args = ["--out", rd, "--epochs", "1", "--batch-size", "64", "--latent-dim", "4", "--data-root", root, *CPU]
    code, _, err = run(["train", "mnist-svhn-text", *args], capsys)
    assert code == 0, err
    code, out, err = run(
        ["cross-generate", rd, "--given", "mnist,svhn", "-n", "3", "--json", "--out", tmp_path / "x.png"]
        + ["--data-root", root, *CPU],
        capsys,
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert len(rows) == 3 and all(len(r["generated"]["text"]) == 8 for r in rows)


def test_unreachable_mirror_exits_2_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tvd.MNIST, "mirrors", [f"http://127.0.0.1:{free_port()}/"])
    code, _, err = run(["data", "fetch", "mnist-svhn-text", "--data-root", tmp_path], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "could not download MNIST-SVHN" in errors[0] and "refused" in errors[0]
    assert listing(tmp_path) == []
