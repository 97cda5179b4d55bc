"""A user's own paired data in safetensors files: splits, dtypes, fingerprints and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from mmvae_cli.cli.data_cmd import data as data_group
from mmvae_cli.data import MultimodalData, dataset_info, load_dataset
from mmvae_cli.data.custom import NoTestSplit
from mmvae_cli.errors import DataError


def make(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g),
        "photo": torch.rand(n, 3, 6, 6, generator=g),
        "attrs": torch.randn(n, 5, generator=g).double(),
        "label": torch.arange(n) % 3,
    }


def save(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def err(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


def test_single_file_with_split_tensor(tmp_path):
    t = make()
    t["split"] = torch.tensor([0, 1] * 6, dtype=torch.uint8)
    p = save(tmp_path / "pairs.safetensors", t)
    tr, te = load_dataset(str(p), "train"), load_dataset(str(p), "test")
    assert isinstance(tr, MultimodalData) and tr.name == "pairs" and (len(tr), len(te)) == (6, 6)
    assert tr.modalities == ["attrs", "image", "photo"]
    assert torch.equal(tr.tensors["image"], t["image"][0::2]) and torch.equal(te.labels, t["label"][1::2])
    assert [tr.kind(m).name for m in ("image", "photo", "attrs")] == ["image", "image", "vector"]
    assert tr.tensors["attrs"].dtype == torch.float32 and tr.tensors["photo"].dtype == torch.float32
    assert tr.tensors["image"].dtype == torch.uint8 and tr.labels.dtype == torch.int64
    b = tr.batch(torch.arange(3))
    assert b["image"].max() <= 1 and b["photo"].shape == (3, 3, 6, 6)
    # content fingerprint: same content, same fingerprint; different content, different one
    assert tr.fingerprint == load_dataset(str(p), "train").fingerprint and tr.fingerprint != te.fingerprint
    t2 = dict(t)
    t2["attrs"] = t["attrs"] + 1
    assert load_dataset(str(save(tmp_path / "other.safetensors", t2)), "train").fingerprint != tr.fingerprint


def test_separate_test_files(tmp_path):
    (tmp_path / "a").mkdir()
    save(tmp_path / "a" / "x.safetensors", make(10))
    save(tmp_path / "a" / "x.test.safetensors", make(4, seed=1))
    for path in (tmp_path / "a" / "x.safetensors", tmp_path / "a"):
        tr, te = load_dataset(str(path), "train"), load_dataset(str(path), "test")
        assert (len(tr), len(te)) == (10, 4) and tr.name == "x"
    (tmp_path / "b").mkdir()
    save(tmp_path / "b" / "train.safetensors", make(10))
    save(tmp_path / "b" / "test.safetensors", make(3, seed=2))
    for path in (tmp_path / "b", tmp_path / "b" / "train.safetensors"):
        assert len(load_dataset(str(path), "test")) == 3
        assert load_dataset(str(path), "train").name == "b"
    # a test file whose modalities do not match the training file
    bad = make(3)
    bad["image"] = torch.zeros(3, 1, 9, 9, dtype=torch.uint8)
    save(tmp_path / "b" / "test.safetensors", bad)
    with pytest.raises(DataError, match="'image' has samples of shape"):
        load_dataset(str(tmp_path / "b"), "test")


def test_no_test_split_and_info(tmp_path):
    p = save(tmp_path / "only.safetensors", make())
    with pytest.raises(NoTestSplit) as e:
        load_dataset(str(p), "test")
    assert "split" in err(e) and "only.test.safetensors" in str(e.value)
    info = dataset_info(str(p))
    assert info["name"] == "only" and info["splits"]["test"] is None and info["splits"]["train"]["size"] == 12
    assert info["modalities"]["attrs"] == {"kind": "vector", "shape": [5], "dtype": "float32"}
    assert info["num_classes"] == 3
    res = CliRunner().invoke(data_group, ["info", str(p), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["splits"]["test"] is None
    res = CliRunner().invoke(data_group, ["info", str(p)])
    assert res.exit_code == 0 and "test (none)" in res.stdout and "vector" in res.stdout


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda t: t.update(image=torch.zeros(12, 8, 8, dtype=torch.uint8)), "'image' has shape (12, 8, 8)"),
        (lambda t: t.update(image=torch.zeros(12, 1, 1, 8, 8, dtype=torch.uint8)), "expected (N, C, H, W)"),
        (lambda t: t.update(attrs=torch.zeros(11, 5)), "different lengths"),
        (lambda t: t["attrs"].__setitem__((3, 2), float("nan")), "'attrs' has 1 NaN"),
        (lambda t: t["photo"].__setitem__((0, 0, 0, 0), float("inf")), "'photo' has 0 NaN and 1 Inf"),
        (lambda t: t.update(photo=t["photo"] * 2), "scale them to [0, 1]"),
        (lambda t: t.update(image=torch.zeros(12, 1, 8, 8, dtype=torch.int32)), "use uint8"),
        (lambda t: [t.pop(k) for k in ("image", "photo", "attrs")], "no modalities"),
        (lambda t: t.update(label=torch.rand(12)), "integer dtype"),
        (lambda t: t.update(label=torch.arange(5)), "'label' has shape"),
        (lambda t: t.update(split=torch.full((12,), 2)), "0 (train) or 1 (test)"),
        (lambda t: t.update(labels=torch.arange(12)), "must be named 'label'"),
        (
            lambda t: t.update(
                image=torch.zeros(0, 1, 8, 8, dtype=torch.uint8),
                photo=torch.zeros(0, 3, 6, 6),
                attrs=torch.zeros(0, 5),
                label=torch.zeros(0, dtype=torch.long),
            ),
            "no samples",
        ),
    ],
)
def test_bad_tensors_are_one_line_errors(tmp_path, mutate, expected):
    t = make()
    mutate(t)
    p = save(tmp_path / "bad.safetensors", t)
    with pytest.raises(DataError) as e:
        load_dataset(str(p), "train")
    assert expected in err(e)


def test_bad_files(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path / "empty.safetensors"), "train")
    assert "empty file" in err(e)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path / "junk.safetensors"), "train")
    assert "not a readable safetensors file" in err(e)
    save(tmp_path / "none.safetensors", {})
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path / "none.safetensors"), "train")
    assert "holds no tensors" in err(e)
    (tmp_path / "several").mkdir()
    save(tmp_path / "several" / "a.safetensors", make())
    save(tmp_path / "several" / "b.safetensors", make())
    with pytest.raises(DataError, match="several .safetensors files"):
        load_dataset(str(tmp_path / "several"), "train")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no .safetensors files"):
        load_dataset(str(tmp_path / "nothing"), "train")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "missing.safetensors"), "train")
    (tmp_path / "data.npz").write_bytes(b"x")
    with pytest.raises(DataError, match="not a .safetensors file"):
        load_dataset(str(tmp_path / "data.npz"), "train")


def test_split_tensor_with_an_empty_test_split_and_both_test_sources(tmp_path):
    t = make()
    t["split"] = torch.zeros(12, dtype=torch.long)
    p = save(tmp_path / "s.safetensors", t)
    with pytest.raises(DataError, match="test split is empty"):
        load_dataset(str(p), "test")
    save(tmp_path / "s.test.safetensors", make(3))
    with pytest.raises(DataError, match="use one of the two"):
        load_dataset(str(p), "test")
