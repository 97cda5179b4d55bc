"""Downloading PolyMNIST.zip from a local HTTP server: verification, atomic extraction, one-line errors."""

from __future__ import annotations

import functools
import hashlib
import zipfile

import pytest
from click.testing import CliRunner
from helpers_data import _QuietHandler, free_port, http_server, listing, write_mmnist, zip_folder

from mmvae_cli.cli.data_cmd import data as data_group
from mmvae_cli.data import fetch as F
from mmvae_cli.data import fetch_polymnist, load_dataset
from mmvae_cli.data import polymnist as P
from mmvae_cli.errors import DataError


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A directory served over HTTP on 127.0.0.1 holding zips in the official layout and broken ones."""
    tmp = tmp_path_factory.mktemp("served")
    src = tmp / "src"
    write_mmnist(src, counts={"train": 10, "test": 5})
    (src / "trained_classifiers").mkdir()
    (src / "trained_classifiers" / "README.txt").write_text("classifiers would be here")
    www = tmp / "www"
    www.mkdir()
    zip_folder(src, www / "PolyMNIST.zip")
    zip_folder(src, www / "nested.zip", prefix="PolyMNIST/")
    zip_folder(src / "trained_classifiers", www / "nommnist.zip")
    with zipfile.ZipFile(www / "evil.zip", "w") as zf:
        zf.writestr("../evil.txt", "outside")
    (www / "notazip.zip").write_bytes(b"this is not a zip" * 10)
    digest = hashlib.sha256((www / "PolyMNIST.zip").read_bytes()).hexdigest()
    with http_server(www) as url:
        yield url, digest, (www / "PolyMNIST.zip").stat().st_size, www


def assert_clean(root):
    """Nothing half-downloaded or half-extracted is left in the data root."""
    assert [n for n in listing(root) if n.startswith(".")] == []
    assert not (root / "polymnist" / "MMNIST").exists()


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


def test_fetch_verifies_extracts_and_loads(served, tmp_path):
    url, digest, size, _ = served
    mm = fetch_polymnist(str(tmp_path), url=f"{url}/PolyMNIST.zip", sha256=digest.upper(), size=size)
    assert mm == tmp_path / "polymnist" / "MMNIST"
    assert listing(tmp_path) == ["polymnist"]  # temp folders are gone
    assert listing(tmp_path / "polymnist") == ["MMNIST", "trained_classifiers"]
    d = load_dataset("polymnist", "train", str(tmp_path))
    assert len(d) == 10 and d.modalities == [f"m{i}" for i in range(5)]
    # already present: no download at all (this URL would fail)
    assert fetch_polymnist(str(tmp_path), url=f"http://127.0.0.1:{free_port()}/x.zip") == mm


def test_fetch_finds_mmnist_nested_in_the_zip(served, tmp_path):
    url, _, _, _ = served
    mm = fetch_polymnist(str(tmp_path), url=f"{url}/nested.zip")
    assert len(load_dataset("polymnist", "test", str(tmp_path))) == 5 and mm.is_dir()


def test_bad_sha256_leaves_nothing_behind(served, tmp_path):
    url, _, _, _ = served
    with pytest.raises(DataError) as e:
        fetch_polymnist(str(tmp_path), url=f"{url}/PolyMNIST.zip", sha256="0" * 64)
    assert "sha256" in one_line(e)
    assert_clean(tmp_path)
    assert listing(tmp_path) == []


def test_wrong_size_is_refused(served, tmp_path):
    url, _, size, _ = served
    with pytest.raises(DataError) as e:
        fetch_polymnist(str(tmp_path), url=f"{url}/PolyMNIST.zip", size=size + 1)
    assert f"expected {size + 1}" in one_line(e)
    assert_clean(tmp_path)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("missing.zip", "HTTP 404"),
        ("nommnist.zip", "no MMNIST folder"),
        ("evil.zip", "unsafe member name"),
        ("notazip.zip", "not a valid zip"),
    ],
)
def test_bad_downloads_are_one_line_errors(served, tmp_path, name, expected):
    url, _, _, _ = served
    with pytest.raises(DataError) as e:
        fetch_polymnist(str(tmp_path / "root"), url=f"{url}/{name}")
    assert expected in one_line(e)
    assert_clean(tmp_path / "root")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "root" / "evil.txt").exists()


def test_connection_refused_and_truncated_download(tmp_path):
    with pytest.raises(DataError) as e:
        fetch_polymnist(str(tmp_path), url=f"http://127.0.0.1:{free_port()}/PolyMNIST.zip", timeout=5)
    assert "could not download" in one_line(e)
    assert_clean(tmp_path)

    class Truncating(_QuietHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)

    with http_server(tmp_path, handler=functools.partial(Truncating, directory=str(tmp_path))) as url:
        with pytest.raises(DataError) as e:
            fetch_polymnist(str(tmp_path / "root"), url=f"{url}/PolyMNIST.zip", timeout=5)
    assert "could not download" in one_line(e)
    assert_clean(tmp_path / "root")


def test_download_from_a_local_file_and_progress_is_quiet_off_tty(served, tmp_path, capsys):
    _, digest, _, www = served
    mm = fetch_polymnist(str(tmp_path), url=str(www / "PolyMNIST.zip"), sha256=digest)
    assert mm.is_dir()
    err = capsys.readouterr().err
    assert "\r" not in err  # no progress bar when stderr is not a terminal
    with F.progress(10, "x") as bar:
        assert bar.disable


def test_cli_fetch(served, tmp_path):
    url, digest, _, _ = served
    runner = CliRunner()
    res = runner.invoke(
        data_group,
        ["fetch", "polymnist", "--url", f"{url}/PolyMNIST.zip", "--sha256", "1" * 64, "--data-root", str(tmp_path)],
    )
    assert res.exit_code != 0 and isinstance(res.exception, DataError)
    assert_clean(tmp_path)
    res = runner.invoke(
        data_group,
        ["fetch", "polymnist", "--url", f"{url}/PolyMNIST.zip", "--sha256", digest, "--data-root", str(tmp_path)],
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == str(tmp_path / "polymnist" / "MMNIST")
    res = runner.invoke(data_group, ["fetch", "mnist-svhn", "--url", "http://x", "--data-root", str(tmp_path)])
    assert res.exit_code == 2
    res = runner.invoke(data_group, ["fetch", "imagenet", "--data-root", str(tmp_path)])
    assert isinstance(res.exception, DataError) and "polymnist" in str(res.exception)


def test_default_url_is_the_zenodo_record():
    assert P.DEFAULT_URL == "https://zenodo.org/record/4899160/files/PolyMNIST.zip"
