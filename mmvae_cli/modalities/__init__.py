"""Modality kinds: `KINDS` maps a name to its class (one file each). A new kind is one file plus one
line here. A kind instance = class + JSON params; `make`, `from_dict`, `infer` build them."""

from __future__ import annotations

import torch

from ..errors import MMVAEError
from .base import ModalityKind
from .image import ImageKind
from .text import TextKind
from .vector import VectorKind
from .words import WordTextKind

KINDS: dict[str, type[ModalityKind]] = {
    "image": ImageKind,
    "vector": VectorKind,
    "text": TextKind,
    "words": WordTextKind,
}


def make(name: str, params: dict | None = None) -> ModalityKind:
    cls = KINDS.get(name)
    if cls is None:
        raise MMVAEError(f"unknown modality kind {name!r}; known kinds are {', '.join(KINDS)}")
    return cls(**(params or {}))


def infer(t: torch.Tensor) -> ModalityKind:
    """The kind of a stored tensor (N, ...) that does not say (old data, user files): 4-D images, else vectors."""
    return ImageKind() if ImageKind.claims(t) else VectorKind()


def from_model_shape(shape) -> ModalityKind:
    """The kind of a bundle's modality recorded before kinds were (shape (C, H, W) -> image, else vector)."""
    return ImageKind() if len(shape) == 3 else VectorKind()


__all__ = [
    "KINDS",
    "ModalityKind",
    "ImageKind",
    "VectorKind",
    "TextKind",
    "WordTextKind",
    "make",
    "infer",
    "from_model_shape",
]
