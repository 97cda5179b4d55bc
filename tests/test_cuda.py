"""The GPU path, where a CUDA device exists (skipped otherwise; CI has none): the same step on the GPU
and the CPU gives the same loss; data lives on the device; `train` on cuda (fp32, bf16, fp16 with its
scaler, channels-last) writes bundles that reload on the CPU; Langevin on the GPU hits a Gaussian
target's moments; evaluation runs on the device."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_cli import run, write_tiny_polymnist

from mmvae_cli.data import load_dataset
from mmvae_cli.model import ModalitySpec, ModelConfig, MultimodalVAE
from mmvae_cli.model_io import load_model
from mmvae_cli.priors.ebm.langevin import langevin
from mmvae_cli.train import place_data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_tiny_polymnist(tmp_path_factory.mktemp("cuda") / "data", n_train=64, n_test=20)


@pytest.fixture(autouse=True)
def exact_fp32():
    """Full fp32 matmuls and convolutions so GPU and CPU results compare at fp32 rounding."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("fusion,objective,k", [("mopoe", "elbo", 1), ("moe", "iwae", 3), ("poe", "mvae", 1)])
def test_loss_and_gradients_match_the_cpu(fusion, objective, k):
    torch.manual_seed(0)
    cfg = ModelConfig(
        [ModalitySpec(f"m{i}", [3, 28, 28]) for i in range(3)], latent_dim=8, fusion=fusion, objective=objective, k=k
    )
    cpu = MultimodalVAE(cfg)
    gpu = MultimodalVAE(cfg).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = {f"m{i}": torch.rand(6, 3, 28, 28) for i in range(3)}
    # the same reparameterisation noise on both devices: Normal.rsample's draws come from the CPU
    import torch.distributions.normal as normal

    real, gen = normal._standard_normal, torch.Generator().manual_seed(0)

    def cpu_drawn(shape, dtype, device):
        return torch.randn(shape, dtype=dtype, generator=gen).to(device)

    normal._standard_normal = cpu_drawn
    try:
        lc, _ = cpu(x)
        gen.manual_seed(0)
        lg, _ = gpu({m: v.cuda() for m, v in x.items()})
    finally:
        normal._standard_normal = real
    assert abs(lg.item() - lc.item()) <= 1e-4 * abs(lc.item())
    lc.backward()
    lg.backward()
    # IWAE's self-normalised weights exp(log w_k - logsumexp) amplify fp32 rounding of log-weights of
    # size ~1e4 (1e-7 relative = 1e-3 absolute): a relative gradient difference of ~1e-3 is rounding
    tol = 5e-3 if objective == "iwae" else 1e-3
    for (name, pc), pg in zip(cpu.named_parameters(), gpu.parameters()):
        scale = pc.grad.abs().max().item()
        assert torch.allclose(pg.grad.cpu(), pc.grad, rtol=tol, atol=tol * 0.1 * scale), name


def test_data_is_placed_on_the_device(data_root, monkeypatch):
    monkeypatch.setenv("MMVAE_DATA", str(data_root))
    data = place_data(load_dataset("polymnist", "train"), torch.device("cuda"))
    t = next(iter(data.tensors.values()))
    assert t.is_cuda and t.dtype == torch.uint8
    batch = data.batch(torch.arange(5, device="cuda"), torch.device("cuda"))
    assert all(v.is_cuda and v.dtype == torch.float32 and 0 <= v.min() and v.max() <= 1 for v in batch.values())


@pytest.mark.parametrize("flags", [[], ["--precision", "bf16", "--channels-last"], ["--precision", "fp16"]])
def test_train_on_cuda_and_reload_on_cpu(data_root, tmp_path, capsys, flags):
    out = tmp_path / "run"
    code, _, err = run(
        [
            "train",
            "polymnist",
            "--data-root",
            data_root,
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--latent-dim",
            "8",
            "--device",
            "cuda",
            "--out",
            out,
            *flags,
        ],
        capsys,
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    losses = [h["loss"] for h in manifest["history"]]
    assert len(losses) == 2 and all(l == l and abs(l) < 1e9 for l in losses)
    model, _ = load_model(out, "cpu")
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())


def test_langevin_on_cuda_matches_a_gaussian_target():
    torch.manual_seed(0)
    mean = torch.tensor([1.0, -2.0], device="cuda")
    prec = torch.tensor([[2.0, 0.6], [0.6, 1.0]], device="cuda")

    def log_prob(z):
        d = z - mean
        return -0.5 * ((d @ prec) * d).sum(-1)

    res = langevin(log_prob, torch.zeros(20000, 2, device="cuda"), steps=400, step_size=0.3)
    z = res.z
    assert z.is_cuda
    cov = torch.cov(z.T)
    target = torch.linalg.inv(prec)
    assert torch.allclose(z.mean(0), mean, atol=0.05)
    assert torch.allclose(cov, target, atol=0.08)


def test_eval_coherence_runs_on_cuda(data_root, tmp_path, capsys):
    clf = tmp_path / "clf"
    code, _, err = run(
        [
            "classifier",
            "train",
            "polymnist",
            "--data-root",
            data_root,
            "--epochs",
            "2",
            "--device",
            "cuda",
            "--out",
            clf,
        ],
        capsys,
    )
    assert code == 0, err
    out = tmp_path / "run"
    code, _, err = run(
        [
            "train",
            "polymnist",
            "--data-root",
            data_root,
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--latent-dim",
            "8",
            "--device",
            "cuda",
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0, err
    code, text, err = run(
        [
            "eval",
            "coherence",
            out,
            "--classifiers",
            clf,
            "--device",
            "cuda",
            "--n-joint",
            "50",
            "--data-root",
            data_root,
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads(text)
    assert 0.0 <= res["joint"] <= 1.0 and set(res["conditional"]) == {"1", "2", "3", "4"}
