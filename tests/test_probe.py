import numpy as np
import pytest
import torch

from mmvae_cli.errors import DataError
from mmvae_cli.evaluate.probe import logistic_probe, sample_balanced_indices


def _clusters(n, k, d, rng, sep=6.0):
    """k well-separated Gaussian clusters in d dims (centres sep apart on the axes)."""
    y = rng.integers(0, k, size=n)
    centres = np.eye(k, d) * sep
    return centres[y] + rng.normal(size=(n, d)), y


def test_separable_latents_score_one():
    rng = np.random.default_rng(0)
    ztr, ytr = _clusters(500, 10, 16, rng)
    zte, yte = _clusters(1000, 10, 16, rng)
    assert logistic_probe(ztr, ytr, zte, yte) >= 0.99


def test_accepts_tensors_and_is_deterministic():
    rng = np.random.default_rng(1)
    ztr, ytr = _clusters(300, 5, 8, rng, sep=1.0)  # overlapping: accuracy strictly between
    zte, yte = _clusters(500, 5, 8, rng, sep=1.0)
    a = logistic_probe(ztr, ytr, zte, yte, seed=3)
    b = logistic_probe(
        torch.from_numpy(ztr).float(),
        torch.from_numpy(ytr),
        torch.from_numpy(zte).float(),
        torch.from_numpy(yte),
        seed=3,
    )
    assert a == logistic_probe(ztr, ytr, zte, yte, seed=3)
    assert 0.3 < a < 1.0
    assert abs(a - b) <= 0.01  # float32 vs float64 inputs


def test_noise_latents_score_chance():
    # Test labels independent of the latents: each prediction is right with
    # probability 1/10 whatever the classifier learned, so the accuracy is
    # Binomial(1000, 0.1) / 1000 with sd 0.0095; +-0.05 is > 5 sd.
    rng = np.random.default_rng(2)
    ztr, ytr = rng.normal(size=(500, 20)), rng.integers(0, 10, size=500)
    zte, yte = rng.normal(size=(1000, 20)), rng.integers(0, 10, size=1000)
    acc = logistic_probe(ztr, ytr, zte, yte)
    assert abs(acc - 0.1) < 0.05


def test_bad_inputs():
    z = np.zeros((10, 3))
    with pytest.raises(DataError):
        logistic_probe(z, np.zeros(10), z, np.zeros(10))  # a single class
    with pytest.raises(DataError):
        logistic_probe(z, np.arange(10) % 2, np.zeros((5, 4)), np.zeros(5))  # dims differ
    with pytest.raises(DataError):
        logistic_probe(z, np.arange(9) % 2, z, np.zeros(10))  # label count


def test_sample_balanced_indices():
    labels = np.repeat(np.arange(10), [100, 100, 100, 100, 100, 100, 100, 100, 100, 3])
    idx = sample_balanced_indices(labels, 500, seed=0)
    assert len(idx) == 500 and len(np.unique(idx)) == 500
    counts = np.bincount(labels[idx], minlength=10)
    assert counts[9] == 3  # the small class gives what it has
    assert counts[:9].max() - counts[:9].min() <= 1  # the rest is spread evenly
    assert np.array_equal(idx, sample_balanced_indices(labels, 500, seed=0))
    assert not np.array_equal(idx, sample_balanced_indices(labels, 500, seed=1))
    assert len(sample_balanced_indices(labels, len(labels))) == len(labels)
    with pytest.raises(DataError):
        sample_balanced_indices(labels, len(labels) + 1)
