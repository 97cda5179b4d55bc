"""PNG grids: one row per modality, samples as columns; each modality's kind draws its tiles
(images as pixels, text as rendered strings, vectors as grey strips)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .bundle import atomic_write_bytes


def to_rgb_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) floats in [0, 1] or vectors (B, D) -> (B, H, W, 3) uint8, drawn by the kind the shape implies."""
    from . import modalities

    return modalities.infer(x).render(x)


def grid(rows: list, pad: int = 2) -> np.ndarray:
    """Tile rows into one array. A row is tiles (B, H, W, 3) uint8 (a kind's `render`) or a tensor of
    images/vectors (drawn by `to_rgb_uint8`); rows may differ in tile size (smaller tiles sit top-left)."""
    tiles = [r if isinstance(r, np.ndarray) else to_rgb_uint8(r) for r in rows]
    h = max(t.shape[1] for t in tiles)
    w = max(t.shape[2] for t in tiles)
    cols = max(t.shape[0] for t in tiles)
    out = np.full((len(tiles) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r, t in enumerate(tiles):
        for c in range(t.shape[0]):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[y : y + t.shape[1], x : x + t.shape[2]] = t[c]
    return out


FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".safetensors": "safetensors"}


def output_format(path: str | Path, option: str = "--out") -> str:
    """The format named by an output file's extension (png, jpeg, safetensors); others are refused,
    and so is a file whose folder does not exist."""
    from .errors import MMVAEError

    p = Path(path)
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise MMVAEError(f"{option} {path}: unknown file type {p.suffix or '(none)'!r}; use {', '.join(FORMATS)}")
    if not p.expanduser().resolve().parent.is_dir():
        raise MMVAEError(f"{option} {path}: folder {p.parent} does not exist")
    if p.is_dir():
        raise MMVAEError(f"{option} {path} is a folder")
    return fmt


def save_image(path: str | Path, array: np.ndarray) -> None:
    """A grid as PNG or JPEG, by the file's extension (see output_format), written atomically."""
    fmt = output_format(path)
    if fmt not in ("png", "jpeg"):
        raise ValueError(f"{path}: not an image file")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt.upper(), **({"quality": 95} if fmt == "jpeg" else {}))
    atomic_write_bytes(Path(path), buf.getvalue())
