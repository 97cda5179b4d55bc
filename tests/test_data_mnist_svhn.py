"""MNIST-SVHN: IDX and .mat readers in torchvision's formats, the reference pairing, its cache."""

from __future__ import annotations

import gzip
import urllib.error

import numpy as np
import pytest
import scipy.io
import torch
from helpers_data import write_idx

from mmvae_cli.data import dataset_info, fetch_mnist_svhn, load_dataset
from mmvae_cli.data import mnist_svhn as MS
from mmvae_cli.errors import DataError

# per-class counts of the tiny fixture: MNIST and SVHN differ so that n = min(...) matters
MNIST_COUNTS = {"train": [5, 4, 6, 3, 5, 4, 2, 7, 3, 1], "test": [2, 1, 2, 1, 2, 1, 2, 1, 2, 1]}
SVHN_COUNTS = {"train": [3, 6, 2, 5, 5, 1, 4, 2, 6, 0], "test": [1, 2, 1, 2, 1, 2, 1, 2, 1, 2]}


def _labels(counts, rng):
    y = np.repeat(np.arange(10), counts)
    rng.shuffle(y)
    return y


def write_mnist_svhn(root, seed=0):
    rng = np.random.default_rng(seed)
    base = root / "mnist-svhn"
    truth = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ym = _labels(MNIST_COUNTS[split], rng)
        xm = rng.integers(0, 256, size=(len(ym), 28, 28), dtype=np.uint8)
        write_idx(base / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", xm)
        write_idx(base / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", ym.astype(np.uint8))
        ys = _labels(SVHN_COUNTS[split], rng)
        xs = rng.integers(0, 256, size=(32, 32, 3, len(ys)), dtype=np.uint8)
        (base / "SVHN").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(
            base / "SVHN" / f"{split}_32x32.mat",
            {"X": xs, "y": np.where(ys == 0, 10, ys).reshape(-1, 1).astype(np.uint8)},
        )
        truth[split] = (xm, ym, xs, ys)
    return truth


@pytest.fixture()
def ms_root(tmp_path):
    return tmp_path, write_mnist_svhn(tmp_path)


def test_read_idx_formats_and_errors(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    plain = write_idx(tmp_path / "a-idx3-ubyte", arr)
    gz = write_idx(tmp_path / "b-idx3-ubyte", arr, compress=True)
    assert np.array_equal(MS.read_idx(plain), arr) and np.array_equal(MS.read_idx(gz), arr)
    # int32 big-endian payload
    ints = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "i").write_bytes(bytes([0, 0, 0x0C, 1]) + (3).to_bytes(4, "big") + ints.tobytes())
    assert MS.read_idx(tmp_path / "i").tolist() == [1, -2, 70000]
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="bad magic"):
        MS.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(plain.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        MS.read_idx(tmp_path / "short")
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(b"")
    with pytest.raises(DataError):
        MS.read_idx(tmp_path / "x.gz")


def test_svhn_mat_layout_and_label_ten(ms_root):
    root, truth = ms_root
    x, y = MS.load_svhn_mat(root / "mnist-svhn" / "SVHN" / "train_32x32.mat")
    xs, ys = truth["train"][2], truth["train"][3]
    assert x.shape == (xs.shape[3], 3, 32, 32) and x.dtype == np.uint8
    assert np.array_equal(y, ys) and y.min() == 0 and 10 not in y
    n, c, h, w = 3, 2, 5, 7
    assert x[n, c, h, w] == xs[h, w, c, n]


def test_pairing_is_the_reference_algorithm():
    rng = np.random.default_rng(1)
    la, lb = _labels(MNIST_COUNTS["train"], rng), _labels(SVHN_COUNTS["train"], rng)
    a, b = MS.pair_indices(la, lb, max_per_class=4, dm=3, seed=11)
    n_per = [min(x, y, 4) for x, y in zip(MNIST_COUNTS["train"], SVHN_COUNTS["train"])]
    assert len(a) == len(b) == 3 * sum(n_per)
    assert np.array_equal(la[a], lb[b])  # every pair has equal labels
    pos = 0
    for c in range(10):
        n = n_per[c]
        first_a, first_b = np.flatnonzero(la == c)[:n], np.flatnonzero(lb == c)[:n]
        for _ in range(3):  # dm permutations of the first n
            assert sorted(a[pos : pos + n]) == sorted(first_a) and sorted(b[pos : pos + n]) == sorted(first_b)
            pos += n
    a2, b2 = MS.pair_indices(la, lb, max_per_class=4, dm=3, seed=11)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)
    a3, _ = MS.pair_indices(la, lb, max_per_class=4, dm=3, seed=12)
    assert not np.array_equal(a, a3)


def test_load_pairs_modalities_and_cache(ms_root, monkeypatch):
    root, truth = ms_root
    d = load_dataset("mnist-svhn", "train", str(root))
    expected = MS.DEFAULT_DM * sum(min(x, y) for x, y in zip(MNIST_COUNTS["train"], SVHN_COUNTS["train"]))
    assert d.name == "mnist-svhn" and len(d) == expected
    assert d.modalities == ["mnist", "svhn"]
    assert d.shape("mnist") == (1, 28, 28) and d.shape("svhn") == (3, 32, 32)
    assert d.kind("mnist").name == d.kind("svhn").name == "image" and d.dtype("svhn") == torch.uint8
    xm, ym, xs, ys = truth["train"]
    idx = d.tensors.index
    assert np.array_equal(ym[idx["mnist"].numpy()], d.labels.numpy())
    assert np.array_equal(ys[idx["svhn"].numpy()], d.labels.numpy())
    # rows are the right images, gathered lazily and in full
    j = torch.tensor([0, 7, expected - 1])
    rows = d.rows("svhn", j)
    for k, r in zip(j.tolist(), rows):
        assert np.array_equal(r.numpy(), xs[..., int(idx["svhn"][k])].transpose(2, 0, 1))
    assert torch.equal(d.tensors["mnist"][j], d.rows("mnist", j))
    batch = d.batch(j)
    assert batch["mnist"].shape == (3, 1, 28, 28) and batch["svhn"].dtype == torch.float32
    sub = d.subset(torch.arange(5))
    assert len(sub) == 5 and torch.equal(sub.rows("svhn", torch.arange(5)), d.rows("svhn", torch.arange(5)))
    # the pair cache exists and is used next time; same pairs, same fingerprint
    caches = list((root / "mnist-svhn" / "mmvae-cache").glob("pairs-train-*.safetensors"))
    assert len(caches) == 1
    test = load_dataset("mnist-svhn", "test", str(root))
    assert len(test) == MS.DEFAULT_DM * sum(min(x, y) for x, y in zip(MNIST_COUNTS["test"], SVHN_COUNTS["test"]))
    monkeypatch.setattr(MS, "pair_indices", lambda *a, **k: pytest.fail("pairs were not cached"))
    again = load_dataset("mnist-svhn", "train", str(root))
    assert torch.equal(again.tensors.index["svhn"], idx["svhn"]) and again.fingerprint == d.fingerprint
    assert len(load_dataset("mnist-svhn", "test", str(root))) == len(test)


def test_pairs_are_deterministic_across_fresh_caches(tmp_path):
    write_mnist_svhn(tmp_path / "a")
    write_mnist_svhn(tmp_path / "b")
    da = load_dataset("mnist-svhn", "train", str(tmp_path / "a"))
    db = load_dataset("mnist-svhn", "train", str(tmp_path / "b"))
    assert torch.equal(da.tensors.index["mnist"], db.tensors.index["mnist"])
    assert torch.equal(da.tensors.index["svhn"], db.tensors.index["svhn"])
    assert da.fingerprint == db.fingerprint


def test_info(ms_root):
    root, _ = ms_root
    info = dataset_info("mnist-svhn", str(root))
    assert info["modalities"]["svhn"] == {"kind": "image", "shape": [3, 32, 32], "dtype": "uint8"}
    assert info["pairing"]["dm"] == 30 and info["splits"]["test"]["size"] > 0


def test_missing_and_broken_files(tmp_path, monkeypatch):
    with pytest.raises(DataError) as e:
        load_dataset("mnist-svhn", "train", str(tmp_path))
    assert "mmvae data fetch mnist-svhn" in str(e.value) and "\n" not in str(e.value)
    write_mnist_svhn(tmp_path)
    (tmp_path / "mnist-svhn" / "SVHN" / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match="test_32x32.mat"):
        load_dataset("mnist-svhn", "test", str(tmp_path))
    (tmp_path / "mnist-svhn" / "SVHN" / "train_32x32.mat").write_bytes(b"garbage")
    with pytest.raises(DataError, match="MATLAB"):
        load_dataset("mnist-svhn", "train", str(tmp_path))
    scipy.io.savemat(
        tmp_path / "mnist-svhn" / "SVHN" / "train_32x32.mat",
        {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1), np.uint8)},
    )
    with pytest.raises(DataError, match=r"\(32, 32, 3, N\)"):
        load_dataset("mnist-svhn", "train", str(tmp_path))


def test_fetch_wraps_network_failures(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvd, "MNIST", offline)
    with pytest.raises(DataError) as e:
        fetch_mnist_svhn(str(tmp_path))
    assert "could not download MNIST-SVHN" in str(e.value) and "\n" not in str(e.value)
