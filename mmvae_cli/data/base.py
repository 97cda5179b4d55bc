"""The in-memory form every dataset family produces.

A `MultimodalData` holds one tensor per modality with a shared first dimension:
each stored as its modality kind says (modalities/): images (N, C, H, W) uint8
in [0, 255] (datasets we ship) or float in [0, 1] (a user's own data), vectors
float32 (N, D), text int64 token ids (N, L). `kinds` names each modality's kind
(inferred for images and vectors when not given). Batches are index gathers on
these tensors; the kind converts them to the networks' float input on the
device (`batch`). Labels, when known, are int64 (N,).

`tensors` is either a plain dict or a `GatheredTensors` mapping (used by
MNIST-SVHN, whose ~1.7M training pairs re-use 60k + 73k images: row j of
modality m is `store[m][index[m][j]]`). Both behave as a mapping of full-length
(N, ...) tensors; prefer `batch`, `rows` and `subset`, which never materialise
more than the rows asked for.

`present` marks partially observed data: a bool (N, M) tensor, column j for modality
`modalities[j]`, true where tuple i has modality j (None = every tuple complete). Absent rows of
`tensors` hold placeholders that the model never reads (MultimodalVAE.observed). Every tuple has at
least one modality. `drop_modalities` makes such data from complete data (`--missing-ratio`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import modalities
from ..errors import DataError


class GatheredTensors(Mapping):
    """Read-only mapping modality -> (N, ...) tensor whose row j is `store[m][index[m][j]]`.

    `mapping[m]` materialises the full-length tensor (correct, but can be large);
    `take(m, rows)` gathers only `rows`.
    """

    def __init__(self, store: dict[str, torch.Tensor], index: dict[str, torch.Tensor]):
        if set(store) != set(index):
            raise DataError(f"gathered data: modalities {sorted(store)} vs index {sorted(index)}")
        self.store = dict(store)
        self.index = {m: index[m].long() for m in store}

    def __getitem__(self, m: str) -> torch.Tensor:
        return self.store[m][self.index[m]]

    def __iter__(self):
        return iter(self.store)

    def __len__(self) -> int:
        return len(self.store)

    def take(self, m: str, rows: torch.Tensor) -> torch.Tensor:
        return self.store[m][self.index[m][rows]]

    def rows_of(self, m: str) -> int:
        return int(self.index[m].shape[0])

    def subset(self, rows: torch.Tensor) -> GatheredTensors:
        return GatheredTensors(self.store, {m: i[rows] for m, i in self.index.items()})


@dataclass
class MultimodalData:
    name: str  # dataset name, e.g. "polymnist-mini"
    split: str  # "train" or "test"
    tensors: dict[str, torch.Tensor]  # modality name -> (N, ...) image (N,C,H,W) or float32 vector (N, D)
    labels: torch.Tensor | None = None  # (N,) int64 or None
    fingerprint: str = ""  # stable hash of the source files/cache, recorded in manifests
    location: str = ""  # where it lives on disk (for `data info`)
    extra: dict = field(default_factory=dict)
    kinds: dict = field(default_factory=dict)  # modality name -> modalities.ModalityKind (inferred if absent)
    present: torch.Tensor | None = None  # (N, M) bool: tuple i has modality j; None = all complete

    def __post_init__(self):
        if not self.tensors:
            raise DataError(f"{self.name}: no modalities")
        self.kinds = {m: self.kinds.get(m) or modalities.infer(self._base(m)) for m in self.tensors}
        lengths = {m: self._rows(m) for m in self.tensors}
        if len(set(lengths.values())) != 1:
            raise DataError(f"{self.name}: modalities have different lengths {lengths}")
        if self.labels is not None and int(self.labels.shape[0]) != next(iter(lengths.values())):
            raise DataError(f"{self.name}: {self.labels.shape[0]} labels for {next(iter(lengths.values()))} samples")
        if self.present is not None:
            n, m = next(iter(lengths.values())), len(self.tensors)
            if self.present.dtype != torch.bool or tuple(self.present.shape) != (n, m):
                raise DataError(f"{self.name}: presence mask must be bool ({n}, {m}), got {tuple(self.present.shape)}")
            if not bool(self.present.any(1).all()):
                i = int((~self.present.any(1)).nonzero()[0])
                raise DataError(f"{self.name}: tuple {i} has no modality present (every tuple needs at least one)")

    def _rows(self, m: str) -> int:
        if isinstance(self.tensors, GatheredTensors):
            return self.tensors.rows_of(m)
        return int(self.tensors[m].shape[0])

    def _base(self, m: str) -> torch.Tensor:
        """A tensor with the modality's per-sample shape and dtype (never materialises a gather)."""
        if isinstance(self.tensors, GatheredTensors):
            return self.tensors.store[m]
        return self.tensors[m]

    @property
    def modalities(self) -> list[str]:
        return list(self.tensors)

    def __len__(self) -> int:
        return self._rows(next(iter(self.tensors)))

    def shape(self, modality: str) -> tuple[int, ...]:
        return tuple(self._base(modality).shape[1:])

    def dtype(self, modality: str) -> torch.dtype:
        return self._base(modality).dtype

    def kind(self, modality: str) -> modalities.ModalityKind:
        return self.kinds[modality]

    def input_shape(self, modality: str) -> tuple[int, ...]:
        """The per-sample shape the networks see (text: (L, V) one-hot for stored (L,) ids)."""
        return tuple(self.kinds[modality].model_shape(self.shape(modality)))

    def rows(self, modality: str, index: torch.Tensor) -> torch.Tensor:
        """Rows `index` of one modality in its stored dtype (uint8 images stay uint8)."""
        if isinstance(self.tensors, GatheredTensors):
            return self.tensors.take(modality, index)
        return self.tensors[modality][index]

    def presence(
        self, index: torch.Tensor, names: list[str], device: torch.device | str = "cpu"
    ) -> torch.Tensor | None:
        """The presence mask of rows `index` with columns in the order `names` (B, M), or None if complete."""
        if self.present is None:
            return None
        cols = [self.modalities.index(n) for n in names]
        return self.present[index.to(self.present.device)][:, cols].to(device, non_blocking=True)

    def observed_histogram(self) -> dict[str, int]:
        """{k: number of tuples with exactly k observed modalities}, k = 1..M."""
        M = len(self.tensors)
        if self.present is None:
            return {str(M): len(self)}
        counts = torch.bincount(self.present.sum(1), minlength=M + 1)
        return {str(k): int(counts[k]) for k in range(1, M + 1)}

    def complete(self) -> MultimodalData:
        """Only the tuples that have every modality (self when all are complete)."""
        if self.present is None:
            return self
        return self.subset(self.present.all(1).nonzero().flatten())

    def batch(self, index: torch.Tensor, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Gather rows `index` of every modality and convert them to network input on `device`."""
        return {m: self.kinds[m].to_model(self.rows(m, index).to(device, non_blocking=True)) for m in self.tensors}

    def subset(self, index: torch.Tensor) -> MultimodalData:
        if isinstance(self.tensors, GatheredTensors):
            tensors = self.tensors.subset(index)
        else:
            tensors = {m: t[index] for m, t in self.tensors.items()}
        return MultimodalData(
            self.name,
            self.split,
            tensors,
            None if self.labels is None else self.labels[index],
            self.fingerprint,
            self.location,
            dict(self.extra),
            dict(self.kinds),
            None if self.present is None or bool(self.present[index].all()) else self.present[index],
        )


MISSING_SALT = 0x6D697373  # "miss": the drop mask's generator is seeded with (seed, this), see drop_modalities


def drop_modalities(data: MultimodalData, ratio: float, seed: int) -> MultimodalData:
    """`--missing-ratio`: each (tuple, modality) that is present is dropped independently with probability
    `ratio`; a tuple left with nothing keeps one of its present modalities, chosen uniformly. The mask is
    a function of (seed, ratio, the data's presence) alone (own generator), so a resumed run gets the same.
    The tensors are unchanged (dropped rows are never read). ratio 0: `data` itself."""
    if ratio <= 0:
        return data
    n, M = len(data), len(data.modalities)
    present = data.present if data.present is not None else torch.ones(n, M, dtype=torch.bool)
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + MISSING_SALT)
    drop = torch.rand(n, M, generator=g) < ratio
    keep_one = torch.rand(n, M, generator=g).masked_fill(~present, -1.0).argmax(1)  # a uniform present one
    kept = present & ~drop
    empty = ~kept.any(1)
    kept[empty, keep_one[empty]] = True
    return replace(data, present=kept, extra={**data.extra, "missing_ratio": float(ratio)})


def to_float(t: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; float tensors pass through."""
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float images in [0, 1] -> uint8 (clamped, rounded)."""
    return (x.detach().clamp(0, 1) * 255.0).round().to(torch.uint8)


def fingerprint_tensors(tensors: Mapping[str, torch.Tensor], labels: torch.Tensor | None = None) -> str:
    """sha256 over modality names, shapes, dtypes and bytes (first 16 hex digits)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.numpy().tobytes())
    if labels is not None:
        h.update(labels.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Dataset:
    """A named dataset's registration (each dataset file declares its own; data/__init__.py lists them):
    how to load and get it, and what `mmvae data --help` and `mmvae data fetch --help` say about it."""

    name: str
    load: Callable[..., MultimodalData]  # load(root, split): one split under the data root (or --data-root)
    layout: str  # where it lives under the data root (`mmvae data --help`)
    fetch: Callable[..., Path]  # fetch(root, **options) -> its folder (`mmvae data fetch NAME`)
    fetch_options: tuple[str, ...] = ()  # the `data fetch` options fetch takes: url, sha256
    fetch_help: str = ""  # its line in `mmvae data fetch --help` ("" = said on another dataset's line)
