"""PolyMNIST: the generation algorithm, determinism, the official-layout loader, its cache and errors."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers_cli import run
from helpers_data import MODS, all_files, listing, tile, write_backgrounds, write_mmnist, write_mnist_raw
from PIL import Image

from mmvae_cli.cli.data_cmd import data as data_group
from mmvae_cli.data import DATASETS, build_polymnist, build_polymnist_mini, data_root, dataset_info, load_dataset
from mmvae_cli.data import polymnist as P
from mmvae_cli.errors import DataError


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


# ----------------------------------------------------------------------------------------------
# generation algorithm
# ----------------------------------------------------------------------------------------------


def test_compose_inverts_exactly_under_the_binarised_digit():
    rng = np.random.default_rng(0)
    bg = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    digits = rng.choice(np.array([0, 100, 128, 129, 255], dtype=np.uint8), size=(6, 28, 28))
    xs, ys = rng.integers(0, 50 - 28, 6), rng.integers(0, 40 - 28, 6)
    out = P.compose(bg, digits, xs, ys)
    assert out.shape == (6, 28, 28, 3) and out.dtype == np.uint8
    for k in range(6):
        crop = bg[ys[k] : ys[k] + 28, xs[k] : xs[k] + 28]
        mask = digits[k] > 128  # 128 is background, 129 is digit
        assert np.array_equal(out[k][mask], 255 - crop[mask])
        assert np.array_equal(out[k][~mask], crop[~mask])
        # same as the float formulation of the reference: img[:, mask] = 1 - img[:, mask], then quantise
        ref = crop.astype(np.float32) / 255
        ref[mask] = 1 - ref[mask]
        assert np.array_equal(out[k], np.floor(ref * 255 + 0.5).astype(np.uint8))


def test_png_writer_roundtrips_through_pil(tmp_path):
    arr = np.random.default_rng(3).integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
    (tmp_path / "x.png").write_bytes(P.png_bytes(arr))
    with Image.open(tmp_path / "x.png") as im:
        assert im.mode == "RGB" and im.size == (28, 28)
        assert np.array_equal(np.asarray(im), arr)


def _match(out_img, digits_of_class, bg):
    """All (digit index, x, y) such that compose(bg, digit, x, y) == out_img."""
    h, w = bg.shape[:2]
    hits = []
    for j, dig in digits_of_class:
        mask = dig > 128
        for y in range(h - 28):
            for x in range(w - 28):
                crop = bg[y : y + 28, x : x + 28]
                if np.array_equal(out_img, np.where(mask[..., None], 255 - crop, crop)):
                    hits.append((j, x, y))
    return hits


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny_inputs")
    mnist = write_mnist_raw(tmp / "mnist", per_class_train=3, per_class_test=2, seed=5)
    # names sorted differently from creation order; the 6th image must be ignored (first five by name)
    names = ["d_last.png", "b.jpg", "a.png", "c.png", "e.png", "z_extra.png"]
    sizes = ((41, 37), (35, 44), (30, 30), (52, 33), (40, 40), (60, 60))
    bgs = write_backgrounds(tmp / "bgs", sizes=sizes, names=names)
    (tmp / "bgs" / "notes.txt").write_text("not an image")
    return tmp, mnist, bgs


def test_build_follows_the_reference_algorithm(tiny_inputs, tmp_path):
    tmp, mnist, bgs = tiny_inputs
    # jpg backgrounds are lossy: compare against the decoded arrays the builder sees
    bgs = [P.load_background(p) for p in P.list_backgrounds(tmp / "bgs")]
    assert [p.name for p in P.list_backgrounds(tmp / "bgs")] == ["a.png", "b.jpg", "c.png", "d_last.png", "e.png"]
    mm = build_polymnist(tmp / "mnist", tmp / "bgs", tmp_path / "out", seed=3)
    assert mm == tmp_path / "out" / "MMNIST"
    assert listing(tmp_path / "out") == ["MMNIST"]  # no temp folders left
    for split, per in (("train", 3), ("test", 2)):
        images, labels = mnist[split]
        assert listing(mm / split) == MODS
        n = 10 * per
        for m in range(5):
            files = listing(mm / split / f"m{m}")
            assert len(files) == n
            # names {i}.{digit}.png with i = running offset + position (unique, 0..n-1)
            idx = sorted(int(f.split(".")[0]) for f in files)
            assert idx == list(range(n))
            used = {}
            for f in files:
                d = int(f.split(".")[1])
                with Image.open(mm / split / f"m{m}" / f) as im:
                    assert im.size == (28, 28) and im.mode == "RGB"
                    out = np.asarray(im)
                cands = [(j, images[j]) for j in np.flatnonzero(labels == d)]
                hits = _match(out, cands, bgs[m])  # modality m uses background m (sorted by name)
                assert hits, f"{split}/m{m}/{f} is not a digit of class {d} on a crop of background {m}"
                used.setdefault(d, set()).add(hits[0][0])
            # each modality uses every MNIST digit of class d exactly once (a permutation)
            for d in range(10):
                assert used[d] == set(np.flatnonzero(labels == d).tolist())


def test_build_is_byte_identical_and_seed_dependent(tiny_inputs, tmp_path):
    tmp, _, _ = tiny_inputs
    a = build_polymnist(tmp / "mnist", tmp / "bgs", tmp_path / "a", seed=7)
    b = build_polymnist(tmp / "mnist", tmp / "bgs", tmp_path / "b", seed=7)
    c = build_polymnist(tmp / "mnist", tmp / "bgs", tmp_path / "c", seed=8)
    fa, fb, fc = all_files(a), all_files(b), all_files(c)
    assert len(fa) == 5 * (30 + 20)
    assert fa == fb
    assert fa != fc


def test_build_accepts_gz_idx_in_dir_and_refuses_bad_inputs(tmp_path):
    write_mnist_raw(tmp_path / "m", per_class_train=1, per_class_test=1, compress=True)
    os.replace(tmp_path / "m" / "MNIST" / "raw", tmp_path / "flat")  # IDX files directly in DIR
    write_backgrounds(tmp_path / "bgs")
    mm = build_polymnist(tmp_path / "flat", tmp_path / "bgs", tmp_path / "out")
    assert len(listing(mm / "test" / "m4")) == 10
    # the output exists: refuse to overwrite
    with pytest.raises(DataError, match="already exists"):
        build_polymnist(tmp_path / "flat", tmp_path / "bgs", tmp_path / "out")
    # fewer than five backgrounds
    write_backgrounds(tmp_path / "few", sizes=((40, 40),) * 4)
    with pytest.raises(DataError, match="holds 4 images"):
        build_polymnist(tmp_path / "flat", tmp_path / "few", tmp_path / "out2")
    # a background too small for a 28x28 crop
    write_backgrounds(tmp_path / "small", sizes=((40, 40),) * 4 + ((28, 40),))
    with pytest.raises(DataError, match="larger than 28x28"):
        build_polymnist(tmp_path / "flat", tmp_path / "small", tmp_path / "out3")
    # no MNIST
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        build_polymnist(tmp_path / "bgs", tmp_path / "bgs", tmp_path / "out4")
    for d in ("out2", "out3", "out4"):
        assert listing(tmp_path / d) == []


# ----------------------------------------------------------------------------------------------
# polymnist-mini
# ----------------------------------------------------------------------------------------------


def test_mini_reduced_build_is_byte_identical(tmp_path):
    a = build_polymnist_mini(tmp_path / "a", n_train_per_class=2, n_test_per_class=1)
    b = build_polymnist_mini(tmp_path / "b", n_train_per_class=2, n_test_per_class=1)
    fa = all_files(a)
    assert len(fa) == 5 * (20 + 10)
    assert fa == all_files(b)


def test_mini_split_is_class_balanced_and_disjoint():
    csv, bgs = P.mini_sources()
    assert [p.name for p in bgs] == sorted(p.name for p in bgs)
    images, labels = P.load_mnist_5k(csv)
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    sp = P.mini_splits(images, labels)
    for split, per in (("train", 400), ("test", 100)):
        assert np.bincount(sp[split][1], minlength=10).tolist() == [per] * 10
    tr = {x.tobytes() for x in sp["train"][0]}
    assert not any(x.tobytes() in tr for x in sp["test"][0][:200])


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini_root")
    train = load_dataset("polymnist-mini", "train", str(root))
    return root, train


def test_mini_builds_on_first_use_and_loads(mini_root):
    root, train = mini_root
    test = load_dataset("polymnist-mini", "test", str(root))
    assert (root / "polymnist-mini" / "MMNIST" / "train" / "m4").is_dir()
    assert train.name == test.name == "polymnist-mini"
    assert (len(train), len(test)) == (4000, 1000)
    assert train.modalities == MODS
    for m in MODS:
        assert train.shape(m) == (3, 28, 28) and train.tensors[m].dtype == torch.uint8 and train.kind(m).name == "image"
    assert torch.bincount(train.labels, minlength=10).tolist() == [400] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [100] * 10
    # digits are visible: pixels differ between the modalities' backgrounds
    b = train.batch(torch.arange(8))
    assert set(b) == set(MODS) and b["m0"].shape == (8, 3, 28, 28) and b["m0"].dtype == torch.float32
    assert float(b["m0"].max()) <= 1.0
    # a second load hits the cache and gives the same fingerprint
    again = load_dataset("polymnist-mini", "train", str(root))
    assert again.fingerprint == train.fingerprint and len(train.fingerprint) == 16
    assert torch.equal(again.tensors["m3"], train.tensors["m3"])


def test_mini_info_and_cli(mini_root):
    root, train = mini_root
    info = dataset_info("polymnist-mini", str(root))
    assert info["name"] == "polymnist-mini" and info["splits"]["train"]["size"] == 4000
    assert info["splits"]["test"]["size"] == 1000 and info["num_classes"] == 10
    assert info["modalities"]["m2"] == {"kind": "image", "shape": [3, 28, 28], "dtype": "uint8"}
    assert info["fingerprint"] == train.fingerprint
    runner = CliRunner()
    res = runner.invoke(data_group, ["info", "polymnist-mini", "--data-root", str(root), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["splits"]["train"]["size"] == 4000
    res = runner.invoke(data_group, ["info", "polymnist-mini", "--data-root", str(root)])
    assert res.exit_code == 0 and "4,000" in res.stdout and "m4" in res.stdout


# ----------------------------------------------------------------------------------------------
# official-layout loader
# ----------------------------------------------------------------------------------------------


def test_loader_matches_tuples_by_name_not_listing_order(tmp_path, monkeypatch):
    spec = write_mmnist(tmp_path / "polymnist")
    real_scandir = os.scandir
    rnd = random.Random(42)

    class Shuffled:
        def __init__(self, path):
            self.it = real_scandir(path)
            self.entries = list(self.it)
            rnd.shuffle(self.entries)

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *a):
            self.it.close()

    monkeypatch.setattr(P.os, "scandir", Shuffled)
    d = load_dataset("polymnist", "train", str(tmp_path))
    assert d.name == "polymnist" and d.modalities == MODS and len(d) == 20
    items = sorted(spec["train"])  # tuple order: by index
    assert d.labels.tolist() == [dg for _, dg in items]
    for m in range(5):
        t = d.tensors[f"m{m}"]
        assert t.shape == (20, 3, 28, 28) and t.dtype == torch.uint8
        got_i = (t[:, 0, 0, 0].long() + 256 * t[:, 0, 0, 1].long()).tolist()  # encoded index (channel, row, col)
        assert got_i == [i for i, _ in items]
        assert (t[:, :, 0, 2] == m).all()
        assert torch.equal(t[0].permute(1, 2, 0), torch.from_numpy(tile(items[0][0], m)))


def test_user_folder_containing_mmnist_is_polymnist(tmp_path):
    write_mmnist(tmp_path / "mydata", counts={"train": 10, "test": 10})
    for path in (tmp_path / "mydata", tmp_path / "mydata" / "MMNIST"):
        d = load_dataset(str(path), "test")
        assert d.name == "polymnist" and len(d) == 10
    # the data root itself may directly contain MMNIST/
    assert len(load_dataset("polymnist", "train", str(tmp_path / "mydata"))) == 10


def test_cache_is_reused_and_rebuilt_when_the_folder_changes(tmp_path, monkeypatch):
    write_mmnist(tmp_path / "polymnist")
    first = load_dataset("polymnist", "train", str(tmp_path))
    caches = sorted((tmp_path / "polymnist" / "mmvae-cache").glob("*train*.safetensors"))
    assert len(caches) == 1

    calls = []
    real_decode = P._decode
    monkeypatch.setattr(P, "_decode", lambda *a: calls.append(1) or real_decode(*a))
    again = load_dataset("polymnist", "train", str(tmp_path))
    assert calls == [] and again.fingerprint == first.fingerprint
    assert torch.equal(again.tensors["m2"], first.tensors["m2"])

    # change one image (different content and size): the cache is rebuilt
    target = tmp_path / "polymnist" / "MMNIST" / "train" / "m2" / "1.0.png"
    noisy = np.random.default_rng(0).integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
    Image.fromarray(noisy, "RGB").save(target)
    changed = load_dataset("polymnist", "train", str(tmp_path))
    assert calls == [1] and changed.fingerprint != first.fingerprint
    assert torch.equal(changed.tensors["m2"][0].permute(1, 2, 0), torch.from_numpy(noisy))
    new_caches = sorted((tmp_path / "polymnist" / "mmvae-cache").glob("*train*.safetensors"))
    assert len(new_caches) == 1 and new_caches != caches  # the stale cache is gone

    # a corrupt cache is decoded again, not trusted
    new_caches[0].write_bytes(b"garbage")
    load_dataset("polymnist", "train", str(tmp_path))
    assert calls == [1, 1]
    assert not list((tmp_path / "polymnist" / "mmvae-cache").glob(".*"))  # no temp files left


def test_missing_polymnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("polymnist", "train", str(tmp_path))
    msg = one_line_error(e)
    assert "mmvae data fetch polymnist" in msg and "mmvae data build polymnist" in msg and "MMNIST" in msg


@pytest.mark.parametrize(
    "breakage, expected",
    [
        ("missing_modality", "has no m3 folder"),
        ("mismatched_names", "different file names"),
        ("wrong_size", "is 30x28"),
        ("bad_name", "bad PolyMNIST file name"),
        ("missing_split", "test is missing"),
        ("empty_modality", "holds no images"),
        ("not_png", "cannot read image"),
    ],
)
def test_wrong_layout_is_a_clear_error(tmp_path, breakage, expected):
    write_mmnist(tmp_path / "polymnist", counts={"train": 10, "test": 10})
    mm = tmp_path / "polymnist" / "MMNIST"
    split = "train"
    if breakage == "missing_modality":
        for f in (mm / "train" / "m3").iterdir():
            f.unlink()
        (mm / "train" / "m3").rmdir()
    elif breakage == "mismatched_names":
        os.rename(mm / "train" / "m1" / "4.1.png", mm / "train" / "m1" / "400.1.png")
    elif breakage == "wrong_size":
        Image.fromarray(np.zeros((28, 30, 3), np.uint8)).save(mm / "train" / "m4" / "4.1.png")
    elif breakage == "bad_name":
        os.rename(mm / "train" / "m0" / "4.1.png", mm / "train" / "m0" / "image4.png")
    elif breakage == "missing_split":
        split = "test"
        os.rename(mm / "test", mm / "testing")
    elif breakage == "empty_modality":
        for f in (mm / "train" / "m2").iterdir():
            f.unlink()
    elif breakage == "not_png":
        (mm / "train" / "m2" / "4.1.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError) as e:
        load_dataset("polymnist", split, str(tmp_path))
    assert expected in one_line_error(e)


def test_a_registered_dataset_reaches_every_command(tmp_path, monkeypatch, capsys):
    """A dataset is its file's `Dataset` and one registry entry: load_dataset, `data fetch` (its options
    checked) and `data info` take it from data.REGISTRY; `data --help` lists every registered one."""
    from mmvae_cli import data as D
    from mmvae_cli.data.base import Dataset, MultimodalData

    def load(root, split):
        x = torch.arange(24, dtype=torch.float32).reshape(8, 3) / 24
        return MultimodalData("toy", split, {"a": x, "b": x.flip(1)}, torch.arange(8) % 2, f"toy-{split}", "memory")

    toy = Dataset("toy", load, "<root>/toy (made up)", lambda root: tmp_path / "toy")
    monkeypatch.setitem(D.REGISTRY, "toy", toy)
    assert D.load_dataset("TOY", "test").name == "toy"
    assert run(["data", "fetch", "toy"], capsys)[1].strip() == str(tmp_path / "toy")
    code, _, err = run(["data", "fetch", "toy", "--url", "http://127.0.0.1:9/x.zip"], capsys)
    assert code == 2 and "apply to `data fetch polymnist, cub, celeba` only" in err
    code, out, _ = run(["data", "info", "toy", "--json"], capsys)
    assert code == 0 and json.loads(out)["splits"]["test"]["size"] == 8
    code, out, _ = run(["data", "--help"], capsys)
    assert all(f"{n:<15} {d.layout}" in out for n, d in D.REGISTRY.items() if n != "toy")
    code, out, _ = run(["data", "fetch", "--help"], capsys)
    assert all(f"{n:<16} {d.fetch_help}" in out for n, d in D.REGISTRY.items() if d.fetch_help and n != "toy")


def test_registry_and_data_root(tmp_path, monkeypatch):
    assert {
        "polymnist",
        "polymnist-mini",
        "polymnist-text-mini",
        "mnist-svhn",
        "mnist-svhn-text",
        "cub",
        "celeba",
    } <= set(DATASETS)
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", "train", str(tmp_path))
    assert all(n in one_line_error(e) for n in DATASETS)
    with pytest.raises(DataError, match="unknown split"):
        load_dataset("polymnist", "valid", str(tmp_path))
    monkeypatch.setenv("MMVAE_DATA", str(tmp_path / "env"))
    assert data_root(None) == tmp_path / "env"
    assert data_root(str(tmp_path / "flag")) == tmp_path / "flag"
    monkeypatch.delenv("MMVAE_DATA")
    assert data_root(None) == Path("~/.cache/mmvae").expanduser()


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def test_cli_build_and_help(tiny_inputs, tmp_path):
    tmp, _, _ = tiny_inputs
    runner = CliRunner()
    res = runner.invoke(
        data_group,
        [
            "build",
            "polymnist",
            "--mnist",
            str(tmp / "mnist"),
            "--backgrounds",
            str(tmp / "bgs"),
            "--out",
            str(tmp_path / "out"),
            "--seed",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == str(tmp_path / "out" / "MMNIST")
    assert len(load_dataset(str(tmp_path / "out"), "train")) == 30
    res = runner.invoke(data_group, ["build", "polymnist", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--mnist" in res.output
    for args in ([], ["fetch"], ["build"], ["info"]):
        res = runner.invoke(data_group, [*args, "--help"])
        assert res.exit_code == 0 and len(res.output) > 200, args
