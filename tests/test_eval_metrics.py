"""Coherence with oracle and constant stand-in models, the per-subset latent probe, and model FID with
the tiny test-only extractor. The metric functions only use the models' public methods
(names, generate, cross_generate, sample_latents, posterior), so stand-ins can play the model."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch import distributions as td

from mmvae_cli.data.base import MultimodalData
from mmvae_cli.evaluate.coherence import conditional_coherence, joint_coherence
from mmvae_cli.evaluate.generation_fid import InceptionSpace, model_fid
from mmvae_cli.evaluate.latent import latent_probe
from mmvae_cli.fusion import Mixture

NAMES = ["m0", "m1", "m2", "m3"]


class ColumnClassifier:
    """Predicts the class stored in column 0 of a vector "image" (a stand-in digit classifier)."""

    n_classes = 10

    def predict(self, name, x):
        return x[:, 0].round().long().clamp(0, 9)


def _vector_data(n=200, seed=0):
    """Tuples of 4 vector modalities: column 0 holds the label, replaced by a wrong class in a
    modality-specific fraction of rows (so each classifier has its own accuracy < 1); column 1 holds
    the tuple index (how the oracle finds the tuple)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    tensors = {}
    for i, m in enumerate(NAMES):
        col = labels.clone().float()
        wrong = torch.rand(n, generator=g) < 0.1 * (i + 1)
        col[wrong] = ((labels[wrong] + 1 + torch.randint(0, 9, (int(wrong.sum()),), generator=g)) % 10).float()
        tensors[m] = torch.stack([col, torch.arange(n).float(), torch.rand(n, generator=g)], 1)
    return MultimodalData("vectors", "test", tensors, labels)


class Oracle:
    """Generates the true modalities of the tuple it is given (and of tuple i for latent i)."""

    def __init__(self, data):
        self.data, self.names, self.next = data, NAMES, 0

    def sample_latents(self, b, prior="base"):
        z = torch.arange(self.next, self.next + b) % len(self.data)
        self.next += b
        return z

    def generate(self, z):
        return {m: self.data.tensors[m][z] for m in self.names}

    def cross_generate(self, x, names):
        idx = next(iter(x.values()))[:, 1].long()
        return {t: self.data.tensors[t][idx] for t in names}


class Constant:
    """Returns one fixed vector (classified as 3) whatever it is given."""

    names = NAMES

    def __init__(self):
        self.image = torch.tensor([[3.0, 0.0, 0.0]])

    def sample_latents(self, b, prior="base"):
        return torch.zeros(b, 1)

    def generate(self, z):
        return {m: self.image.expand(len(z), -1) for m in self.names}

    def cross_generate(self, x, names):
        b = len(next(iter(x.values())))
        return {t: self.image.expand(b, -1) for t in names}


def test_oracle_coherence_equals_classifier_accuracy():
    data = _vector_data()
    clf = ColumnClassifier()
    acc = {m: int((clf.predict(m, data.tensors[m]) == data.labels).sum()) / len(data) for m in NAMES}
    assert len(set(acc.values())) == 4 and max(acc.values()) < 1  # four different, imperfect classifiers
    cond = conditional_coherence(Oracle(data), clf, data, "cpu", batch_size=64)
    for s, accs in cond["per_subset"].items():
        assert set(accs) == set(NAMES) - set(s.split(","))
        for t, v in accs.items():
            assert v == pytest.approx(acc[t], abs=1e-12)
    for k in ("1", "2", "3"):
        pairs = [acc[t] for s in itertools.combinations(NAMES, int(k)) for t in NAMES if t not in s]
        assert cond["by_inputs"][k] == pytest.approx(np.mean(pairs), abs=1e-12)
    assert cond["cross_pairs_mean"] == pytest.approx(np.mean([acc[t] for a in NAMES for t in NAMES if t != a]))
    assert cond["per_target"] == pytest.approx(acc)
    # joint: every test tuple once; coherent iff all four classifiers agree
    preds = torch.stack([clf.predict(m, data.tensors[m]) for m in NAMES])
    expected = int((preds == preds[0]).all(0).sum()) / len(data)
    oracle = Oracle(data)
    joint = joint_coherence(oracle.sample_latents, oracle, clf, len(data), batch_size=64)
    assert joint["joint"] == pytest.approx(expected) and 0 < expected < 1
    assert joint["n_samples"] == len(data)


def test_constant_model_is_at_chance():
    data = _vector_data()
    model = Constant()
    cond = conditional_coherence(model, ColumnClassifier(), data, "cpu")
    assert all(v == pytest.approx(0.1) for accs in cond["per_subset"].values() for v in accs.values())
    assert cond["by_inputs"] == pytest.approx({"1": 0.1, "2": 0.1, "3": 0.1})
    assert cond["cross_pairs_mean"] == pytest.approx(0.1)
    # joint coherence cannot see a constant model (all modalities agree on class 3);
    # the class histogram that comes with it does
    joint = joint_coherence(model.sample_latents, model, ColumnClassifier(), 100)
    assert joint["joint"] == 1.0 and joint["joint_se"] == 0.0
    assert all(h["histogram"][3] == 1.0 and h["entropy"] == 0.0 for h in joint["per_modality"].values())
    assert joint["coherent"]["histogram"][3] == 1.0 and joint["coherent"]["entropy"] == 0.0
    assert joint["coherent"]["n"] == 100


def test_entropy_of_known_histograms():
    """H(1/2, 1/4, 1/4) = 1.5 ln 2; its delta-method s.e. sqrt((sum h ln^2 h - H^2) / n) = ln 2 / (2 sqrt n)."""
    import math

    from mmvae_cli.evaluate.coherence import entropy, entropy_se, histogram_summary

    assert entropy([0.5, 0.25, 0.25, 0.0]) == pytest.approx(1.5 * math.log(2), abs=1e-15)
    assert entropy([0.1] * 10) == pytest.approx(math.log(10)) == pytest.approx(2.302585, abs=1e-6)
    assert entropy_se([0.5, 0.25, 0.25], 400) == pytest.approx(math.log(2) / 2 / 20, abs=1e-15)
    assert entropy_se([0.1] * 10, 50) == pytest.approx(0.0, abs=1e-7)  # the first-order term vanishes
    summary = histogram_summary(torch.tensor([2, 1, 1, 0]))
    assert summary["histogram"] == [0.5, 0.25, 0.25, 0.0] and summary["n"] == 4
    assert summary["entropy"] == pytest.approx(1.5 * math.log(2)) and summary["entropy_se"] > 0
    assert histogram_summary(torch.zeros(10, dtype=torch.long)) == {
        "histogram": None,
        "entropy": None,
        "entropy_se": None,
        "n": 0,
    }


class OneDigitPerClass(Constant):
    """A mode-seeking generator: latent i emits one clean digit of class (i mod `classes`) in every modality."""

    def __init__(self, classes):
        self.classes, self.next = classes, 0

    def sample_latents(self, b, prior="base"):
        z = torch.arange(self.next, self.next + b)
        self.next += b
        return z

    def generate(self, z):
        col = (z % self.classes).float()[:, None]
        return {m: torch.cat([col, torch.zeros(len(z), 2)], 1) for m in self.names}


@pytest.mark.parametrize("classes", [10, 2])
def test_joint_coherence_histogram_and_entropy_see_mode_collapse(classes):
    """Coherence 1 either way; the agreed-class entropy is ln 10 for all ten digits, ln 2 for two."""
    import math

    model = OneDigitPerClass(classes)
    joint = joint_coherence(model.sample_latents, model, ColumnClassifier(), 1000, batch_size=300)
    assert joint["joint"] == 1.0
    c = joint["coherent"]
    assert c["n"] == 1000 and c["histogram"] == [1 / classes if k < classes else 0.0 for k in range(10)]
    assert c["entropy"] == pytest.approx(math.log(classes), abs=1e-12)
    assert all(h["entropy"] == pytest.approx(math.log(classes)) for h in joint["per_modality"].values())


def test_joint_coherence_standard_error_and_coherent_histogram():
    """On the oracle (each test tuple once): the coherent samples' agreed-class histogram counted by hand."""
    import math

    data = _vector_data()
    clf, oracle = ColumnClassifier(), Oracle(data)
    preds = torch.stack([clf.predict(m, data.tensors[m]) for m in NAMES])
    coherent = (preds == preds[0]).all(0)
    counts = torch.bincount(preds[0][coherent], minlength=10).double()
    joint = joint_coherence(oracle.sample_latents, oracle, clf, len(data), batch_size=64)
    p = joint["joint"]
    assert joint["joint_se"] == pytest.approx(math.sqrt(p * (1 - p) / len(data)))
    assert joint["coherent"]["n"] == int(coherent.sum())
    assert joint["coherent"]["histogram"] == pytest.approx((counts / counts.sum()).tolist())
    m0 = torch.bincount(preds[0], minlength=10).double() / len(data)
    assert joint["per_modality"]["m0"]["histogram"] == pytest.approx(m0.tolist())


# --- latent probe per subset ---------------------------------------------------------------------
class LatentStandIn:
    """q(z | x_m) = N(x_m, 0.1): modality "sep" carries well-separated class clusters, "noise" none;
    a subset's posterior is the uniform mixture of its experts."""

    names = ["sep", "noise"]

    def posterior(self, x):
        locs = torch.stack([x[m] for m in self.names if m in x])
        mask = torch.eye(len(self.names), dtype=torch.bool)[[i for i, m in enumerate(self.names) if m in x]]
        return Mixture(td.Normal(locs, torch.full_like(locs, 0.1)), mask)


def _latent_data(n, split, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    sep = 8.0 * torch.eye(10, 16)[labels] + torch.randn(n, 16, generator=g)
    noise = torch.randn(n, 16, generator=g)
    return MultimodalData("latents", split, {"sep": sep, "noise": noise}, labels)


def test_latent_probe_per_subset_separable_and_noise():
    train, test = _latent_data(1000, "train", 0), _latent_data(2000, "test", 1)
    res = latent_probe(LatentStandIn(), train, test, "cpu", n_train=500, seed=0)
    assert set(res["per_subset"]) == {"sep", "noise", "sep,noise"}
    assert res["per_subset"]["sep"] == 1.0
    assert res["per_subset"]["sep,noise"] >= 0.99  # mixture mean (sep + noise) / 2: still separable
    assert abs(res["per_subset"]["noise"] - 0.1) < 0.04  # chance with 10 balanced classes
    assert res["by_inputs"]["1"] == pytest.approx((res["per_subset"]["sep"] + res["per_subset"]["noise"]) / 2)
    assert res["n_train"] == 500 and res["n_test"] == 2000
    again = latent_probe(LatentStandIn(), train, test, "cpu", n_train=500, seed=0)
    assert again == res  # deterministic for a seed


# --- FID of a model -------------------------------------------------------------------------------
def _tiny_extractor():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
    ).eval()


class ImageOracle:
    """Returns the real images (shifted in brightness by `shift`) for tuple i / latent i."""

    names = ["a", "b"]

    def __init__(self, data, shift=0.0):
        self.data, self.shift, self.next = data, shift, 0

    def _img(self, m, idx):
        return (self.data.rows(m, idx).float() / 255 + self.shift).clamp(0, 1)

    def sample_latents(self, b, prior="base"):
        z = torch.arange(self.next, self.next + b) % len(self.data)
        self.next += b
        return z

    def generate(self, z):
        return {m: self._img(m, z) for m in self.names}

    def cross_generate(self, x, names):
        given = next(iter(x))
        idx = (x[given][:, 0, 0, 0] * 255).round().long() + 256 * (x[given][:, 1, 0, 0] * 255).round().long()
        return {t: self._img(t, idx) for t in names}


def _image_data(n=300):
    g = torch.Generator().manual_seed(0)
    t = {m: torch.randint(0, 200, (n, 3, 16, 16), dtype=torch.uint8, generator=g) for m in ("a", "b")}
    for m in t:  # the tuple index in the first pixel (base 256), so the oracle can find the tuple
        t[m][:, 0, 0, 0] = torch.arange(n) % 256
        t[m][:, 1, 0, 0] = torch.arange(n) // 256
    return MultimodalData("imgs", "test", t, torch.arange(n) % 10, fingerprint="fp")


def test_model_fid_oracle_is_zero_and_grows_with_shift(tmp_path):
    data, net = _image_data(), _tiny_extractor()
    space = InceptionSpace(net, "cpu")
    res = model_fid(ImageOracle(data), data, space, n=300, batch_size=64, cache_dir=tmp_path)
    assert set(res["unconditional"]) == set(res["conditional"]) == {"a", "b"} and res["features"] == "inception"
    assert res["n_generated"] == res["n_real"] == 300
    assert all(abs(v) < 1e-6 for d in (res["unconditional"], res["conditional"]) for v in d.values()), res
    assert len(list(tmp_path.glob("imgs-test-*-fp-300.safetensors"))) == 2  # cached reference statistics
    fids = [
        model_fid(ImageOracle(data, s), data, space, n=300, cache_dir=tmp_path)["conditional"]["a"]
        for s in (0.05, 0.15, 0.3)
    ]
    assert 0 < fids[0] < fids[1] < fids[2], fids


def test_markdown_table_rows_keep_three_columns():
    import re

    from mmvae_cli.evaluate.report import markdown_table

    res = {"likelihood": {"k": 3, "n_test": 5, "joint": -10.0, "by_inputs": {"1": -12.0, "2": -10.0}}}
    table = markdown_table(res, {"fid": "weights not found | see help"})
    for line in table.splitlines():
        assert len(re.findall(r"(?<!\\)\|", line)) == 4, line  # unescaped pipes delimit 3 cells
    assert "|X_k| = 1" not in table and "\\|X_k\\| = 1" in table


def test_spread_indices_cover_a_class_sorted_split():
    from mmvae_cli.evaluate import spread_indices

    labels = torch.arange(1000) // 100  # sorted by class, like polymnist-mini's test split
    idx = spread_indices(1000, 200)
    assert len(idx) == 200 and len(set(idx.tolist())) == 200 and idx.max() < 1000
    assert labels[idx].bincount(minlength=10).tolist() == [20] * 10
    assert spread_indices(10, 50).tolist() == list(range(10))
