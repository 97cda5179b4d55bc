"""PNG grids: one row per modality, images as columns."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .bundle import atomic_write_bytes


def to_rgb_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) floats in [0, 1] (or vectors, shown as a 1-row strip) -> (B, H, W, 3) uint8."""
    x = x.detach().float().cpu()
    if x.dim() == 2:
        v = x - x.min(1, keepdim=True).values
        v = v / v.max(1, keepdim=True).values.clamp_min(1e-8)
        x = v[:, None, None, :].repeat(1, 1, 8, 1)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    x = x[:, :3]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def grid(rows: list[torch.Tensor], pad: int = 2) -> np.ndarray:
    """Tile rows of images (each (B, C, H, W)) into one array; rows may differ in image size."""
    tiles = [to_rgb_uint8(r) for r in rows]
    h = max(t.shape[1] for t in tiles)
    w = max(t.shape[2] for t in tiles)
    cols = max(t.shape[0] for t in tiles)
    out = np.full((len(tiles) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r, t in enumerate(tiles):
        for c in range(t.shape[0]):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[y:y + t.shape[1], x:x + t.shape[2]] = t[c]
    return out


FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".safetensors": "safetensors"}


def output_format(path: str | Path, option: str = "--out") -> str:
    """The format named by an output file's extension (png, jpeg, safetensors); others are refused,
    and so is a file whose folder does not exist."""
    from .errors import MMVAEError
    p = Path(path)
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise MMVAEError(f"{option} {path}: unknown file type {p.suffix or '(none)'!r}; use "
                         f"{', '.join(FORMATS)}")
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


save_png = save_image     # figures and reports name their files .png


def load_image(path: str | Path, shape: tuple[int, ...]) -> torch.Tensor:
    """An image file as a float tensor (C, H, W) in [0, 1] matching a modality's shape."""
    from .errors import DataError
    try:
        img = Image.open(path)
        img = img.convert("RGB" if shape[0] == 3 else "L").resize((shape[2], shape[1]))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None
    a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).float() / 255.0
    return a.permute(2, 0, 1) if a.dim() == 3 else a[None]
