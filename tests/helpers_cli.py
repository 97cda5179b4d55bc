"""Shared helpers for CLI tests: run `mmvae` in-process and write tiny PolyMNIST-layout data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mmvae_cli.cli import main

TINY_FIT_EBM = ["--energy-hidden", "8", "--epochs", "1", "--langevin-steps", "2"]
"""`mmvae fit-ebm` flags of a seconds-long fit on tiny data: an 8-unit energy, one epoch, 2 Langevin steps."""


def run(argv, capsys=None):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


def digit_pattern(d: int, rng: np.random.Generator, channel_shift: int) -> np.ndarray:
    """A 28x28x3 uint8 image whose bright bar position encodes the class d (learnable in one epoch)."""
    img = rng.integers(0, 60, (28, 28, 3), dtype=np.uint8)
    r, c = divmod(d, 5)
    img[4 + r * 12 : 12 + r * 12, 2 + c * 5 : 6 + c * 5, :] = 255
    img[..., channel_shift % 3] //= 2
    return img


def write_tiny_polymnist(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    """<root>/polymnist/MMNIST/{train,test}/m0..m4/{i}.{d}.png, labels cycling over 10 classes."""
    rng = np.random.default_rng(seed)
    base = root / "polymnist" / "MMNIST"
    for split, n in (("train", n_train), ("test", n_test)):
        for m in range(5):
            folder = base / split / f"m{m}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                d = i % 10
                Image.fromarray(digit_pattern(d, rng, m)).save(folder / f"{i}.{d}.png")
    return root
