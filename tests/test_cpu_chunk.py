"""--cpu-chunk: encoders and decoders run on the CPU in calls of at most N items; the results and
gradients are those of whole calls up to float rounding, and runs from before the setting resume
with whole calls."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from mmvae_cli.commands import train as train_command
from mmvae_cli.config import RuntimeSettings, default_of
from mmvae_cli.model import ModalitySpec, ModelConfig, MultimodalVAE


def _model(chunk: int) -> MultimodalVAE:
    torch.manual_seed(0)
    specs = [ModalitySpec(f"m{i}", [3, 28, 28], "laplace", 0.75, arch="conv28") for i in range(2)]
    m = MultimodalVAE(ModelConfig(specs, latent_dim=6, fusion="moe", objective="iwae", k=2, private_dim=3))
    m.cpu_chunk = chunk
    return m


def test_chunked_calls_equal_whole_calls_with_gradients():
    torch.manual_seed(1)
    x = {f"m{i}": torch.rand(7, 3, 28, 28) for i in range(2)}
    whole, chunked = _model(0), _model(3)  # the MoE decoders see k x M x 7 = 28 items: 10 calls of <= 3
    calls = []
    chunked.decoders["m0"].register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    losses = []
    for m in (whole, chunked):
        torch.manual_seed(2)
        loss, _ = m(x)
        loss.backward()
        losses.append(loss)
    assert max(calls) == 3 and sum(calls) == 28
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-3)
    for (n, p), q in zip(whole.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4, msg=n)


def test_encoder_heads_are_concatenated_in_order():
    m = _model(2)
    x = torch.rand(5, 3, 28, 28)
    loc, raw = m.run_net(m.encoders["m0"], x)
    m.cpu_chunk = 0
    loc0, raw0 = m.run_net(m.encoders["m0"], x)
    torch.testing.assert_close(loc, loc0)
    torch.testing.assert_close(raw, raw0)


def test_runs_from_before_the_setting_resume_with_whole_calls():
    r = SimpleNamespace(runtime={})
    assert train_command._runtime(r, {"precision": "fp32", "world_size": 1}).cpu_chunk == 0
    assert train_command._runtime(r, {"precision": "fp32", "cpu_chunk": 64}).cpu_chunk == 64
    assert train_command._runtime(SimpleNamespace(runtime={"cpu_chunk": 8}), {"precision": "fp32"}).cpu_chunk == 8
    assert default_of(RuntimeSettings, "cpu_chunk") == MultimodalVAE.cpu_chunk == 320
