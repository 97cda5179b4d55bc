"""Frechet distance of a model's generated samples to the real evaluation split (REFERENCE.md protocol).

unconditional, per modality m:   FD( {mean of p(x_m | z_i)}, z_i ~ prior , i < N ;  real x_m )
conditional, per target t:       FD( {mean of p(x_t | z_i)}, z_i ~ q(z | X_{-t}) ; real x_t )

over N tuples spread evenly over the split (N = `n`, capped at the split size; the papers use 10,000
generated vs 10,000 real test images), in one of two feature spaces:

    InceptionSpace    pytorch-fid's Inception pool features of the image modalities: the FID. Decoder
                      means are clamped to [0, 1] as images; the real-image statistics can be cached per
                      dataset, split, modality, data fingerprint, N and weights file.
    ClassifierSpace   the coherence classifiers' penultimate-layer features (Classifiers.features) of
                      every modality they cover: needs no downloaded weights, and sees what the
                      coherence classifiers see (generated means and data as the classifiers read them).

The distance and the Gaussian statistics are fid.py's (fid.statistics, fid.frechet_distance).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..data.base import MultimodalData
from ..errors import MMVAEError
from . import fid as F
from . import spread_indices


class InceptionSpace:
    """FID features: `extractor` maps images in [0, 1] to pool features (fid.load_fid_inception)."""

    name = "inception"

    def __init__(self, extractor, device, weights_id: str = ""):
        self.extractor, self.device, self.weights_id = extractor, device, weights_id

    def modalities(self, model, data: MultimodalData) -> list[str]:
        return [m for m in model.names if m in data.modalities and data.kind(m).has_fid]

    def real(self, data: MultimodalData, m: str, idx: torch.Tensor) -> torch.Tensor:
        return data.rows(m, idx)  # stored dtype: uint8 images are read as pytorch-fid reads image files

    def features(self, m: str, batches: Iterable[torch.Tensor], generated: bool) -> np.ndarray:
        return F.inception_features(batches, self.extractor, self.device, clamp=generated)


class ClassifierSpace:
    """The penultimate-layer features of the digit classifiers `clf` (classifier.Classifiers)."""

    name = "classifier"

    def __init__(self, clf, device, weights_id: str = ""):
        self.clf, self.device, self.weights_id = clf, device, weights_id

    def modalities(self, model, data: MultimodalData) -> list[str]:
        return [m for m in model.names if m in data.modalities and m in self.clf.nets]

    def real(self, data: MultimodalData, m: str, idx: torch.Tensor) -> torch.Tensor:
        return data.kind(m).to_model(data.rows(m, idx).to(self.device))  # as the classifiers read data

    def features(self, m: str, batches: Iterable[torch.Tensor], generated: bool) -> np.ndarray:
        feats = [self.clf.features(m, b.to(self.device)).to("cpu", torch.float32).numpy() for b in batches]
        if not feats:
            raise MMVAEError("Frechet distance: no samples")
        return np.concatenate(feats)


def _real(data: MultimodalData, m: str, n: int, batch_size: int, space) -> Iterator[torch.Tensor]:
    idx = spread_indices(len(data), n)
    for start in range(0, n, batch_size):
        yield space.real(data, m, idx[start : start + batch_size])


def reference_statistics(
    data: MultimodalData,
    m: str,
    n: int,
    space,
    batch_size: int,
    cache_dir: Path | None = None,
):
    """(mu, sigma) of the features of n real samples of modality m (spread_indices), cached in cache_dir
    when given."""

    def compute():
        return F.statistics(space.features(m, _real(data, m, n, batch_size, space), generated=False))

    if cache_dir is None:
        return compute()
    meta = {
        "dataset": data.name,
        "split": data.split,
        "modality": m,
        "fingerprint": data.fingerprint,
        "n": n,
        "indices": "spread",
        "weights": space.weights_id,
    }
    path = Path(cache_dir) / f"{data.name}-{data.split}-{m}-{data.fingerprint or 'nofp'}-{n}.safetensors"
    return F.load_or_compute_statistics(path, meta, compute)


def _mean(d: dict) -> float | None:
    return sum(d.values()) / len(d) if d else None


@torch.no_grad()
def model_fid(
    model,
    data: MultimodalData,
    space,
    n: int,
    batch_size: int = 250,
    prior: str = "base",
    langevin: dict | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Unconditional FD per modality of `space` and conditional FD per target given all the others,
    each with its mean over modalities (unconditional_mean, conditional_mean)."""
    mods = space.modalities(model, data)
    if not mods:
        raise MMVAEError(f"fid: this model has no modality with {space.name} features")
    n = min(n, len(data))
    if n < 2:
        raise MMVAEError("fid: need at least 2 tuples in the evaluation split")
    ref = {m: reference_statistics(data, m, n, space, batch_size, cache_dir) for m in mods}

    def unconditional(m):
        for start in range(0, n, batch_size):
            z = model.sample_latents(min(batch_size, n - start), prior=prior, **(langevin or {}))
            yield model.generate(z)[m]

    def conditional(t):
        others = [m for m in model.names if m != t]
        idx = spread_indices(len(data), n)
        for start in range(0, n, batch_size):
            x = data.batch(idx[start : start + batch_size], space.device)
            yield model.cross_generate({m: x[m] for m in others}, [t])[t]

    out: dict[str, dict[str, float]] = {"unconditional": {}, "conditional": {}}
    for kind, gen in (("unconditional", unconditional), ("conditional", conditional)):
        for m in mods:
            if kind == "conditional" and len(model.names) < 2:
                continue
            mu, sigma = F.statistics(space.features(m, gen(m), generated=True))
            out[kind][m] = F.frechet_distance(mu, sigma, *ref[m])
    return {
        **out,
        "unconditional_mean": _mean(out["unconditional"]),
        "conditional_mean": _mean(out["conditional"]),
        "features": space.name,
        "n_generated": n,
        "n_real": n,
        "prior": prior,
    }
