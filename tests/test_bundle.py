"""Bundles round-trip and refuse tampered, corrupted or incompatible folders."""

import json

import pytest
import torch

from mmvae_cli import bundle
from mmvae_cli.errors import BundleError
from mmvae_cli.model import ModalitySpec, ModelConfig, MultimodalVAE
from mmvae_cli.model_io import load_model, save_bundle


def _model():
    torch.manual_seed(0)
    cfg = ModelConfig([ModalitySpec("a", [6]), ModalitySpec("b", [1, 28, 28])], latent_dim=4, fusion="mopoe", hidden=16)
    return MultimodalVAE(cfg)


def _save(tmp_path):
    model = _model()
    manifest = bundle.new_manifest("mmvae", model=model.config.to_dict(), dataset={"name": "toy"})
    save_bundle(tmp_path, model, manifest)
    return model


def test_round_trip(tmp_path):
    model = _save(tmp_path)
    loaded, manifest = load_model(tmp_path)
    assert manifest["model"]["fusion"] == "mopoe"
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert not list(tmp_path.glob("*.tmp"))


def test_tampered_weights_rejected(tmp_path):
    _save(tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        load_model(tmp_path)


def test_corrupted_manifest_and_versions(tmp_path):
    _save(tmp_path)
    m = tmp_path / "manifest.json"
    good = json.loads(m.read_text())
    m.write_text("{not json")
    with pytest.raises(BundleError, match="corrupted manifest"):
        load_model(tmp_path)
    m.write_text(json.dumps({**good, "format_version": 99}))
    with pytest.raises(BundleError, match="format version"):
        load_model(tmp_path)
    m.write_text(json.dumps({**good, "kind": "classifier"}))
    with pytest.raises(BundleError, match="expected 'mmvae'"):
        load_model(tmp_path)
    with pytest.raises(BundleError, match="no such run"):
        load_model(tmp_path / "nope")


def test_incompatible_architecture_rejected(tmp_path):
    _save(tmp_path)
    m = tmp_path / "manifest.json"
    manifest = json.loads(m.read_text())
    manifest["model"]["latent_dim"] = 8
    m.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="do not fit"):
        load_model(tmp_path)


def test_optimizer_state_round_trip():
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss, _ = model({"a": torch.randn(5, 6), "b": torch.rand(5, 1, 28, 28)})
    loss.backward()
    opt.step()
    tensors, meta = bundle.flatten_optimizer(opt)
    meta = json.loads(json.dumps(meta))
    opt2 = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt2.load_state_dict(bundle.unflatten_optimizer(tensors, meta))
    for a, b in zip(opt.state.values(), opt2.state.values()):
        for k in a:
            assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k]))


def test_staged_files_commit_with_their_manifest(tmp_path):
    """A staged write is committed by the manifest that names it: killed before the manifest is saved,
    the old file is read; killed after it but before the file moved into place, the staged one is, and
    the next writer moves it into place and removes what else a killed writer left."""
    old, new = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    manifest = bundle.new_manifest("mmvae")
    bundle.write_weights(tmp_path, "x.safetensors", old, manifest)
    bundle.save_manifest(tmp_path, manifest)
    bundle.write_weights(tmp_path, "x.safetensors", new, manifest, staged=True)  # killed here: the old file
    assert torch.equal(bundle.read_weights(tmp_path, "x.safetensors", bundle.read_manifest(tmp_path))["w"], old["w"])
    bundle.save_manifest(tmp_path, manifest)  # killed here: the staged file
    assert torch.equal(bundle.read_weights(tmp_path, "x.safetensors", bundle.read_manifest(tmp_path))["w"], new["w"])
    (tmp_path / ".manifest.json.abc123.tmp").write_text("{")  # an atomic write cut short
    bundle.write_weights(tmp_path, "y.safetensors", new, bundle.new_manifest("mmvae"), staged=True)  # never named
    bundle.recover(tmp_path, manifest)  # the next writer tidies: the named staged file is committed
    assert torch.equal(bundle.read_weights(tmp_path, "x.safetensors", manifest)["w"], new["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "x.safetensors"]
