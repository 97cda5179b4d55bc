"""A user's own paired data in safetensors files.

One tensor per modality, all with the same first dimension N (row i of every
modality is one tuple):

- images: 4-D (N, C, H, W), uint8 in [0, 255] or float in [0, 1];
- vectors: 2-D (N, D), stored as float32;
- text: 2-D integer token ids (N, L), declared in the file's metadata as `kind.<name>` = "text",
  with optional `alphabet.<name>` (default: the MoPoE reference alphabet; pad = space);
- optional `label`: 1-D integer (N,) class labels (>= 0);
- optional `split`: 1-D (N,) with 0 = train, 1 = test;
- optional `present.<name>`: 1-D (N,) bool (or uint8 0/1) per modality, false where tuple i lacks
  modality <name> (partially observed data; a modality without one is present in every tuple). The
  rows of an absent modality may hold anything (NaN included): they are replaced by zeros on loading
  and never read. Every tuple needs at least one present modality. Training uses each tuple's
  observed modalities; the test split keeps only complete tuples (evaluation on complete tuples).

Where the test split lives, in order of preference:
  - a `split` tensor in the file; or
  - a separate file: `X.test.safetensors` next to `X.safetensors`, or `test.safetensors`
    next to `train.safetensors` (pass the folder or the train file).

Every problem is a one-line DataError naming the file and the modality.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import modalities
from ..errors import DataError
from .base import MultimodalData, fingerprint_tensors
from .fetch import load_safetensors

SUFFIX = ".safetensors"
TEST_SUFFIX = ".test.safetensors"


class NoTestSplit(DataError):
    """The data has no test split (neither a `split` tensor nor a test file)."""


def _stem(p: Path) -> str:
    return p.name[: -len(SUFFIX)]


def resolve(path: str | Path) -> tuple[str, Path, Path | None]:
    """(dataset name, main file, test file or None) for a .safetensors file or a folder of them."""
    p = Path(path).expanduser()
    if p.is_file():
        if not p.name.endswith(SUFFIX):
            raise DataError(f"{p}: not a .safetensors file")
        stem = _stem(p)
        if stem == "train":
            test = p.with_name("test" + SUFFIX)
            name = p.parent.resolve().name or stem
        else:
            test = p.with_name(stem + TEST_SUFFIX)
            name = stem
        return name, p, test if test.is_file() and test != p else None
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(SUFFIX) and not f.name.startswith("."))
        if (p / ("train" + SUFFIX)).is_file():
            test = p / ("test" + SUFFIX)
            return p.resolve().name, p / ("train" + SUFFIX), test if test.is_file() else None
        mains = [f for f in files if not f.name.endswith(TEST_SUFFIX) and f.name != "test" + SUFFIX]
        if not mains:
            raise DataError(f"{p}: no .safetensors files in this folder")
        if len(mains) > 1:
            raise DataError(
                f"{p}: several .safetensors files ({', '.join(f.name for f in mains[:4])}"
                f"{', ...' if len(mains) > 4 else ''}): pass one file, or name them train/test.safetensors"
            )
        test = p / (_stem(mains[0]) + TEST_SUFFIX)
        return _stem(mains[0]), mains[0], test if test.is_file() else None
    raise DataError(f"no such file or folder: {p}")


def kind_of(meta: dict, m: str, t: torch.Tensor, path: Path) -> modalities.ModalityKind:
    """The kind the file's metadata declares for m (`kind.<m>`, params such as `alphabet.<m>`), else by shape."""
    name = meta.get(f"kind.{m}")
    if name is None:
        if not any(k.claims(t) for k in modalities.KINDS.values()):
            hint = " (a 1-D tensor of class labels must be named 'label')" if t.dim() == 1 else ""
            raise DataError(
                f"{path}: modality {m!r} has shape {tuple(t.shape)}: expected (N, C, H, W) images "
                f"or (N, D) vectors{hint}"
            )
        return modalities.infer(t)
    params = {k.split(".", 1)[0]: v for k, v in meta.items() if k.endswith(f".{m}") and k != f"kind.{m}"}
    try:
        return modalities.make(name, params)
    except (TypeError, DataError) as e:
        raise DataError(f"{path}: modality {m!r}: bad kind metadata ({e})") from None


PRESENT = "present."  # prefix of the per-modality presence masks


def presence_masks(raw: dict[str, torch.Tensor], path: Path) -> torch.Tensor | None:
    """The `present.<name>` tensors of a file (popped from `raw`), checked, as bool (N, M) in sorted-name
    order; None when the file has none. Raises a one-line DataError for a bad mask."""
    masks = {k[len(PRESENT) :]: raw.pop(k) for k in [k for k in raw if k.startswith(PRESENT)]}
    if not masks:
        return None
    names = sorted(k for k in raw if k not in ("label", "split"))
    for m, t in masks.items():
        if m not in names:
            raise DataError(f"{path}: '{PRESENT}{m}' names no modality (modalities: {', '.join(names)})")
        if t.dtype not in (torch.bool, torch.uint8):
            raise DataError(f"{path}: '{PRESENT}{m}' is {str(t.dtype).replace('torch.', '')}: use bool or uint8 0/1")
        if t.dtype == torch.uint8 and bool((t > 1).any()):
            raise DataError(f"{path}: '{PRESENT}{m}' must hold 0 (absent) or 1 (present) only")
    n = int(raw[names[0]].shape[0]) if names else 0
    for m, t in masks.items():
        if t.dim() != 1 or t.shape[0] != n:
            raise DataError(f"{path}: '{PRESENT}{m}' has shape {tuple(t.shape)}, expected ({n},)")
    present = torch.stack([masks[m].bool() if m in masks else torch.ones(n, dtype=torch.bool) for m in names], 1)
    empty = (~present.any(1)).nonzero().flatten()
    if len(empty):
        raise DataError(
            f"{path}: tuple {int(empty[0])} has no modality present ({len(empty)} such tuples): "
            "every tuple needs at least one"
        )
    return present


def read_file(
    path: Path, kinds: dict | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Validated (modalities, labels, split, presence (N, M) or None) of one safetensors file; fills
    `kinds` (name -> kind). Absent rows are zero-filled before the modality checks."""
    kinds = {} if kinds is None else kinds
    raw, meta = load_safetensors(path)
    if not raw:
        raise DataError(f"{path}: the file holds no tensors")
    present = presence_masks(raw, path)
    label, split = raw.pop("label", None), raw.pop("split", None)
    if not raw:
        raise DataError(f"{path}: no modalities (only 'label'/'split' tensors): add one tensor per modality")
    tensors: dict[str, torch.Tensor] = {}
    for j, m in enumerate(sorted(raw)):
        kinds[m] = kind_of(meta, m, raw[m], path)
        t = raw[m]
        if present is not None and t.shape[0] == present.shape[0]:
            keep = present[:, j].reshape((-1,) + (1,) * (t.dim() - 1))
            t = torch.where(keep, t, torch.zeros((), dtype=t.dtype))
        t = kinds[m].check(t, str(path), m)
        if t.shape[0] == 0:
            raise DataError(f"{path}: modality {m!r} has no samples (N = 0)")
        if any(s == 0 for s in t.shape[1:]):
            raise DataError(f"{path}: modality {m!r} has an empty sample shape {tuple(t.shape[1:])}")
        tensors[m] = t.contiguous()
    lengths = {m: int(t.shape[0]) for m, t in tensors.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(
            f"{path}: modalities have different lengths (" + ", ".join(f"{m}={n}" for m, n in lengths.items()) + ")"
        )
    n = next(iter(lengths.values()))
    if label is not None:
        if label.dim() == 2 and label.shape[1] == 1:
            label = label[:, 0]
        if label.dim() != 1 or label.shape[0] != n:
            raise DataError(f"{path}: 'label' has shape {tuple(label.shape)}, expected ({n},)")
        if label.is_floating_point() or label.is_complex() or label.dtype == torch.bool:
            raise DataError(f"{path}: 'label' is {str(label.dtype).replace('torch.', '')}: use an integer dtype")
        label = label.long()
        if int(label.min()) < 0:
            raise DataError(f"{path}: 'label' has negative values: use class indices 0..K-1")
    if split is not None:
        if split.dim() != 1 or split.shape[0] != n:
            raise DataError(f"{path}: 'split' has shape {tuple(split.shape)}, expected ({n},)")
        if split.is_floating_point():
            if not bool(torch.isfinite(split).all()) or bool((split != split.round()).any()):
                raise DataError(f"{path}: 'split' must hold 0 (train) or 1 (test)")
        split = split.long()
        if not bool(((split == 0) | (split == 1)).all()):
            raise DataError(f"{path}: 'split' must hold 0 (train) or 1 (test) only")
    return tensors, label, split, present


def load_custom(path: str | Path, split: str) -> MultimodalData:
    """One split of a user's safetensors dataset (see the module docstring)."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
    name, main, test_file = resolve(path)
    kinds: dict = {}
    tensors, labels, split_t, present = read_file(main, kinds)
    files = [str(main)]
    if split_t is not None and test_file is not None:
        raise DataError(f"{main}: has a 'split' tensor and a separate test file {test_file.name}: use one of the two")
    if split == "train":
        if split_t is not None:
            rows = torch.nonzero(split_t == 0).flatten()
            tensors = {m: t[rows] for m, t in tensors.items()}
            labels = None if labels is None else labels[rows]
            present = None if present is None else present[rows]
    elif test_file is not None:
        train_shapes = {m: (tuple(t.shape[1:]), t.dtype) for m, t in tensors.items()}
        has_labels = labels is not None
        train_kinds, kinds = kinds, {}
        tensors, labels, extra_split, present = read_file(test_file, kinds)
        files = [str(test_file)]
        shapes = {m: (tuple(t.shape[1:]), t.dtype) for m, t in tensors.items()}
        if set(shapes) != set(train_shapes):
            raise DataError(
                f"{test_file}: modalities {sorted(shapes)} differ from the training file's {sorted(train_shapes)}"
            )
        for m in shapes:
            if shapes[m][0] != train_shapes[m][0]:
                raise DataError(
                    f"{test_file}: modality {m!r} has samples of shape {shapes[m][0]}, "
                    f"the training file {train_shapes[m][0]}"
                )
            if kinds[m].to_dict() != train_kinds[m].to_dict():
                raise DataError(
                    f"{test_file}: modality {m!r} is {kinds[m].name} {kinds[m].params or ''}, "
                    f"the training file's {train_kinds[m].name} {train_kinds[m].params or ''}"
                )
            if shapes[m][1] != train_shapes[m][1]:
                raise DataError(
                    f"{test_file}: modality {m!r} is {shapes[m][1]}, the training file {train_shapes[m][1]}"
                )
        if has_labels != (labels is not None):
            raise DataError(f"{test_file}: 'label' present in only one of the training and test files")
        if extra_split is not None:
            raise DataError(f"{test_file}: a test file must not hold a 'split' tensor")
    elif split_t is not None:
        rows = torch.nonzero(split_t == 1).flatten()
        tensors = {m: t[rows] for m, t in tensors.items()}
        labels = None if labels is None else labels[rows]
        present = None if present is None else present[rows]
    else:
        raise NoTestSplit(
            f"{name}: no test split: add a 'split' tensor (0 = train, 1 = test) to {main.name} "
            f"or a file {_stem(main) if _stem(main) != 'train' else 'test'}"
            f"{TEST_SUFFIX if _stem(main) != 'train' else SUFFIX} next to it"
        )
    n = int(next(iter(tensors.values())).shape[0])
    if n == 0:
        raise DataError(f"{name}: the {split} split is empty (no rows with split = {0 if split == 'train' else 1})")
    extra: dict = {"files": files}
    hashed = dict(tensors)
    if present is not None:
        hashed.update({f"{PRESENT}{m}": present[:, j] for j, m in enumerate(tensors)})
        if split == "test" or bool(present.all()):  # evaluation runs on complete tuples only
            rows = present.all(1).nonzero().flatten()
            if len(rows) == 0:
                raise DataError(f"{name}: the test split has no complete tuple (evaluation needs complete tuples)")
            extra["incomplete_dropped"] = n - len(rows)
            tensors = {m: t[rows] for m, t in tensors.items()}
            labels = None if labels is None else labels[rows]
            hashed = dict(tensors)
            present = None
    return MultimodalData(
        name,
        split,
        tensors,
        labels,
        fingerprint_tensors(hashed, labels),
        str(Path(files[0])),
        extra,
        kinds,
        present,
    )
