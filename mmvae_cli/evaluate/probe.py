"""Linear probe of latent representations (MoPoE paper protocol).

A logistic regression is fitted on the latent codes of a few encoded training
samples (500 in the paper) and its accuracy is measured on the encoded test
set. Features are standardised with the training mean/std first. Everything
is deterministic for a given seed.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import DataError, NumericalError


def _as_features(z: object, what: str) -> np.ndarray:
    if hasattr(z, "detach"):  # torch tensor
        z = z.detach().cpu().numpy()
    a = np.asarray(z, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise DataError(f"probe: {what} latents must be (N, D), got shape {a.shape}")
    if a.shape[0] == 0:
        raise DataError(f"probe: no {what} samples")
    if not np.isfinite(a).all():
        raise NumericalError(f"probe: {what} latents contain NaN or Inf")
    return a


def _as_labels(y: object, n: int, what: str) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    a = np.asarray(y)
    if a.ndim != 1 or a.shape[0] != n:
        raise DataError(f"probe: {what} labels must be ({n},), got shape {a.shape}")
    return a


def logistic_probe(train_z, train_y, test_z, test_y, max_iter: int = 1000, seed: int = 0) -> float:
    """Accuracy on (test_z, test_y) of a logistic regression fitted on (train_z, train_y).

    Latents (N, D) (numpy arrays or tensors) are standardised with the
    training statistics; the classifier is scikit-learn's
    ``LogisticRegression`` (L2, C=1, lbfgs, multinomial), which is
    deterministic. A fit that stops at `max_iter` before converging still
    gives a valid score, so the convergence warning is silenced.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr = _as_features(train_z, "training")
    xte = _as_features(test_z, "test")
    ytr = _as_labels(train_y, xtr.shape[0], "training")
    yte = _as_labels(test_y, xte.shape[0], "test")
    if xtr.shape[1] != xte.shape[1]:
        raise DataError(f"probe: training latents have {xtr.shape[1]} dims, test latents {xte.shape[1]}")
    if np.unique(ytr).size < 2:
        raise DataError("probe: the training samples need at least 2 classes")
    if max_iter < 1:
        raise DataError(f"probe: max_iter must be >= 1, got {max_iter}")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(xtr, ytr)
    return float(np.mean(clf.predict(xte) == yte))


def sample_balanced_indices(labels, n: int, seed: int = 0) -> np.ndarray:
    """`n` distinct indices into `labels`, spread over the classes as evenly as possible.

    Each class gets ``n // k`` (k classes) plus one more for ``n % k`` classes
    chosen at random; a class with too few samples gives what it has and the
    rest is spread over the others. Sorted; deterministic for a given seed.
    """
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DataError(f"probe: labels must be 1-D, got shape {y.shape}")
    if n < 0 or n > y.shape[0]:
        raise DataError(f"probe: cannot draw {n} samples from {y.shape[0]}")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    pools = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    sizes = np.array([len(p) for p in pools])
    take = np.zeros(len(classes), dtype=np.int64)
    remaining = n
    while remaining > 0:
        open_ = np.flatnonzero(take < sizes)
        share, extra = divmod(remaining, len(open_))
        give = np.full(len(open_), share, dtype=np.int64)
        give[rng.permutation(len(open_))[:extra]] += 1
        give = np.minimum(give, sizes[open_] - take[open_])
        take[open_] += give
        remaining -= int(give.sum())
    chosen = [p[:t] for p, t in zip(pools, take)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
