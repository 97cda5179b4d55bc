"""MNIST-SVHN-Text (MoPoE reference): the `mnist-svhn` pairs plus the digit's name as text.

Images and pairing are mnist-svhn's (mnist_svhn.py, same files, same pair cache); fetching is
`mmvae data fetch mnist-svhn`'s (the text is derived). Text as polymnist-text-mini's
(polymnist_text.py): the digit's English name at a uniform start in [0, 8 - len(name)] inside 8
characters padded with spaces, over the MoPoE reference alphabet. The reference redraws the start
on every access; here it is drawn once per tuple, vectorised, from
`np.random.default_rng([SEED, split index, 1])`, so the data and its fingerprint are reproducible.
The distinct strings (10 names x their starts) are stored once and gathered per tuple, like the images.
Modalities: `mnist`, `svhn`, `text`; label = the digit.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..modalities import TextKind
from .base import Dataset, GatheredTensors, MultimodalData, fingerprint_tensors
from .mnist_svhn import fetch_mnist_svhn, load_mnist_svhn
from .polymnist_text import LENGTH, SEED, SPLITS, WORDS

NAME = "mnist-svhn-text"
TEXT = "text"


def text_table(length: int = LENGTH) -> tuple[list[str], np.ndarray]:
    """Every (digit, start) string in digit-major order, and each digit's first row in that list."""
    strings, first = [], []
    for word in WORDS:
        first.append(len(strings))
        strings += [" " * s + word + " " * (length - s - len(word)) for s in range(length - len(word) + 1)]
    return strings, np.array(first, dtype=np.int64)


def text_rows(labels: np.ndarray, split: str, seed: int = SEED, length: int = LENGTH) -> np.ndarray:
    """Per tuple, its row in `text_table`: a start drawn uniformly in [0, length - len(name)]."""
    _, first = text_table(length)
    labels = np.asarray(labels, dtype=np.int64)
    starts_per_digit = np.array([length - len(w) + 1 for w in WORDS])
    rng = np.random.default_rng([int(seed), SPLITS.index(split), 1])
    return first[labels] + rng.integers(0, starts_per_digit[labels])


def load_mnist_svhn_text(root, split: str) -> MultimodalData:
    base = load_mnist_svhn(root, split)
    kind = TextKind()
    strings, _ = text_table()
    rows = torch.from_numpy(text_rows(base.labels.numpy(), split))
    store = {**base.tensors.store, TEXT: kind.encode(strings, LENGTH, NAME)}
    index = {**base.tensors.index, TEXT: rows}
    fingerprint = hashlib.sha256(f"{base.fingerprint};{fingerprint_tensors({TEXT: rows})}".encode()).hexdigest()[:16]
    return MultimodalData(
        NAME,
        split,
        GatheredTensors(store, index),
        base.labels,
        fingerprint,
        base.location,
        {**base.extra, "text": {"length": LENGTH, "seed": SEED}},
        {TEXT: kind},
    )


DATASET = Dataset(NAME, load_mnist_svhn_text, "mnist-svhn + the digit's name as text (MoPoE)", fetch_mnist_svhn)
