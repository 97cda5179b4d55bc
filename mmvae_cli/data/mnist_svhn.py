"""MNIST-SVHN: MNIST digits paired with SVHN house numbers of the same class.

Files (torchvision's formats, as `mmvae data fetch mnist-svhn` writes them):

    <root>/mnist-svhn/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    <root>/mnist-svhn/SVHN/{train,test}_32x32.mat      (MATLAB v5: X (32,32,3,N) uint8, y (N,1); 10 = digit 0)

Pairing follows the MMVAE reference: for each class c, take the indices of c in
MNIST and in SVHN (ascending), keep the first n = min(#MNIST_c, #SVHN_c,
max_per_class) of each, and append `dm` independent random permutations of
both. The pair lists are cached as safetensors next to the data, keyed by the
source files' names and sizes and the pairing parameters. Images are held once;
pairs are index gathers (`GatheredTensors`), so 1.7M training pairs cost no
more memory than the 60k + 73k images.

Modalities: `mnist` (uint8 1x28x28) and `svhn` (uint8 3x32x32); label = the class.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..bundle import atomic_save_tensors
from ..console import log
from ..errors import DataError
from .base import Dataset, GatheredTensors, MultimodalData, fingerprint_tensors
from .fetch import data_root, load_safetensors, one_line, rmtree_quiet

NAME = "mnist-svhn"
DEFAULT_DM = 30
DEFAULT_MAX_PER_CLASS = 10000
DEFAULT_SEED = 0
CACHE_FORMAT = "mmvae-mnist-svhn-pairs-1"

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); data is big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
    return split


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a native-endian numpy array."""
    path = Path(path)
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({one_line(exc)})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{path}: truncated or corrupted IDX file ({len(data) - header} data bytes, "
            f"expected {expected} for shape {tuple(dims)})"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def find_mnist_files(directory: str | Path, split: str) -> tuple[Path, Path]:
    """The (images, labels) IDX files of an MNIST split in DIR, DIR/MNIST/raw or DIR/raw."""
    directory = Path(directory).expanduser()
    _check_split(split)
    found = []
    for stem in MNIST_FILES[split]:
        hit = None
        for d in (directory, directory / "MNIST" / "raw", directory / "raw"):
            for suffix in ("", ".gz"):
                if (d / (stem + suffix)).is_file():
                    hit = d / (stem + suffix)
                    break
            if hit:
                break
        if hit is None:
            raise DataError(f"MNIST file {stem}[.gz] not found in {directory} or {directory / 'MNIST' / 'raw'}")
        found.append(hit)
    return found[0], found[1]


def load_mnist_raw(directory: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images (N, 28, 28) uint8 and labels (N,) int64 from torchvision-style raw IDX files."""
    img_path, lab_path = find_mnist_files(directory, split)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(f"{img_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{lab_path}: {labels.shape} labels for {images.shape[0]} images")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{lab_path}: labels outside 0..9")
    return images, labels


def load_svhn_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """SVHN cropped digits from a `{split}_32x32.mat` file: (N, 3, 32, 32) uint8 and labels (N,) int64 (10 -> 0)."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path), variable_names=["X", "y"])
    except Exception as exc:  # scipy raises many types (MatReadError, ValueError, NotImplementedError for v7.3)
        raise DataError(f"{path}: not a readable MATLAB v5 file ({one_line(exc)})") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        raise DataError(f"{path}: expected variables X and y")
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: X has shape {x.shape}, expected (32, 32, 3, N)")
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if y.shape[0] != x.shape[3]:
        raise DataError(f"{path}: {y.shape[0]} labels for {x.shape[3]} images")
    if y.size and (y.min() < 0 or y.max() > 10):
        raise DataError(f"{path}: labels outside 0..10")
    y[y == 10] = 0
    images = np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1))).astype(np.uint8, copy=False)
    return images, y


def pair_indices(
    labels_a: np.ndarray,
    labels_b: np.ndarray,
    *,
    max_per_class: int = DEFAULT_MAX_PER_CLASS,
    dm: int = DEFAULT_DM,
    seed: int | list[int] = DEFAULT_SEED,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference MMVAE pairing: per class, `dm` random permutations of the first n indices of each side."""
    rng = np.random.default_rng(seed)
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    out_a, out_b = [], []
    for c in np.unique(labels_a):
        a = np.flatnonzero(labels_a == c)
        b = np.flatnonzero(labels_b == c)
        n = min(len(a), len(b), int(max_per_class))
        if n == 0:
            continue
        a, b = a[:n], b[:n]
        for _ in range(int(dm)):
            out_a.append(a[rng.permutation(n)])
            out_b.append(b[rng.permutation(n)])
    if not out_a:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(out_a).astype(np.int64), np.concatenate(out_b).astype(np.int64)


def mnist_svhn_dir(root: str | Path | None) -> Path:
    return data_root(root) / NAME


def _svhn_file(base: Path, split: str) -> Path:
    for p in (base / "SVHN" / f"{split}_32x32.mat", base / f"{split}_32x32.mat"):
        if p.is_file():
            return p
    raise DataError(f"SVHN file {split}_32x32.mat not found in {base / 'SVHN'}: run `mmvae data fetch mnist-svhn`")


def _missing_message(base: Path) -> str:
    return (
        f"MNIST-SVHN not found under {base}: run `mmvae data fetch mnist-svhn`, or put torchvision's "
        f"MNIST/raw/ and SVHN/{{train,test}}_32x32.mat under {base}/"
    )


def load_mnist_svhn(
    root: str | Path | None,
    split: str,
    *,
    dm: int = DEFAULT_DM,
    max_per_class: int = DEFAULT_MAX_PER_CLASS,
    seed: int = DEFAULT_SEED,
) -> MultimodalData:
    """Paired MNIST-SVHN split from `<root>/mnist-svhn`."""
    _check_split(split)
    base = mnist_svhn_dir(root)
    if not base.is_dir():
        raise DataError(_missing_message(base))
    try:
        mnist_files = find_mnist_files(base, split)
    except DataError:
        raise DataError(_missing_message(base)) from None
    svhn_file = _svhn_file(base, split)
    sources = [*mnist_files, svhn_file]

    h = hashlib.sha256(f"{CACHE_FORMAT};{split};dm={dm};max={max_per_class};seed={seed};".encode())
    for p in sources:
        h.update(f"{p.name}:{p.stat().st_size};".encode())
    key = h.hexdigest()[:16]
    cache = base / "mmvae-cache" / f"pairs-{split}-{key}.safetensors"

    mnist_x, mnist_y = load_mnist_raw(base, split)
    svhn_x, svhn_y = load_svhn_mat(svhn_file)
    store = {"mnist": torch.from_numpy(mnist_x).unsqueeze(1), "svhn": torch.from_numpy(svhn_x)}

    idx_m = idx_s = None
    fingerprint = ""
    if cache.is_file():
        try:
            tensors, meta = load_safetensors(cache)
            if meta.get("key") == key and {"mnist", "svhn"} <= set(tensors):
                idx_m, idx_s, fingerprint = tensors["mnist"].long(), tensors["svhn"].long(), meta.get("fingerprint", "")
                if idx_m.numel() and (int(idx_m.max()) >= len(mnist_y) or int(idx_s.max()) >= len(svhn_y)):
                    idx_m = idx_s = None
        except DataError:
            idx_m = idx_s = None
    if idx_m is None:
        split_id = 0 if split == "train" else 1
        a, b = pair_indices(mnist_y, svhn_y, max_per_class=max_per_class, dm=dm, seed=[seed, split_id])
        if len(a) == 0:
            raise DataError(f"{NAME} {split}: no class has images in both MNIST and SVHN")
        idx_m, idx_s = torch.from_numpy(a), torch.from_numpy(b)
        labels = torch.from_numpy(mnist_y)[idx_m]
        fingerprint = fingerprint_tensors({**store, "pairs_mnist": idx_m, "pairs_svhn": idx_s}, labels)
        try:
            atomic_save_tensors(
                cache,
                {"mnist": idx_m, "svhn": idx_s},
                {
                    "format": CACHE_FORMAT,
                    "key": key,
                    "fingerprint": fingerprint,
                    "dm": str(dm),
                    "max_per_class": str(max_per_class),
                    "seed": str(seed),
                },
            )
            for old in cache.parent.glob(f"pairs-{split}-*.safetensors"):
                if old != cache:
                    old.unlink(missing_ok=True)
        except OSError as exc:
            log(f"warning: cannot write the pair cache {cache} ({one_line(exc)}); pairing again next time")
    labels = torch.from_numpy(mnist_y)[idx_m]
    return MultimodalData(
        NAME,
        split,
        GatheredTensors(store, {"mnist": idx_m, "svhn": idx_s}),
        labels,
        fingerprint,
        str(base),
        {
            "cache": str(cache),
            "dm": dm,
            "max_per_class": max_per_class,
            "seed": seed,
            "unique": {"mnist": len(mnist_y), "svhn": len(svhn_y)},
        },
    )


def _complete(base: Path) -> bool:
    try:
        for split in ("train", "test"):
            find_mnist_files(base, split)
            _svhn_file(base, split)
    except DataError:
        return False
    return True


def fetch_mnist_svhn(root: str | Path | None = None) -> Path:
    """Download MNIST and SVHN (train + test) with torchvision into `<root>/mnist-svhn`.

    torchvision downloads (and checks the md5 of) every file into a temporary folder next to the
    target; only then are MNIST/ and SVHN/ moved into place, so a failure leaves nothing behind.
    """
    base = mnist_svhn_dir(root)
    if _complete(base):
        log(f"MNIST-SVHN already present in {base}")
        return base
    base.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{NAME}-fetch-", dir=base.parent))
    log(f"downloading MNIST and SVHN into {base}")
    try:
        from torchvision import datasets

        with contextlib.redirect_stdout(sys.stderr):  # torchvision prints its progress on stdout
            for train in (True, False):
                datasets.MNIST(str(work), train=train, download=True)
            for split in ("train", "test"):
                datasets.SVHN(str(work / "SVHN"), split=split, download=True)
        base.mkdir(parents=True, exist_ok=True)
        for child in sorted(work.iterdir()):
            if not (base / child.name).exists():
                os.rename(child, base / child.name)
    except DataError:
        raise
    except Exception as exc:  # torchvision raises URLError, HTTPError, RuntimeError, OSError, ...
        why = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())  # torchvision: per mirror
        raise DataError(f"could not download MNIST-SVHN into {base}: {why or one_line(exc)}") from None
    finally:
        rmtree_quiet(work)
    if not _complete(base):
        raise DataError(_missing_message(base))
    return base


DATASET = Dataset(
    NAME,
    load_mnist_svhn,
    "<root>/mnist-svhn/{MNIST/raw, SVHN/*_32x32.mat}",
    fetch_mnist_svhn,
    fetch_help="MNIST and SVHN through torchvision (mnist-svhn-text: the same)",
)
