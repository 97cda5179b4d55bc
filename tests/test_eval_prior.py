"""`eval prior`'s measures (evaluate/prior.py) and the classifier feature space of `eval fid`, exactly:
nearest-neighbour distances on a hand-made set, a gmm prior's log-density against scikit-learn, the
classifiers' penultimate features against their last layer."""

import math

import numpy as np
import pytest
import torch

from mmvae_cli.evaluate.prior import distance_summary, log_density, mean_se, memorisation, nearest_distances


def test_nearest_distances_on_a_hand_made_set():
    train = torch.tensor([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])
    queries = torch.tensor([[0.0, 0.0], [3.0, 0.0], [6.0, 8.0], [10.0, 1.0], [-1.0, -1.0]])
    d = nearest_distances(queries, train, batch_size=2)  # chunks of 2 queries: the same as all at once
    assert d.dtype == torch.float64
    assert d.tolist() == pytest.approx([0.0, 3.0, 5.0, 1.0, math.sqrt(2)], abs=1e-12)
    s = distance_summary(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64))
    assert s["mean"] == 3.0 and s["n"] == 5 and s["quantiles"]["0.5"] == 3.0 and s["quantiles"]["0.25"] == 2.0
    assert s["se"] == pytest.approx(math.sqrt(2.5 / 5))


def test_memorisation_sees_a_prior_that_copies_the_training_means():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(500, 3, generator=g), torch.randn(200, 3, generator=g)
    copies = memorisation(train[torch.randint(500, (300,), generator=g)], test, train)
    assert copies["prior"]["mean"] == 0.0 and copies["ratio"] == 0.0 and copies["prior_below_test_q05"] == 1.0
    fresh = memorisation(torch.randn(300, 3, generator=g), test, train)  # the same distribution as the data
    assert 0.8 < fresh["ratio"] < 1.25 and fresh["prior_below_test_q05"] < 0.15
    assert fresh["n_train"] == 500 and fresh["test"]["n"] == 200 and fresh["prior"]["n"] == 300


def test_gmm_log_density_equals_sklearn():
    from sklearn.mixture import GaussianMixture

    from mmvae_cli.priors.gmm import GMMPrior

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 0.5, (200, 2)), rng.normal(2, 1.0, (200, 2))])
    gm = GaussianMixture(2, random_state=0).fit(x)
    held_out = rng.normal(0, 2, (300, 2))
    want = gm.score_samples(held_out)
    got = log_density(GMMPrior.from_sklearn(gm), torch.as_tensor(held_out, dtype=torch.float64), batch_size=64)
    assert got["n"] == 300
    assert got["mean"] == pytest.approx(want.mean(), rel=1e-10)
    assert got["se"] == pytest.approx(want.std(ddof=1) / math.sqrt(300), rel=1e-8)
    assert mean_se(torch.tensor([2.0])) == {"mean": 2.0, "se": 0.0, "n": 1}


@pytest.mark.parametrize("shape, kind", [((3, 28, 28), "image"), ((3, 32, 32), "image"), ((5,), "vector")])
def test_classifier_features_are_the_input_of_the_last_layer(shape, kind):
    from torch import nn

    from mmvae_cli import modalities
    from mmvae_cli.classifier import Classifiers

    torch.manual_seed(0)
    clf = Classifiers({"m": list(shape)}, 10, {"m": modalities.make(kind)}).eval()
    x = torch.rand(6, *shape)
    h = clf.features("m", x)
    last = [mod for mod in clf.nets["m"].modules() if isinstance(mod, nn.Linear)][-1]
    assert h.shape == (6, last.in_features)
    torch.testing.assert_close(last(h), clf("m", clf.kinds["m"].classifier_input(x)))
    assert not last._forward_pre_hooks  # the hook is gone


def test_classifier_space_fid_of_the_oracle_is_zero():
    """Generated = real tuples: the Frechet distance in classifier features is 0, and grows with a shift."""
    from helpers_cli import digit_pattern

    from mmvae_cli.classifier import Classifiers
    from mmvae_cli.data.base import MultimodalData
    from mmvae_cli.evaluate.generation_fid import ClassifierSpace, model_fid

    rng = np.random.default_rng(0)
    n = 60
    imgs = {
        m: torch.from_numpy(np.stack([digit_pattern(i % 10, rng, k) for i in range(n)])).permute(0, 3, 1, 2)
        for k, m in enumerate(("a", "b"))
    }
    data = MultimodalData("imgs", "test", imgs, torch.arange(n) % 10)
    torch.manual_seed(0)
    kind = data.kind("a")
    clf = Classifiers({m: [3, 28, 28] for m in imgs}, 10, {m: kind for m in imgs}).eval()

    class Oracle:
        names = ["a", "b"]

        def __init__(self, shift):
            self.shift, self.next = shift, 0

        def sample_latents(self, b, prior="base"):
            z = torch.arange(self.next, self.next + b) % n
            self.next += b
            return z

        def generate(self, z):
            return {m: (kind.to_model(data.rows(m, z)) + self.shift).clamp(0, 1) for m in self.names}

        def cross_generate(self, x, names):
            return {t: (x[next(iter(x))] + self.shift).clamp(0, 1) for t in names}

    space = ClassifierSpace(clf, "cpu")
    res = model_fid(Oracle(0.0), data, space, n=n, batch_size=25)
    assert res["features"] == "classifier" and set(res["unconditional"]) == {"a", "b"}
    assert all(abs(v) < 1e-6 for v in res["unconditional"].values()), res
    assert res["unconditional_mean"] == pytest.approx(np.mean(list(res["unconditional"].values())))
    shifted = model_fid(Oracle(0.3), data, space, n=n, batch_size=25)
    assert shifted["unconditional_mean"] > 1e-3
