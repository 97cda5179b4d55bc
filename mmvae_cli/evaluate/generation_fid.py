"""FID of a model's generated images against the real evaluation split (REFERENCE.md protocol).

unconditional, per image modality m:   FID( {mean of p(x_m | z_i)}, z_i ~ prior , i < N ;  real x_m )
conditional, per target t:             FID( {mean of p(x_t | z_i)}, z_i ~ q(z | X_{-t}) ; real x_t )

over N tuples spread evenly over the split (N = `n`, capped at the split size; the papers use 10,000
generated vs 10,000 real test images). Decoder means are clamped to [0, 1] as images. The
real-image statistics can be cached per dataset, split, modality, data fingerprint, N and
weights file (fid.load_or_compute_statistics). The distance and the features are fid.py's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from ..data.base import MultimodalData
from ..errors import MMVAEError
from . import fid as F
from . import spread_indices


def _real(data: MultimodalData, m: str, n: int, batch_size: int) -> Iterator[torch.Tensor]:
    idx = spread_indices(len(data), n)
    for start in range(0, n, batch_size):
        yield data.rows(m, idx[start : start + batch_size])


def reference_statistics(
    data: MultimodalData,
    m: str,
    n: int,
    extractor,
    device,
    batch_size: int,
    cache_dir: Path | None = None,
    weights_id: str = "",
):
    """(mu, sigma) of n real images of modality m (spread_indices), cached in cache_dir when given."""

    def compute():
        return F.statistics(F.inception_features(_real(data, m, n, batch_size), extractor, device))

    if cache_dir is None:
        return compute()
    meta = {
        "dataset": data.name,
        "split": data.split,
        "modality": m,
        "fingerprint": data.fingerprint,
        "n": n,
        "indices": "spread",
        "weights": weights_id,
    }
    path = Path(cache_dir) / f"{data.name}-{data.split}-{m}-{data.fingerprint or 'nofp'}-{n}.safetensors"
    return F.load_or_compute_statistics(path, meta, compute)


@torch.no_grad()
def model_fid(
    model,
    data: MultimodalData,
    device,
    extractor,
    n: int,
    batch_size: int = 250,
    prior: str = "base",
    cache_dir: Path | None = None,
    weights_id: str = "",
) -> dict:
    """Unconditional FID per image modality and conditional FID per target given all the others."""
    images = [m for m in model.names if m in data.modalities and data.kind(m).has_fid]
    if not images:
        raise MMVAEError("fid: this model has no image modalities")
    n = min(n, len(data))
    if n < 2:
        raise MMVAEError("fid: need at least 2 tuples in the evaluation split")
    ref = {m: reference_statistics(data, m, n, extractor, device, batch_size, cache_dir, weights_id) for m in images}

    def unconditional(m):
        for start in range(0, n, batch_size):
            z = model.sample_latents(min(batch_size, n - start), prior=prior)
            yield model.generate(z)[m]

    def conditional(t):
        others = [m for m in model.names if m != t]
        idx = spread_indices(len(data), n)
        for start in range(0, n, batch_size):
            x = data.batch(idx[start : start + batch_size], device)
            yield model.cross_generate({m: x[m] for m in others}, [t])[t]

    out: dict[str, dict[str, float]] = {"unconditional": {}, "conditional": {}}
    for kind, gen in (("unconditional", unconditional), ("conditional", conditional)):
        for m in images:
            if kind == "conditional" and len(model.names) < 2:
                continue
            mu, sigma = F.statistics(F.inception_features(gen(m), extractor, device, clamp=True))
            out[kind][m] = F.frechet_distance(mu, sigma, *ref[m])
    return {**out, "n_generated": n, "n_real": n, "prior": prior}
