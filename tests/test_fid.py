"""FID: a tiny random extractor (the test-only hook) for the statistics, and a
randomly initialised FID-architecture Inception for the weight loading path
(the real pytorch-fid weights are not needed and never downloaded)."""

import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from mmvae_cli.errors import DataError, MMVAEError, NumericalError
from mmvae_cli.evaluate import fid as F

# --------------------------------------------------------------------------------------
# Tiny extractor: statistics and distance
# --------------------------------------------------------------------------------------


def _tiny_extractor():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),  # (B, 64)
    ).eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(400, 3, 16, 16, generator=g)


def _batches(x, size=64):
    return list(x.split(size))


def test_self_fid_is_zero(images):
    net = _tiny_extractor()
    d = F.fid(_batches(images), _batches(images), extractor=net)
    _, sigma = F.statistics(F.inception_features(_batches(images), net))
    assert abs(d) < 1e-6 * np.trace(sigma)


def test_fid_grows_with_noise(images):
    net = _tiny_extractor()
    mu0, s0 = F.statistics(F.inception_features(_batches(images), net))
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
    dists = []
    for level in (0.05, 0.1, 0.2, 0.4, 0.8):
        noisy = (images + level * noise).clamp(0, 1)
        mu, s = F.statistics(F.inception_features(_batches(noisy), net))
        dists.append(F.frechet_distance(mu, s, mu0, s0))
    assert dists[0] > 0
    assert all(a < b for a, b in zip(dists, dists[1:])), dists


def test_features_input_handling(images):
    net = _tiny_extractor()
    gray = images[:50, :1]
    a = F.inception_features([gray], net)
    b = F.inception_features([gray.repeat(1, 3, 1, 1)], net)
    assert a.shape == (50, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # 1 channel -> repeated to 3
    u8 = (images[:50] * 255).round().to(torch.uint8)
    np.testing.assert_allclose(
        F.inception_features([u8], net), F.inception_features([u8.float() / 255], net), rtol=0, atol=0
    )
    # re-chunking into batch_size pieces does not change the features
    np.testing.assert_allclose(
        F.inception_features(_batches(images, 100), net, batch_size=7),
        F.inception_features([images], net, batch_size=1000),
        atol=1e-6,
    )
    with pytest.raises(DataError):
        F.inception_features([images[:4] * 2], net)  # not in [0, 1]
    assert F.inception_features([images[:4] * 2], net, clamp=True).shape == (4, 64)
    with pytest.raises(NumericalError):
        F.inception_features([torch.full((2, 3, 8, 8), float("nan"))], net)
    with pytest.raises(DataError):
        F.inception_features([torch.rand(2, 2, 8, 8)], net)  # 2 channels
    with pytest.raises(DataError):
        F.inception_features([], net)


def test_frechet_distance_closed_form_diagonal():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3, size=d), rng.uniform(0.1, 3, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = F.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # the same Gaussians in a rotated basis: the distance is rotation invariant
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    got_rot = F.frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert got_rot == pytest.approx(expected, rel=1e-7)
    with pytest.raises(DataError):
        F.frechet_distance(mu1, np.diag(s1), mu2[:3], np.diag(s2[:3]))


def _psd_sqrt(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_distance_of_gaussian_samples_against_the_closed_form():
    """Full, non-commuting covariances: ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), the root
    taken by eigendecomposition here (fid.py uses scipy's sqrtm of S1 S2): exact on the parameters, and
    within sampling error on the statistics of 200,000 samples of each Gaussian."""
    rng = np.random.default_rng(3)
    d = 4
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.5 * np.eye(d), b @ b.T + 0.5 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    r1 = _psd_sqrt(s1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * _psd_sqrt(r1 @ s2 @ r1))
    assert F.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    x1 = rng.multivariate_normal(mu1, s1, size=200_000)
    x2 = rng.multivariate_normal(mu2, s2, size=200_000)
    got = F.frechet_distance(*F.statistics(x1), *F.statistics(x2))
    assert got == pytest.approx(expected, rel=0.02)
    assert F.frechet_distance(*F.statistics(x1), *F.statistics(x1)) == pytest.approx(0.0, abs=1e-6)


def test_statistics_cache_round_trip(tmp_path, images):
    net = _tiny_extractor()
    mu, sigma = F.statistics(F.inception_features(_batches(images), net))
    assert mu.dtype == np.float64 and sigma.shape == (64, 64)
    path = tmp_path / "stats" / "polymnist-test-m0.safetensors"
    meta = {"dataset": "polymnist", "split": "test", "modality": "m0", "n": 400}
    F.save_statistics(path, mu, sigma, meta)
    assert sorted(os.listdir(path.parent)) == [path.name]  # no temp file left behind
    mu2, sigma2, meta2 = F.load_statistics(path)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    assert meta2 == meta

    calls = []

    def compute():
        calls.append(1)
        return mu + 1, sigma

    got, _ = F.load_or_compute_statistics(path, meta, compute)
    np.testing.assert_array_equal(got, mu)
    assert calls == []  # cached
    got, _ = F.load_or_compute_statistics(path, {**meta, "n": 10000}, compute)
    np.testing.assert_array_equal(got, mu + 1)
    assert calls == [1]  # stale meta -> recomputed and saved
    assert F.load_statistics(path)[2]["n"] == 10000

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError):
        F.load_statistics(bad)
    with pytest.raises(DataError):
        F.load_statistics(tmp_path / "missing.safetensors")


# --------------------------------------------------------------------------------------
# Finding the weights
# --------------------------------------------------------------------------------------


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """Empty env-var folder and hub folder; any download attempt fails the test."""
    env_dir, hub_dir = tmp_path / "env", tmp_path / "hub"
    env_dir.mkdir()
    hub_dir.mkdir()
    monkeypatch.setenv(F.ENV_VAR, str(env_dir))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub_dir))

    def no_download(*a, **k):
        raise AssertionError("tried to download")

    import pytorch_fid.inception

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url", no_download)
    return env_dir, hub_dir


def test_missing_weights_one_line_error(no_weights, monkeypatch, images):
    env_dir, hub_dir = no_weights
    for unset_env in (False, True):
        if unset_env:
            monkeypatch.delenv(F.ENV_VAR)
        with pytest.raises(MMVAEError) as e:
            F.find_inception_weights(None)
        msg = str(e.value)
        assert "\n" not in msg and e.value.code == 2
        assert F.WEIGHTS_FILE in msg
        assert str(hub_dir / "checkpoints") in msg
        assert "MMVAE_INCEPTION_WEIGHTS" in msg and "--inception-weights" in msg
    with pytest.raises(MMVAEError):
        F.find_inception_weights(env_dir / "nope.pth")  # an explicit path must exist
    with pytest.raises(MMVAEError):  # no silent fallback to an untrained network
        F.fid(_batches(images), _batches(images))


def test_weights_search_order(no_weights, monkeypatch, tmp_path):
    env_dir, hub_dir = no_weights
    ckpt = hub_dir / "checkpoints"
    ckpt.mkdir()
    (ckpt / F.WEIGHTS_FILE).write_bytes(b"x")
    monkeypatch.delenv(F.ENV_VAR)
    assert F.find_inception_weights(None) == ckpt / F.WEIGHTS_FILE
    (ckpt / F.WEIGHTS_SAFETENSORS).write_bytes(b"x")
    assert F.find_inception_weights(None) == ckpt / F.WEIGHTS_SAFETENSORS  # preferred
    (env_dir / F.WEIGHTS_FILE).write_bytes(b"x")
    monkeypatch.setenv(F.ENV_VAR, str(env_dir))
    assert F.find_inception_weights(None) == env_dir / F.WEIGHTS_FILE
    explicit = tmp_path / "mine.safetensors"
    explicit.write_bytes(b"x")
    assert F.find_inception_weights(str(explicit)) == explicit


# --------------------------------------------------------------------------------------
# Loading the weights: a randomly initialised FID-architecture Inception
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_inception_sd():
    torch.manual_seed(0)
    net = F._build_fid_inception_net()  # the FID architecture, default (random) init
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_random_inception_loads_from_safetensors(random_inception_sd, no_weights, tmp_path, monkeypatch):
    path = tmp_path / F.WEIGHTS_SAFETENSORS
    save_file(random_inception_sd, str(path))
    monkeypatch.setenv(F.ENV_VAR, str(path))
    model = F.load_fid_inception(None)
    assert isinstance(model, F.FIDInceptionFeatures) and not model.training
    params = dict(model.named_parameters())
    assert len(params) > 0 and not any(p.requires_grad or p.is_meta for p in params.values())
    torch.testing.assert_close(
        model.blocks[0].conv.weight, random_inception_sd["Conv2d_1a_3x3.conv.weight"], rtol=0, atol=0
    )
    torch.testing.assert_close(
        model.blocks[-2].branch_pool.bn.running_var,
        random_inception_sd["Mixed_7c.branch_pool.bn.running_var"],
        rtol=0,
        atol=0,
    )


def test_pth_is_read_weights_only_and_converts(random_inception_sd, tmp_path):
    pth = tmp_path / F.WEIGHTS_FILE
    torch.save(random_inception_sd, pth)
    sd = F.load_inception_state_dict(pth)
    assert sd.keys() == random_inception_sd.keys()
    assert all(torch.equal(sd[k], random_inception_sd[k]) for k in sd)
    out = F.convert_inception_weights(pth, tmp_path / "conv" / F.WEIGHTS_SAFETENSORS)
    sd2 = F.load_inception_state_dict(out)
    assert all(torch.equal(sd2[k], random_inception_sd[k]) for k in sd)
    with safe_open(str(out), framework="pt") as f:
        assert len(f.metadata()["source_sha256"]) == 64


def test_forward_matches_pytorch_fid(random_inception_sd):
    """Same features as pytorch_fid.inception.InceptionV3([3]) with the same weights."""
    import pytorch_fid.inception as pfi

    model = F.inception_from_state_dict(F._validate_state_dict(dict(random_inception_sd), "sd"))
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(3))  # 1 channel, small
    ours = F.inception_features([x], model)
    assert ours.shape == (1, F.FEATURE_DIM)
    # reference: pytorch-fid's own wrapper, its download replaced by our state dict (test only)
    orig = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *a, **k: dict(random_inception_sd)
    try:
        ref_model = pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
    finally:
        pfi.load_state_dict_from_url = orig
    with torch.inference_mode():
        ref = ref_model(x.repeat(1, 3, 1, 1))[0].flatten(1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def _write_pickle_bomb(path, marker):
    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # would create `marker` if unpickled freely

    with open(path, "wb") as f:
        pickle.dump({"Conv2d_1a_3x3.conv.weight": Evil()}, f, protocol=2)


def test_wrong_weights_files_give_clear_errors(random_inception_sd, tmp_path):
    cases = {}
    p = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(3)}, str(p))
    cases[p] = "missing keys"
    p = tmp_path / "shape.safetensors"
    sd = dict(random_inception_sd)
    sd["fc.weight"] = torch.zeros(10, 2048)
    save_file(sd, str(p))
    cases[p] = "fc.weight"
    p = tmp_path / "garbage.pth"
    p.write_bytes(os.urandom(256))
    cases[p] = "weights-only"
    p = tmp_path / "garbage.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    cases[p] = "safetensors"
    p = tmp_path / "weights.onnx"
    p.write_bytes(b"x")
    cases[p] = "unsupported"
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pth"
    _write_pickle_bomb(p, marker)
    cases[p] = "weights-only"
    for path, needle in cases.items():
        with pytest.raises(MMVAEError) as e:
            F.load_inception_state_dict(path)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and needle in msg, msg
    assert not marker.exists()  # the pickle was never executed
