"""polymnist-text-mini: polymnist-mini's m0..m2 plus a text modality, offline.

The text is the MoPoE reference's MNIST-SVHN-Text text (REFERENCE.md): the digit's English name
("zero" ... "nine") at a random start inside a string of LENGTH = 8 characters padded with spaces,
one-hot over the reference alphabet (modalities/text.py). The reference redraws the start position
on every access; here it is drawn once per tuple from `np.random.default_rng([seed, split index])`,
so the data (and its fingerprint) are reproducible. Three image modalities instead of five keep
MoPoE's 2^M - 1 subsets (15 instead of 63) and the coherence evaluation cheap on CPUs.
"""

from __future__ import annotations

import numpy as np

from ..modalities import TextKind
from .base import Dataset, MultimodalData, fingerprint_tensors
from .polymnist import fetch_polymnist_mini, load_polymnist_mini

NAME = "polymnist-text-mini"
IMAGES = ("m0", "m1", "m2")
TEXT = "text"
LENGTH = 8
SEED = 0
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "test")


def digit_strings(labels, split: str, seed: int = SEED, length: int = LENGTH) -> list[str]:
    """Per label, its name at a uniform start in [0, length - len(name)], padded with spaces to `length`."""
    rng = np.random.default_rng([int(seed), SPLITS.index(split)])
    out = []
    for d in np.asarray(labels):
        word = WORDS[int(d)]
        start = int(rng.integers(0, length - len(word) + 1))
        out.append(" " * start + word + " " * (length - start - len(word)))
    return out


def load_polymnist_text_mini(root, split: str) -> MultimodalData:
    """One split; polymnist-mini is built on first use (see polymnist.py)."""
    base = load_polymnist_mini(root, split)
    kind = TextKind()
    ids = kind.encode(digit_strings(base.labels, split), LENGTH, NAME)
    tensors = {**{m: base.tensors[m] for m in IMAGES}, TEXT: ids}
    return MultimodalData(
        NAME,
        split,
        tensors,
        base.labels,
        fingerprint_tensors(tensors, base.labels),
        base.location,
        {**base.extra, "text": {"length": LENGTH, "seed": SEED}},
        {TEXT: kind},
    )


DATASET = Dataset(
    NAME, load_polymnist_text_mini, "polymnist-mini's m0..m2 + the digit's name as text", fetch_polymnist_mini
)
