"""Datasets: a registry of names, the user's own safetensors files, and `data info`.

    load_dataset("polymnist-mini", "train")            # built offline on first use
    load_dataset("polymnist", "test", root="/data")     # <root>/polymnist/MMNIST
    load_dataset("mnist-svhn", "train")                 # <root>/mnist-svhn/{MNIST,SVHN}
    load_dataset("polymnist-text-mini", "train")       # polymnist-mini m0..m2 + digit names as text
    load_dataset("mnist-svhn-text", "train")            # mnist-svhn + digit names as text (MoPoE)
    load_dataset("cub", "train")                        # <root>/cub: images + captions (fetch --url)
    load_dataset("celeba", "train")                     # <root>/celeba: image + 40 attributes (fetch --url)
    load_dataset("my_pairs.safetensors", "train")       # a user's own data (see custom.py)

The data root is `--data-root`, else `$MMVAE_DATA`, else `~/.cache/mmvae`.
Every loader returns a `MultimodalData` (see base.py). A dataset is one file here that declares its
`base.Dataset` (loader, fetcher, the lines `mmvae data --help` shows) and its line in REGISTRY below;
the CLI's lists of datasets come from REGISTRY.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..errors import DataError
from . import celeba, cub, mnist_svhn, mnist_svhn_text, polymnist, polymnist_text
from .base import Dataset, GatheredTensors, MultimodalData, fingerprint_tensors, to_float, to_uint8
from .celeba import fetch_celeba
from .cub import fetch_cub
from .custom import NoTestSplit, load_custom
from .fetch import data_root
from .mnist_svhn import fetch_mnist_svhn
from .polymnist import build_polymnist, build_polymnist_mini, fetch_polymnist, load_mmnist, resolve_mmnist

REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in (
        polymnist.POLYMNIST,
        polymnist.POLYMNIST_MINI,
        polymnist_text.DATASET,
        mnist_svhn.DATASET,
        mnist_svhn_text.DATASET,
        cub.DATASET,
        celeba.DATASET,
    )
}
DATASETS = list(REGISTRY)
SPLITS = ("train", "test")

__all__ = [
    "DATASETS",
    "REGISTRY",
    "Dataset",
    "SPLITS",
    "MultimodalData",
    "GatheredTensors",
    "DataError",
    "data_root",
    "load_dataset",
    "dataset_info",
    "fetch_polymnist",
    "build_polymnist",
    "build_polymnist_mini",
    "fetch_mnist_svhn",
    "fetch_cub",
    "fetch_celeba",
    "fingerprint_tensors",
    "to_float",
    "to_uint8",
    "known_name",
]


def known_name(name: str) -> str | None:
    """The registry name for `name` (case and `_`/`-` insensitive), or None."""
    key = str(name).strip().lower().replace("_", "-")
    return key if key in REGISTRY else None


def _unknown(name_or_path: str) -> DataError:
    s = str(name_or_path)
    if s.endswith(".safetensors") or "/" in s or "\\" in s or s.startswith("."):
        return DataError(f"no such file or folder: {s}")
    return DataError(
        f"unknown dataset {s!r}: known names are {', '.join(DATASETS)}, "
        "or give a path to a .safetensors file or a folder of them"
    )


def load_dataset(name_or_path: str, split: str = "train", root: str | None = None) -> MultimodalData:
    """One split ("train" or "test") of a named dataset or of a user's data at a path."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
    key = known_name(name_or_path)
    if key is not None:
        return REGISTRY[key].load(root, split)
    p = Path(str(name_or_path)).expanduser()
    if p.is_dir():
        mm = resolve_mmnist(p)
        if mm is not None:
            return load_mmnist(mm, split, "polymnist")
        return load_custom(p, split)
    if p.is_file():
        return load_custom(p, split)
    raise _unknown(name_or_path)


def dataset_info(name_or_path: str, root: str | None = None) -> dict:
    """Sizes per split, modalities (kind, shape, dtype), location and fingerprints, for `mmvae data info`.

    `fingerprint` is the training split's (what a training run records); each split has its own too.
    A split that does not exist (user data without a test split) is reported as null.
    """
    splits: dict[str, dict | None] = {}
    first: MultimodalData | None = None
    for split in SPLITS:
        try:
            d = load_dataset(name_or_path, split, root)
        except NoTestSplit:
            splits[split] = None
            continue
        if first is None:
            first = d
        entry = {"size": len(d), "fingerprint": d.fingerprint, "location": d.location}
        if d.labels is not None:
            counts = Counter(d.labels.tolist())
            entry["classes"] = {str(k): counts[k] for k in sorted(counts)}
        if d.extra.get("cache"):
            entry["cache"] = d.extra["cache"]
        if d.present is not None:
            entry["observed_per_tuple"] = d.observed_histogram()
        if d.extra.get("incomplete_dropped"):
            entry["incomplete_left_out"] = d.extra["incomplete_dropped"]
        splits[split] = entry
    assert first is not None  # the train split always exists or raised
    modalities = {
        m: {
            "kind": first.kind(m).name,
            "shape": list(first.shape(m)),
            "dtype": str(first.dtype(m)).replace("torch.", ""),
            **({"params": first.kind(m).params} if first.kind(m).params else {}),
        }
        for m in first.modalities
    }
    num_classes = None
    if first.labels is not None and len(first):
        num_classes = int(first.labels.max()) + 1
    info = {
        "name": first.name,
        "source": known_name(name_or_path) or str(Path(str(name_or_path)).expanduser().resolve()),
        "location": first.location,
        "modalities": modalities,
        "splits": splits,
        "labels": first.labels is not None,
        "num_classes": num_classes,
        "fingerprint": first.fingerprint,
    }
    for k in ("dm", "max_per_class", "seed", "unique"):
        if k in first.extra:
            info.setdefault("pairing", {})[k] = first.extra[k]
    return info
