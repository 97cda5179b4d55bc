"""--grouped-nets: the M image encoders and decoders as one grouped computation give the separate nets'
outputs and gradients up to float rounding, with the same parameters (bundles unchanged)."""

from __future__ import annotations

import pytest
import torch

from mmvae_cli.model import ModalitySpec, ModelConfig, MultimodalVAE
from mmvae_cli.nets import grouped
from mmvae_cli.nets.conv import Conv28Decoder, Conv28Encoder, ConvDecoder, ConvEncoder

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 28, 28), (2, 20, 24)])
def test_grouped_nets_equal_separate(shape):
    torch.manual_seed(0)
    M, B, L = 3, 4, 16
    if shape[1:] == (28, 28):
        encs, decs = [Conv28Encoder(shape[0], L) for _ in range(M)], [Conv28Decoder(shape[0], L) for _ in range(M)]
    else:
        encs, decs = [ConvEncoder(shape, L) for _ in range(M)], [ConvDecoder(shape, L) for _ in range(M)]
    assert grouped.groupable(encs, ConvEncoder) and grouped.groupable(decs, ConvDecoder)
    xs = [torch.rand(B, *shape) for _ in range(M)]
    zs = [torch.randn(B, L) for _ in range(M)]
    z = torch.randn(B, L)
    for got, want in zip(grouped.encode(encs, xs), [e(x) for e, x in zip(encs, xs)]):
        torch.testing.assert_close(got, want, **TOL)
    for got, want in zip(grouped.decode(decs, zs), [d(t) for d, t in zip(decs, zs)]):
        torch.testing.assert_close(got, want, **TOL)
    for got, want in zip(grouped.decode(decs, z), [d(z) for d in decs]):
        torch.testing.assert_close(got, want, **TOL)


def test_not_groupable_when_nets_differ():
    assert not grouped.groupable([Conv28Encoder(3, 8), Conv28Encoder(1, 8)], ConvEncoder)
    assert not grouped.groupable([Conv28Encoder(3, 8)], ConvEncoder)


@pytest.mark.parametrize(
    "kw",
    [
        dict(fusion="mopoe", objective="elbo"),
        dict(fusion="poe", objective="mvae"),
        dict(fusion="moe", objective="iwae", k=2),
        dict(fusion="moe", objective="dreg", k=2, private_dim=4, posterior="laplace", prior="laplace"),
        dict(fusion="none", objective="elbo"),
    ],
)
def test_model_loss_and_gradients_equal(kw):
    torch.manual_seed(0)
    cfg = ModelConfig([ModalitySpec(f"m{i}", [3, 28, 28]) for i in range(3)], latent_dim=8, **kw)
    model = MultimodalVAE(cfg)
    assert model.groupable == (True, True)
    x = {f"m{i}": torch.rand(5, 3, 28, 28) for i in range(3)}
    results = []
    for flag in (False, True):
        model.grouped_nets = flag
        model.zero_grad()
        torch.manual_seed(1)
        loss, _ = model(x)
        loss.backward()
        results.append((loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l1, l0, **TOL)
    assert g0.keys() == g1.keys()
    for k in g0:  # float rounding, relative to the gradient's scale (DReG's weights amplify it a little)
        assert (g1[k] - g0[k]).abs().max() <= 1e-3 * g0[k].abs().max() + 1e-6, k
    assert set(model.state_dict()) == set(MultimodalVAE(cfg).state_dict())  # bundles: the same weight names
