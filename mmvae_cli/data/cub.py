"""CUB image–caption pairs (MMVAE/MMVAE+ references), from an archive you supply.

Layout (the MMVAE reference's `data/cub`, as `mmvae data fetch cub --url URL` puts it):

    <root>/cub/train/<class>/<image>.jpg        images (torchvision ImageFolder: classes and files sorted)
    <root>/cub/test/<class>/<image>.jpg
    <root>/cub/text_trainvalclasses.txt         captions of train/, one per line, 10 per image, in image order
    <root>/cub/text_testclasses.txt             captions of test/

Caption k belongs to image k // 10 (the reference's resampler), so a split has 10 tuples per image.
Images: RGB resized to 64x64 (bilinear, aspect not kept, as the reference). Captions: word tokens
(modalities/words.py), vocabulary = the training captions' words that occur more than 3 times, in
order of first occurrence, after `<exc>`, `<pad>`, `<eos>`; 32 tokens. Differences from the
reference: one caption per non-empty line (the reference sentence-splits the whole file with nltk),
a regex tokenizer instead of nltk's, lower-cased. No labels. The original cleaned-CUB link is dead
(iffsid/mmvae issue 14): fetch needs --url/--archive. Parsed splits are cached in
<root>/cub/mmvae-cache/ (safetensors, keyed by the source files' names and sizes).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from ..modalities.words import SPECIALS, WordTextKind, tokenize
from .base import Dataset, GatheredTensors, MultimodalData
from .fetch import fetch_archive, fetched_folder, one_line, read_parse_cache, write_parse_cache

NAME = "cub"
SIZE = 64
LENGTH = 32
MIN_COUNT = 3  # a word is kept if it occurs more than MIN_COUNT times in the training captions
PER_IMAGE = 10
TEXT_FILES = {"train": "text_trainvalclasses.txt", "test": "text_testclasses.txt"}
REQUIRED = ("train", "test", *TEXT_FILES.values())
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_FORMAT = "mmvae-cub-1"
LAYOUT = "cub/{train,test}/<class>/*.jpg + cub/text_trainvalclasses.txt + cub/text_testclasses.txt"
DEAD_LINK = (
    "cub has no working download (the MMVAE reference's cub.zip link is dead): give "
    f"--url URL or --archive PATH of a zip/tar in the layout {LAYOUT}"
)


def image_files(folder: Path) -> list[Path]:
    """Images of an ImageFolder tree in its order: class folders sorted, files sorted within each."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    return [
        f
        for c in sorted(p for p in folder.iterdir() if p.is_dir())
        for f in sorted(c.iterdir())
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
    ]


def read_captions(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read UTF-8 captions ({one_line(exc)})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def build_vocab(captions: list[str], min_count: int = MIN_COUNT) -> list[str]:
    """<exc>, <pad>, <eos>, then words occurring more than `min_count` times, in order of first occurrence."""
    counts = Counter(t for c in captions for t in tokenize(c))
    return [*SPECIALS, *(w for w, n in counts.items() if n > min_count and w not in SPECIALS)]


def read_image(path: Path, size: int = SIZE) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({one_line(exc)})") from None


def _key(base: Path, split: str, files: list[Path]) -> str:
    h = hashlib.sha256(f"{CACHE_FORMAT};{split};{SIZE};{LENGTH};{MIN_COUNT};".encode())
    for p in (base / TEXT_FILES["train"], base / TEXT_FILES[split], *files):
        h.update(f"{p.relative_to(base).as_posix()}:{p.stat().st_size};".encode())
    return h.hexdigest()[:16]


def _parse(base: Path, split: str) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """Images (n, 3, 64, 64) uint8, captions (10 n, 32) ids, vocabulary, fingerprint; cached."""
    files = image_files(base / split)
    if not files:
        raise DataError(f"{base / split}: no images in class folders (layout {LAYOUT})")
    key = _key(base, split, files)
    cache = base / "mmvae-cache" / f"{split}-{key}.safetensors"
    hit = read_parse_cache(cache, key, ("image", "caption"), "vocab")
    if hit is not None:
        return hit
    captions = read_captions(base / TEXT_FILES[split])
    if len(captions) != PER_IMAGE * len(files):
        raise DataError(
            f"{base / TEXT_FILES[split]}: {len(captions)} captions for {len(files)} images in {split}/ "
            f"(expected {PER_IMAGE} per image)"
        )
    train_captions = captions if split == "train" else read_captions(base / TEXT_FILES["train"])
    vocab = build_vocab(train_captions)
    images = torch.from_numpy(np.stack([read_image(f) for f in files]))
    ids = WordTextKind(words=vocab).encode(captions, LENGTH, NAME)
    tensors = {"image": images, "caption": ids}
    fingerprint = write_parse_cache(cache, tensors, CACHE_FORMAT, key, "vocab", vocab)
    return tensors, vocab, fingerprint


def load_cub(root, split: str) -> MultimodalData:
    """One split: modalities `image` (uint8 3x64x64, stored once per image) and `caption` (words, 32)."""
    base = fetched_folder(root, NAME, REQUIRED, "CUB", LAYOUT)
    tensors, vocab, fingerprint = _parse(base, split)
    n = int(tensors["caption"].shape[0])
    index = {"image": torch.arange(n) // PER_IMAGE, "caption": torch.arange(n)}
    return MultimodalData(
        NAME,
        split,
        GatheredTensors(tensors, index),
        None,
        fingerprint,
        str(base),
        {"unique": {"image": int(tensors["image"].shape[0])}, "vocabulary": len(vocab)},
        {"caption": WordTextKind(words=vocab)},
    )


def _check(folder: Path) -> None:
    for split in TEXT_FILES:
        _parse(folder, split)


def fetch_cub(root=None, url: str | None = None, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download (or copy) a CUB archive in the reference layout into `<root>/cub`, parsed and cached."""
    return fetch_archive(NAME, url, root, REQUIRED, _check, missing=DEAD_LINK, sha256=sha256, timeout=timeout)


DATASET = Dataset(
    NAME,
    load_cub,
    "<root>/cub/{train,test}/<class>/*.jpg + text_*classes.txt (captions)",
    fetch_cub,
    ("url", "sha256"),
    "--url/--archive: cub/{train,test}/<class>/*.jpg + text_{trainval,test}classes.txt",
)
