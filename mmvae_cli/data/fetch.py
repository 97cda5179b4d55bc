"""Shared helpers of the data layer: where data lives, downloads, safe zip
extraction, atomic safetensors writes.

Everything that writes does so atomically: a temporary file or folder in the
same parent, then `os.replace`/`os.rename`, so an interrupted command never
leaves a half-written cache or a half-extracted dataset where a loader would
find it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..console import log
from ..console import progress as console_progress
from ..errors import DataError
from .base import fingerprint_tensors

ENV_DATA_ROOT = "MMVAE_DATA"
CHUNK = 1 << 20


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: `--data-root` if given, else `$MMVAE_DATA`, else `~/.cache/mmvae`."""
    if root is None or str(root) == "":
        root = os.environ.get(ENV_DATA_ROOT) or "~/.cache/mmvae"
    return Path(root).expanduser()


def one_line(exc: BaseException) -> str:
    """A one-line description of an exception (first non-empty line of its message)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        if not isinstance(exc.reason, BaseException):
            return str(exc.reason)
        exc = exc.reason
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def progress(total: int | None, desc: str, unit: str = "B"):
    """A download/extraction bar (bytes scaled by 1024), on stderr and only on a terminal."""
    return console_progress(
        total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024 if unit == "B" else 1000
    )


def _open_url(url: str, timeout: float):
    """Open an http(s)/file URL or a local path for streaming; returns (stream, total size or None)."""
    if "://" not in url:
        path = Path(url).expanduser()
        if not path.is_file():
            raise DataError(f"could not download {url}: no such file")
        return open(path, "rb"), path.stat().st_size
    req = urllib.request.Request(url, headers={"User-Agent": "mmvae-cli"})
    resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (URL chosen by the user)
    length = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
    return resp, int(length) if length and length.isdigit() else None


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = 60.0,
    desc: str | None = None,
) -> Path:
    """Stream `url` into `dest` (temp file + rename), checking `size` and `sha256` when given.

    Any network or integrity problem raises a one-line DataError and leaves no file behind.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                stream, total = _open_url(url, timeout)
            except DataError:
                raise
            except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                raise DataError(f"could not download {url}: {one_line(exc)}") from None
            with contextlib.closing(stream), progress(total or size, desc or dest.name) as bar:
                try:
                    for block in iter(lambda: stream.read(CHUNK), b""):
                        out.write(block)
                        h.update(block)
                        written += len(block)
                        bar.update(len(block))
                except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                    raise DataError(f"could not download {url}: {one_line(exc)} after {written} bytes") from None
            if total is not None and written != total:
                raise DataError(f"could not download {url}: connection closed after {written} of {total} bytes")
        if size is not None and written != int(size):
            raise DataError(f"download of {url} has {written} bytes, expected {size}: not the expected file")
        if sha256 is not None and h.hexdigest().lower() != sha256.strip().lower():
            raise DataError(
                f"download of {url} has sha256 {h.hexdigest()}, expected {sha256.strip().lower()}: "
                "corrupted or not the expected file"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def extract_zip(zip_path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a zip into the (new or empty) folder `dest`, refusing absolute or `..` member names."""
    dest = Path(dest)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
            for name in names:
                parts = Path(name.replace("\\", "/")).parts
                if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise DataError(f"{Path(zip_path).name}: unsafe member name {name!r} in the zip")
            dest.mkdir(parents=True, exist_ok=True)
            with progress(len(names), f"extracting {Path(zip_path).name}", unit="file") as bar:
                for info in zf.infolist():
                    zf.extract(info, dest)
                    bar.update(1)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{Path(zip_path).name} is not a valid zip file ({one_line(exc)})") from None
    return dest


def extract_archive(path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a zip or a tar (plain, .gz, .bz2, .xz; recognised by content) into `dest`.

    Unsafe member names (absolute, `..`, links leaving `dest`) are refused; anything else is a
    one-line DataError naming the file.
    """
    path, dest = Path(path), Path(dest)
    if zipfile.is_zipfile(path):
        return extract_zip(path, dest)
    try:
        is_tar = tarfile.is_tarfile(path)
    except OSError:
        is_tar = False
    if not is_tar:
        raise DataError(f"{path.name} is neither a zip nor a tar archive (corrupted or not the expected file)")
    try:
        with tarfile.open(path) as tf:
            members = tf.getmembers()
            dest.mkdir(parents=True, exist_ok=True)
            with progress(len(members), f"extracting {path.name}", unit="file") as bar:
                for member in members:
                    tf.extract(member, dest, filter="data")
                    bar.update(1)
    except tarfile.FilterError as exc:
        raise DataError(f"{path.name}: unsafe member in the archive ({one_line(exc)})") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path.name} is not a readable tar archive ({one_line(exc)})") from None
    return dest


def find_layout(tree: str | os.PathLike, required: tuple[str, ...]) -> Path | None:
    """The shallowest folder under `tree` (itself included) that holds every entry of `required`."""
    tree = Path(tree)
    level = [tree]
    while level:
        for d in sorted(level):
            if d.name != "__MACOSX" and all((d / r).exists() for r in required):
                return d
        level = [c for d in level for c in d.iterdir() if c.is_dir() and not c.is_symlink()]
    return None


def fetch_archive(
    name: str,
    url: str | None,
    root: str | os.PathLike | None,
    required: tuple[str, ...],
    check: Callable[[Path], None],
    *,
    missing: str,
    sha256: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Put a dataset archive's layout in `<root>/<name>`; returns that folder.

    The archive (zip or tar, from an http(s)/file URL or a local path) is downloaded and extracted
    into a temporary folder next to the target; the shallowest folder holding `required` is checked
    by `check` (which parses everything and may write caches inside it) and only then renamed into
    place. Already present: nothing is downloaded. No `url`: DataError(`missing`). Any failure
    leaves nothing behind.
    """
    base = data_root(root) / name
    if all((base / r).exists() for r in required):
        log(f"{name} already present in {base}")
        return base
    if not url:
        raise DataError(missing)
    base.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-fetch-", dir=base.parent))
    try:
        archive = download(url, work / "archive", sha256=sha256, timeout=timeout, desc=f"{name} archive")
        tree = extract_archive(archive, work / "extract")
        archive.unlink()
        src = find_layout(tree, required)
        if src is None:
            raise DataError(f"{url}: the archive holds no folder with {', '.join(required)}: not the {name} layout")
        check(src)
        if base.exists():
            for child in sorted(src.iterdir()):
                if not (base / child.name).exists():
                    os.rename(child, base / child.name)
        else:
            os.rename(src, base)
    finally:
        rmtree_quiet(work)
    log(f"{name} ready in {base}")
    return base


def fetched_folder(
    root: str | os.PathLike | None, name: str, required: tuple[str, ...], title: str, layout: str
) -> Path:
    """`<root>/<name>` as `fetch_archive` leaves it; DataError (saying how to fetch it) if `required` is incomplete."""
    base = data_root(root) / name
    if not all((base / r).exists() for r in required):
        raise DataError(f"{title} not found under {base}: run `mmvae data fetch {name} --url URL` ({layout})")
    return base


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; DataError if it is not one."""
    from safetensors import safe_open

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file")
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(path)), metadata
    except DataError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DataError(f"{path}: not a readable safetensors file ({one_line(exc)})") from None


def read_parse_cache(cache: Path, key: str, names: tuple[str, ...], list_key: str):
    """(tensors `names` in that order, the JSON list under `list_key`, fingerprint) of a parsed-archive cache
    written by `write_parse_cache` under `key`, or None when it is absent, stale or unreadable (parse again)."""
    if not cache.is_file():
        return None
    try:
        tensors, meta = load_safetensors(cache)
    except DataError:
        return None
    if meta.get("key") != key or set(tensors) != set(names) or any(k not in meta for k in (list_key, "fingerprint")):
        return None
    return {n: tensors[n] for n in names}, json.loads(meta[list_key]), meta["fingerprint"]


def write_parse_cache(
    cache: Path, tensors: dict[str, torch.Tensor], cache_format: str, key: str, list_key: str, values: list[str]
) -> str:
    """Fingerprint a split's parsed tensors and write them, with `values` as JSON under `list_key`, atomically
    next to the data, dropping the split's older caches; returns the fingerprint. A cache that cannot be
    written is a warning (the next load parses again), not an error."""
    from ..bundle import atomic_save_tensors

    fingerprint = fingerprint_tensors(tensors)
    meta = {"format": cache_format, "key": key, "fingerprint": fingerprint, list_key: json.dumps(values)}
    split = cache.name.split("-", 1)[0]
    try:
        atomic_save_tensors(cache, tensors, meta)
        for old in cache.parent.glob(f"{split}-*.safetensors"):
            if old != cache:
                old.unlink(missing_ok=True)
    except OSError as exc:
        log(f"warning: cannot write the cache {cache} ({one_line(exc)}); parsing again next time")
    return fingerprint


def rmtree_quiet(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)
