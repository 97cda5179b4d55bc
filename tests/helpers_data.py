"""Shared helpers of the data-layer tests: tiny files in the real formats, and a local HTTP server."""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import os
import random
import struct
import threading
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

MODS = [f"m{i}" for i in range(5)]


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write an uint8 IDX file (the MNIST format: magic 0x00 0x00 0x08 ndim, big-endian dims, data)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def random_digits(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random MNIST-like uint8 digits (n, 28, 28) that include the threshold values 128 and 129."""
    d = rng.choice(
        np.array([0, 30, 128, 129, 200, 255], dtype=np.uint8), size=(n, 28, 28), p=[0.4, 0.1, 0.1, 0.1, 0.1, 0.2]
    )
    return d


def write_mnist_raw(
    directory: Path, per_class_train: int = 3, per_class_test: int = 2, seed: int = 0, compress: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Synthetic MNIST in torchvision's raw layout (DIR/MNIST/raw); returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    out = {}
    raw = directory / "MNIST" / "raw"
    for split, per, prefix in (("train", per_class_train, "train"), ("test", per_class_test, "t10k")):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per)
        rng.shuffle(labels)
        images = random_digits(rng, len(labels))
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
        out[split] = (images, labels.astype(np.int64))
    return out


def write_backgrounds(
    directory: Path, sizes=((41, 37), (35, 44), (30, 30), (52, 33), (40, 40)), seed: int = 1, names=None
) -> list[np.ndarray]:
    """Random-noise RGB backgrounds (W, H given) saved as PNG; returns the arrays in sorted-name order."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = names or [f"bg{i}.png" for i in range(len(sizes))]
    arrays = {}
    for name, (w, h) in zip(names, sizes):
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(arr, "RGB").save(directory / name)
        arrays[name] = arr
    return [arrays[n] for n in sorted(arrays)]


def tile(i: int, m: int, value_shift: int = 0) -> np.ndarray:
    """A 28x28 RGB image that encodes (i, m): pixel (0,0) = i % 256, (0,1) = i // 256, (0,2) = m."""
    arr = np.full((28, 28, 3), 17 + value_shift, dtype=np.uint8)
    arr[0, 0] = i % 256
    arr[0, 1] = i // 256
    arr[0, 2] = m
    return arr


def write_mmnist(base: Path, counts=None, shuffle_seed: int | None = 0) -> dict[str, list[tuple[int, int]]]:
    """An official-layout MMNIST folder under `base` with encoded tiles; files of each modality are
    created in a different (shuffled) order. Returns {split: [(index, digit), ...]}."""
    counts = counts or {"train": 20, "test": 10}
    rnd = random.Random(shuffle_seed)
    spec = {}
    for split, n in counts.items():
        items = [(i * 3 + 1, i % 10) for i in range(n)]  # non-contiguous indices
        spec[split] = items
        for m in range(5):
            folder = base / "MMNIST" / split / f"m{m}"
            folder.mkdir(parents=True, exist_ok=True)
            order = list(items)
            if shuffle_seed is not None:
                rnd.shuffle(order)
            for i, d in order:
                Image.fromarray(tile(i, m), "RGB").save(folder / f"{i}.{d}.png")
    return spec


def zip_folder(src: Path, zip_path: Path, prefix: str = "") -> Path:
    """Zip the contents of `src` with member names prefixed by `prefix`."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(src).as_posix())
    return zip_path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@contextlib.contextmanager
def http_server(directory: Path, handler=None):
    """Serve `directory` on 127.0.0.1 (a free port) in a daemon thread; yields the base URL."""
    handler = handler or functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def listing(root: Path) -> list[str]:
    return sorted(os.listdir(root)) if root.exists() else []


class SampleBank:
    """A fixed set of latents as a bank of the aggregate posterior (`n`, `dim`, `device`, `sample(idx)`), for
    fitting priors on toys; a VAE's is mmvae_cli.priors.bank.ExpertBank, which draws fresh z ~ q(z | X_i)."""

    def __init__(self, z):
        self.z, (self.n, self.dim), self.device = z, z.shape, z.device

    def sample(self, idx):
        return self.z[idx]
