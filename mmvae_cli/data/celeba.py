"""CelebA bimodal (MoPoE reference): face image + the 40 binary attributes, from the official files.

Layout (the official release, as `mmvae data fetch celeba --url URL` puts it):

    <root>/celeba/img_align_celeba/<id>.jpg     aligned faces, 178x218
    <root>/celeba/list_attr_celeba.txt          line 1: N; line 2: the 40 attribute names;
                                                then N lines "<id>.jpg v_1 ... v_40", v in {-1, 1}
    <root>/celeba/list_eval_partition.txt       N lines "<id>.jpg p", p = 0 train, 1 validation, 2 test

Splits as the MoPoE reference: train = partition 0, test = partition 1 (partition 2 is not used).
Modalities: `image`, centre-cropped to 148x148 (offsets ((H - 148) // 2, (W - 148) // 2): (35, 15)
for 178x218) and resized to 64x64 (bicubic), uint8; `attributes`, the 40 attributes as a float vector
in {0, 1} (v > 0), not the reference's 256-character attribute string. No labels: CelebA's attributes
are multi-label (MoPoE scores them by average precision), so class coherence does not apply. Parsed
splits are cached in <root>/celeba/mmvae-cache/ (safetensors, keyed by the files' names and sizes).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .base import Dataset, MultimodalData
from .fetch import fetch_archive, fetched_folder, one_line, read_parse_cache, write_parse_cache

NAME = "celeba"
CROP = 148
SIZE = 64
N_ATTRIBUTES = 40
IMAGES, ATTR_FILE, PARTITION_FILE = "img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt"
REQUIRED = (IMAGES, ATTR_FILE, PARTITION_FILE)
PARTITIONS = {"train": 0, "test": 1}
CACHE_FORMAT = "mmvae-celeba-1"
LAYOUT = f"celeba/{IMAGES}/*.jpg + {ATTR_FILE} + {PARTITION_FILE} (the official files)"
MISSING = (
    "celeba has no direct download (the official files are on Google Drive): give --url URL or "
    f"--archive PATH of a zip/tar holding {LAYOUT}"
)


def _lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({one_line(exc)})") from None


def read_attributes(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Attribute names and, per image file, its 40 attributes in {0, 1} (float32)."""
    lines = _lines(path)
    if len(lines) < 2 or not lines[0].isdigit():
        raise DataError(f"{path}: expected a count, the attribute names, then one row per image")
    names = lines[1].split()
    if len(names) != N_ATTRIBUTES:
        raise DataError(f"{path}: {len(names)} attribute names, expected {N_ATTRIBUTES}")
    rows = {}
    for k, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if len(fields) != N_ATTRIBUTES + 1 or any(v not in ("1", "-1") for v in fields[1:]):
            raise DataError(f"{path}, line {k}: expected an image name and {N_ATTRIBUTES} values -1 or 1")
        rows[fields[0]] = (np.array(fields[1:], dtype=np.int8) > 0).astype(np.float32)
    if len(rows) != int(lines[0]):
        raise DataError(f"{path}: {len(rows)} rows, the header says {lines[0]}")
    return names, rows


def read_partition(path: Path) -> dict[str, int]:
    out = {}
    for k, line in enumerate(_lines(path), start=1):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"{path}, line {k}: expected an image name and a partition 0, 1 or 2")
        out[fields[0]] = int(fields[1])
    return out


def read_image(path: Path) -> np.ndarray:
    """Centre crop CROP x CROP, bicubic resize to SIZE x SIZE: (3, 64, 64) uint8."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w < CROP or h < CROP:
                raise DataError(f"{path}: {w}x{h} is smaller than the {CROP}x{CROP} centre crop")
            top, left = (h - CROP) // 2, (w - CROP) // 2
            img = img.convert("RGB").crop((left, top, left + CROP, top + CROP)).resize((SIZE, SIZE), Image.BICUBIC)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except DataError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({one_line(exc)})") from None


def _parse(base: Path, split: str) -> tuple[dict[str, torch.Tensor], list[str], str]:
    sources = [base / ATTR_FILE, base / PARTITION_FILE]
    h = hashlib.sha256(f"{CACHE_FORMAT};{split};{CROP};{SIZE};".encode())
    for p in sources:
        h.update(f"{p.name}:{p.stat().st_size};".encode())
    partition = read_partition(base / PARTITION_FILE)
    files = [name for name, p in partition.items() if p == PARTITIONS[split]]
    for name in files:
        f = base / IMAGES / name
        if not f.is_file():
            raise DataError(f"{f}: listed in {PARTITION_FILE} but missing")
        h.update(f"{name}:{f.stat().st_size};".encode())
    key = h.hexdigest()[:16]
    cache = base / "mmvae-cache" / f"{split}-{key}.safetensors"
    hit = read_parse_cache(cache, key, ("image", "attributes"), "names")
    if hit is not None:
        return hit
    if not files:
        raise DataError(f"{base / PARTITION_FILE}: no image in partition {PARTITIONS[split]} ({split})")
    names, attributes = read_attributes(base / ATTR_FILE)
    missing = [f for f in files if f not in attributes]
    if missing:
        raise DataError(f"{base / ATTR_FILE}: no attributes for {missing[0]} ({len(missing)} images)")
    tensors = {
        "image": torch.from_numpy(np.stack([read_image(base / IMAGES / f) for f in files])),
        "attributes": torch.from_numpy(np.stack([attributes[f] for f in files])),
    }
    fingerprint = write_parse_cache(cache, tensors, CACHE_FORMAT, key, "names", names)
    return tensors, names, fingerprint


def load_celeba(root, split: str) -> MultimodalData:
    """One split: `image` (uint8 3x64x64) and `attributes` (float32 40, in {0, 1}); no labels."""
    base = fetched_folder(root, NAME, REQUIRED, "CelebA", LAYOUT)
    tensors, names, fingerprint = _parse(base, split)
    return MultimodalData(NAME, split, tensors, None, fingerprint, str(base), {"attributes": names})


def _check(folder: Path) -> None:
    for split in PARTITIONS:
        _parse(folder, split)


def fetch_celeba(root=None, url: str | None = None, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download (or copy) an archive of the official CelebA files into `<root>/celeba`, parsed and cached."""
    return fetch_archive(NAME, url, root, REQUIRED, _check, missing=MISSING, sha256=sha256, timeout=timeout)


DATASET = Dataset(
    NAME,
    load_celeba,
    "<root>/celeba/img_align_celeba/ + list_attr_celeba.txt + list_eval_partition.txt",
    fetch_celeba,
    ("url", "sha256"),
    "--url/--archive: img_align_celeba/ + list_attr_celeba.txt + list_eval_partition.txt",
)
