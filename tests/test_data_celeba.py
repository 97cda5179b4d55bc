"""CelebA bimodal: a tiny tar.gz of the official files served on 127.0.0.1, fetched through the CLI,
parsed (148 centre crop -> 64x64, 40 attributes -> {0, 1}, MoPoE's partitions), trained one epoch,
cross-generated; malformed files and unreachable URLs are one-line errors that leave nothing."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from helpers_cli import run
from helpers_data import free_port, http_server, listing
from PIL import Image

from mmvae_cli.data import celeba as C
from mmvae_cli.data import load_dataset

CPU = ["--device", "cpu"]
NAMES = [f"Attr_{i}" for i in range(40)]
PARTS = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2]  # 6 train, 3 test (MoPoE's partition 1), 1 unused


def write_celeba(base, attr_rows=None):
    """img_align_celeba/<id>.jpg (178x218, a white square marks the 148 crop's top-left corner) + the two lists."""
    (base / C.IMAGES).mkdir(parents=True)
    rng = np.random.default_rng(0)
    attrs = rng.choice([-1, 1], size=(len(PARTS), 40))
    for i in range(len(PARTS)):
        arr = np.zeros((218, 178, 3), dtype=np.uint8)
        arr[35:45, 15:25] = 255  # inside the crop, top-left
        arr[:30, :] = 128  # outside the crop: must not show
        Image.fromarray(arr).save(base / C.IMAGES / f"{i + 1:06d}.jpg", quality=95)
    rows = attr_rows or [f"{i + 1:06d}.jpg " + " ".join(f"{v:2d}" for v in attrs[i]) for i in range(len(PARTS))]
    (base / C.ATTR_FILE).write_text(f"{len(rows)}\n" + " ".join(NAMES) + "\n" + "\n".join(rows) + "\n")
    (base / C.PARTITION_FILE).write_text("".join(f"{i + 1:06d}.jpg {p}\n" for i, p in enumerate(PARTS)))
    return attrs


def tar_folder(src, path):
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src, arcname=src.name)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("celeba")
    attrs = write_celeba(tmp / "CelebA")
    www = tmp / "www"
    www.mkdir()
    tar_folder(tmp / "CelebA", www / "celeba.tar.gz")  # members CelebA/img_align_celeba/..., CelebA/list_*.txt
    write_celeba(tmp / "bad" / "CelebA", attr_rows=["000001.jpg 1 0 1"])
    tar_folder(tmp / "bad" / "CelebA", www / "badattr.tar.gz")
    (tmp / "evil.txt").write_text("outside")
    with tarfile.open(www / "evil.tar.gz", "w:gz") as tf:
        tf.add(tmp / "evil.txt", arcname="../evil.txt")
    (www / "truncated.tar.gz").write_bytes((www / "celeba.tar.gz").read_bytes()[:500])
    with http_server(www) as url:
        yield url, attrs


def test_fetch_parse_train_and_cross_generate(served, tmp_path, capsys):
    url, attrs = served
    root = tmp_path / "data"
    code, out, err = run(["data", "fetch", "celeba", "--url", f"{url}/celeba.tar.gz", "--data-root", root], capsys)
    assert code == 0, err
    assert out.strip() == str(root / "celeba") and listing(root) == ["celeba"]
    d = load_dataset("celeba", "train", str(root))
    t = load_dataset("celeba", "test", str(root))
    assert (len(d), len(t)) == (6, 3) and d.modalities == ["image", "attributes"] and d.labels is None
    assert d.shape("image") == (3, 64, 64) and d.kind("attributes").name == "vector"
    assert torch.equal(t.tensors["attributes"][0], torch.from_numpy((attrs[6] > 0).astype(np.float32)))
    img = d.tensors["image"][0].float()
    assert img[:, :3, :3].mean() > 200 and img[:, 20:, 20:].mean() < 20  # the crop starts at (35, 15)
    assert d.extra["attributes"] == NAMES

    rd = tmp_path / "run"
    args = ["--out", rd, "--epochs", "1", "--batch-size", "4", "--latent-dim", "4", "--data-root", root, *CPU]
    code, _, err = run(["train", "celeba", *args], capsys)
    assert code == 0, err
    png = tmp_path / "x.png"
    code, out, err = run(
        ["cross-generate", rd, "--given", "image", "-n", "2", "--json", "--out", png, "--data-root", root, *CPU],
        capsys,
    )
    assert code == 0, err
    assert png.is_file() and all("attributes" in json.loads(line)["generated"] for line in out.strip().splitlines())
    code, _, err = run(["eval", "coherence", rd, "--data-root", root, *CPU], capsys)
    assert code == 2 and "does not apply to celeba" in err


@pytest.mark.parametrize(
    "name, expected",
    [
        ("missing.tar.gz", "HTTP 404"),
        ("truncated.tar.gz", "tar"),
        ("badattr.tar.gz", "line 3"),
        ("evil.tar.gz", "unsafe"),
    ],
)
def test_bad_archives_exit_2_and_leave_nothing(served, tmp_path, capsys, name, expected):
    url, _ = served
    root = tmp_path / "data"
    code, _, err = run(["data", "fetch", "celeba", "--url", f"{url}/{name}", "--data-root", root], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert listing(root) == []


def test_no_url_or_unreachable_is_one_line(tmp_path, capsys):
    code, _, err = run(["data", "fetch", "celeba", "--data-root", tmp_path], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--url" in err
    url = f"http://127.0.0.1:{free_port()}/celeba.zip"
    code, _, err = run(["data", "fetch", "celeba", "--url", url, "--data-root", tmp_path], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "could not download" in err
    assert listing(tmp_path) == []
