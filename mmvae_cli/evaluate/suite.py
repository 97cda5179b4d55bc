"""Run each metric on a loaded bundle, seeded, and return JSON-able results with stable keys.

Every function seeds torch's global RNG with `seed` first, so a metric gives the same numbers
whether it runs alone (`mmvae eval likelihood`) or inside `mmvae eval all`. The keys of each
result are documented in docs/evaluation.md.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..bundle import sha256_file
from ..data.base import MultimodalData
from ..errors import MMVAEError
from .coherence import conditional_coherence, joint_coherence
from .generation_fid import ClassifierSpace, InceptionSpace, model_fid
from .latent import latent_probe
from .likelihood import subset_log_likelihoods
from .prior import prior_measures

METRICS = ("coherence", "likelihood", "latent", "fid")


def _timed(rng_seed: int, fn, /, *args, **kw) -> dict:
    torch.manual_seed(rng_seed)
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def coherence(
    model, clf, test: MultimodalData, device, n_joint: int, prior: str, seed: int, langevin: dict | None = None
) -> dict:
    """`langevin`: sampler settings passed on to model.sample_latents (and to conditional generation
    when given), for bundles with an energy-based prior."""
    langevin = dict(langevin or {})

    def run():
        joint = joint_coherence(lambda b: model.sample_latents(b, prior=prior, **langevin), model, clf, n_joint)
        cond = conditional_coherence(model, clf, test, device, **({"langevin": langevin} if langevin else {}))
        per_mod, agreed = joint["per_modality"], joint["coherent"]
        return {
            "joint": joint["joint"],
            "joint_se": joint["joint_se"],
            "n_joint": n_joint,
            "prior": prior,
            "langevin": langevin,
            "joint_class_histogram": {m: h["histogram"] for m, h in per_mod.items()},
            "joint_class_entropy": {m: h["entropy"] for m, h in per_mod.items()},
            "joint_class_entropy_se": {m: h["entropy_se"] for m, h in per_mod.items()},
            "n_coherent": agreed["n"],
            "coherent_class_histogram": agreed["histogram"],
            "coherent_class_entropy": agreed["entropy"],
            "coherent_class_entropy_se": agreed["entropy_se"],
            "class_entropy_max": math.log(clf.n_classes),
            "conditional": cond["by_inputs"],
            "cross_pairs_mean": cond["cross_pairs_mean"],
            "per_target": cond["per_target"],
            "per_target_by_inputs": cond["per_target_by_inputs"],
            "per_subset": cond["per_subset"],
            "n_test": cond["n_test"],
        }

    return {"metric": "coherence", "split": test.split, "seed": seed, **_timed(seed, run)}


def likelihood(
    model, test: MultimodalData, device, k: int, seed: int, batch_size: int = 100, prior: str = "base"
) -> dict:
    out = _timed(seed, subset_log_likelihoods, model, test, device, k=k, batch_size=batch_size, prior=prior)
    return {"metric": "likelihood", "split": test.split, "seed": seed, **out}


def latent(model, train: MultimodalData, test: MultimodalData, device, n_train: int, seed: int) -> dict:
    out = _timed(seed, latent_probe, model, train, test, device, n_train=n_train, seed=seed)
    return {"metric": "latent", "split": test.split, "seed": seed, **out}


def fid(
    model,
    test: MultimodalData,
    device,
    n: int,
    prior: str,
    seed: int,
    weights: str | None,
    cache_dir: Path | None,
    extractor=None,
    langevin: dict | None = None,
) -> dict:
    """`extractor` is for tests only; the CLI leaves it None and the FID Inception is loaded from
    --inception-weights / $MMVAE_INCEPTION_WEIGHTS / torch hub's cache (or an error says where)."""
    from . import fid as F

    weights_id = "test-extractor"
    if extractor is None:
        path = F.find_inception_weights(weights)
        extractor = F.load_fid_inception(path, device)
        weights_id = f"{path.name}:sha256:{sha256_file(path)[:16]}"
    space = InceptionSpace(extractor, device, weights_id)
    out = _timed(seed, model_fid, model, test, space, n=n, prior=prior, cache_dir=cache_dir, langevin=langevin)
    return {"metric": "fid", "split": test.split, "seed": seed, "weights": weights_id, **out}


def classifier_fd(
    model, clf, clf_run, test: MultimodalData, device, n: int, prior: str, seed: int, langevin: dict | None = None
) -> dict:
    """The Frechet distance of `fid` in the feature space of the digit classifiers `clf` (loaded from
    the bundle `clf_run`; its weights file is named by its sha256), recorded as metric fd_classifier."""
    from ..classifier import WEIGHTS

    path = Path(clf_run) / WEIGHTS
    space = ClassifierSpace(clf, device, f"{path.name}:sha256:{sha256_file(path)[:16]}")
    out = _timed(seed, model_fid, model, test, space, n=n, prior=prior, langevin=langevin)
    return {
        "metric": "fd_classifier",
        "split": test.split,
        "seed": seed,
        "classifiers": str(clf_run),
        "weights": space.weights_id,
        **out,
    }


def prior(
    model,
    name: str,
    train: MultimodalData,
    test: MultimodalData,
    device,
    n_samples: int,
    seed: int,
    langevin: dict | None = None,
) -> dict:
    """Held-out log-density and the memorisation check of the prior `name` (evaluate/prior.py)."""
    out = _timed(seed, prior_measures, model, name, train, test, device, n_samples, langevin=langevin)
    return {"metric": "prior", "split": test.split, "seed": seed, **out}


def require_labels(data: MultimodalData, what: str) -> None:
    if data.labels is None:
        raise MMVAEError(
            f"{what} does not apply to {data.name}: it has no class labels "
            "(`mmvae eval all` skips it and runs the metrics that apply)"
        )
