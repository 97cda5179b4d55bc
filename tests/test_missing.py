"""Partially observed tuples (issue 13): per-tuple presence masks through every fusion and objective.

Exactness: the objectives draw z = loc + scale * eps; `fixed_noise` makes eps a fixed pattern over the
latent dimensions, so a component's samples depend only on that component, never on how many
components or items the batch has. Then, on float64 linear models,

  (a) the masked objective of a batch = the mean over its tuples of the objective computed by a model
      that has only that tuple's observed modalities (the same encoder/decoder modules);
  (b) a batch whose tuples all miss one modality = the model without it, in value and gradients;
  (c) whatever absent rows hold (NaN, Inf, noise) changes neither the loss nor any gradient.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers_cli import TINY_FIT_EBM, run, write_tiny_polymnist
from safetensors.torch import load_file, save_file
from torch import nn

from mmvae_cli.data import load_dataset
from mmvae_cli.data.base import drop_modalities
from mmvae_cli.errors import DataError, MMVAEError
from mmvae_cli.model import ModalitySpec, ModelConfig, MultimodalVAE
from mmvae_cli.model_io import load_model
from mmvae_cli.objectives import elbo_terms

F64 = torch.float64
NAMES = ("a", "b", "c")
DX, DZ = 2, 2
ATOL_LOG_S = (
    2e-7  # the complete path's float32 log S (fusion.Mixture.log_prob), times beta; 0 without a mixture density
)
EPS = torch.tensor([0.37, -0.81])  # the fixed standard-normal draw, by latent dimension modulo DZ


@pytest.fixture
def fixed_noise(monkeypatch):
    """eps[..., d] = EPS[d % DZ] (period DZ: fusion none's blocks all see the same pattern)."""

    def standard_normal(shape, dtype, device):
        return EPS.repeat(shape[-1] // DZ + 1)[: shape[-1]].to(dtype=dtype, device=device).expand(shape).clone()

    monkeypatch.setattr(torch.distributions.normal, "_standard_normal", standard_normal)


class LinearHeads(nn.Module):
    """x -> (x A + a, x R + r): an encoder whose expert depends on the input."""

    def __init__(self, g):
        super().__init__()
        self.A = nn.Parameter(torch.randn(DX, DZ, generator=g, dtype=F64))
        self.R = nn.Parameter(0.3 * torch.randn(DX, DZ, generator=g, dtype=F64))
        self.a = nn.Parameter(torch.randn(DZ, generator=g, dtype=F64))
        self.r = nn.Parameter(0.3 * torch.randn(DZ, generator=g, dtype=F64))

    def forward(self, x):
        return x @ self.A + self.a, x @ self.R + self.r


def linear_model(fusion, objective, k=1, private=0, seed=0):
    """Three modalities of DX features; linear encoders and decoders (float64)."""
    g = torch.Generator().manual_seed(seed)
    specs = [ModalitySpec(n, [DX], "gaussian", 0.5 + 0.2 * i, 1.0 + i, "mlp") for i, n in enumerate(NAMES)]
    cfg = ModelConfig(specs, DZ, fusion, "all", objective, k, 1.7, hidden=4, private_dim=private)
    model = MultimodalVAE(cfg).double()
    for n in NAMES:
        model.encoders[n] = LinearHeads(g) if not private else _PrivateHeads(g, private)
        model.decoders[n] = nn.Linear(DZ + private, DX).double()
        with torch.no_grad():
            model.decoders[n].weight.copy_(torch.randn(DX, DZ + private, generator=g, dtype=F64))
            model.decoders[n].bias.copy_(torch.randn(DX, generator=g, dtype=F64))
    return model


class _PrivateHeads(nn.Module):
    """[z, w] heads for MMVAE+."""

    def __init__(self, g, dw):
        super().__init__()
        self.W = nn.Parameter(torch.randn(DX, 2 * (DZ + dw), generator=g, dtype=F64) * 0.5)

    def forward(self, x):
        h = x @ self.W
        return h.chunk(2, dim=-1)


def restricted(model, names):
    """A model of `names` only, sharing `model`'s encoders, decoders and priors."""
    c = model.config
    specs = [s for s in c.modalities if s.name in names]
    cfg = ModelConfig(
        specs, c.latent_dim, c.fusion, "all", c.objective, c.k, c.beta, hidden=4, private_dim=c.private_dim
    )
    sub = MultimodalVAE(cfg).double()
    for n in names:
        sub.encoders[n] = model.encoders[n]
        sub.decoders[n] = model.decoders[n]
        if c.private_dim:
            sub.private_priors[n] = model.private_priors[n]
    return sub


def batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, DX, generator=g, dtype=F64) for m in NAMES}


# every observed set of three modalities: abc, ab, ac, bc, a, b, c
PRESENT = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)

CASES = [
    ("poe", "elbo", 0),
    ("moe", "elbo", 0),
    ("mopoe", "elbo", 0),
    ("moe", "iwae", 0),
    ("mopoe", "iwae", 0),
    ("moe", "dreg", 0),
    ("poe", "mvae", 0),
    ("moe", "iwae", 2),  # MMVAE+
    ("none", "elbo", 0),
]


def per_tuple_reference(model, x, present):
    """Mean over tuples b of the objective of a model with only b's observed modalities, on tuple b.
    For elbo the MoPoE mixture is sampled by batch position, so tuple b is evaluated at its position
    in a batch of the same size (every row = tuple b) and its own term read out."""
    B = present.shape[0]
    values = []
    for b in range(B):
        names = [n for j, n in enumerate(NAMES) if present[b, j]]
        sub = restricted(model, names)
        if model.config.objective == "elbo":
            xb = {n: x[n][b : b + 1].expand(B, -1) for n in names}
            rec, kl, _, _ = elbo_terms(sub, xb)
            values.append(-(rec[b] - sub.config.beta * kl[b]))
        else:
            loss, _ = sub({n: x[n][b : b + 1] for n in names})
            values.append(loss)
    return torch.stack(values).mean()


@pytest.mark.parametrize("fusion, objective, private", CASES, ids=lambda v: str(v))
def test_masked_objective_is_the_mean_of_per_tuple_objectives(fusion, objective, private, fixed_noise):
    k = 3 if objective in ("iwae", "dreg") else 1
    model = linear_model(fusion, objective, k, private)
    x = batch(len(PRESENT))
    loss, _ = model(x, PRESENT)
    ref = per_tuple_reference(model, x, PRESENT)
    # the complete path subtracts log S in float32 (fusion.Mixture.log_prob): off by beta * 6e-8 at most
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=ATOL_LOG_S)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fusion, objective, private", CASES, ids=lambda v: str(v))
def test_a_modality_missing_everywhere_is_the_model_without_it(fusion, objective, private, fixed_noise):
    k = 3 if objective in ("iwae", "dreg") else 1
    model = linear_model(fusion, objective, k, private)
    x = batch(5)
    present = torch.tensor([[True, True, False]] * 5)
    loss, _ = model(x, present)
    loss.backward()
    masked = _grads(model)
    model.zero_grad(set_to_none=True)
    sub = restricted(model, ["a", "b"])
    ref, _ = sub({n: x[n] for n in ("a", "b")})
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=ATOL_LOG_S)
    full = _grads(model)
    for name, g in masked.items():
        if ".c." in name:
            assert not bool(g.abs().sum()), name  # the absent modality learns nothing
        else:
            torch.testing.assert_close(g, full[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("fill", ["nan", "inf", "noise"])
@pytest.mark.parametrize(
    "fusion, objective, private",
    [("poe", "mvae", 0), ("mopoe", "elbo", 0), ("moe", "dreg", 2), ("none", "elbo", 0), ("mopoe", "iwae", 0)],
)
def test_absent_rows_never_reach_loss_or_gradients(fusion, objective, private, fill):
    """Real mlp nets (the input reaches every weight), ordinary RNG with the same seed."""
    specs = [ModalitySpec(n, [DX], "laplace", 0.75, 1.0, "mlp") for n in NAMES]
    k = 2 if objective in ("iwae", "dreg") else 1
    torch.manual_seed(0)
    model = MultimodalVAE(ModelConfig(specs, DZ, fusion, "all", objective, k, 2.5, hidden=8, private_dim=private))
    model = model.double()
    x = batch(len(PRESENT))
    results = []
    for filler in ("zeros", fill):
        xf = {}
        for j, n in enumerate(NAMES):
            value = {
                "zeros": torch.zeros_like(x[n]),
                "nan": torch.full_like(x[n], float("nan")),
                "inf": torch.full_like(x[n], float("inf")),
                "noise": 1e6 * torch.randn_like(x[n]),
            }[filler]
            xf[n] = torch.where(PRESENT[:, j : j + 1], x[n], value)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss, _ = model(xf, PRESENT)
        loss.backward()
        assert torch.isfinite(loss)
        results.append((loss.detach(), _grads(model)))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert torch.isfinite(g1[name]).all(), name
        assert torch.equal(g0[name], g1[name]), name


def test_complete_batch_with_a_mask_equals_the_complete_path(fixed_noise):
    for fusion, objective, private in CASES:
        k = 3 if objective in ("iwae", "dreg") else 1
        model = linear_model(fusion, objective, k, private)
        x = batch(7)
        a, _ = model(x, torch.ones(7, 3, dtype=torch.bool))
        b, _ = model(x)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=ATOL_LOG_S)


# --- data ------------------------------------------------------------------------------------------


def write_partial(path, n=24, n_test=8, nan=True):
    """Own data with absent modalities: audio on every tuple, neural on two thirds, NaN where absent."""
    g = torch.Generator().manual_seed(0)
    neural = torch.randn(n + n_test, 7, generator=g)
    present = torch.arange(n + n_test) % 3 != 0
    present[n:] = True  # the test split is complete
    image = torch.rand(n + n_test, 1, 28, 28, generator=g)
    has_image = torch.arange(n + n_test) % 4 != 1
    has_image[~present] = True  # every tuple keeps at least two of the three
    has_image[n:] = True
    if nan:
        neural[~present] = float("nan")
        image[~has_image] = float("nan")
    save_file(
        {
            "audio": torch.randn(n + n_test, 12, generator=g),
            "neural": neural,
            "image": image,
            "present.neural": present,
            "present.image": has_image.to(torch.uint8),
            "label": torch.arange(n + n_test) % 4,
            "split": (torch.arange(n + n_test) >= n).long(),
        },
        str(path),
    )
    return path


def test_own_masks_load_and_absent_rows_are_zero_filled(tmp_path):
    p = write_partial(tmp_path / "events.safetensors")
    train = load_dataset(p, "train")
    assert train.modalities == ["audio", "image", "neural"]
    assert train.present is not None and train.present.shape == (24, 3)
    assert bool(train.present[:, 0].all()) and not bool(train.present[:, 2].all())
    assert not bool(torch.isnan(train.tensors["neural"]).any())
    assert bool((train.tensors["neural"][~train.present[:, 2]] == 0).all())
    assert train.observed_histogram() == {
        "1": 0,
        "2": int((~train.present).any(1).sum()),
        "3": int(train.present.all(1).sum()),
    }
    test = load_dataset(p, "test")
    assert test.present is None and len(test) == 8
    # the masks are part of the fingerprint
    q = tmp_path / "q"
    q.mkdir()
    write_partial(q / "events.safetensors", nan=False)
    assert load_dataset(q / "events.safetensors", "train").fingerprint == train.fingerprint  # absent rows unread
    t = load_file(str(p))
    t["present.neural"] = torch.ones(32, dtype=torch.bool)
    t["neural"] = torch.nan_to_num(t["neural"])
    save_file(t, str(q / "events.safetensors"))
    assert load_dataset(q / "events.safetensors", "train").fingerprint != train.fingerprint


@pytest.mark.parametrize(
    "mask, needle",
    [
        (
            {"present.audio": torch.zeros(12, dtype=torch.bool), "present.neural": torch.zeros(12, dtype=torch.bool)},
            "no modality present",
        ),
        ({"present.neural": torch.ones(11, dtype=torch.bool)}, "expected (12,)"),
        ({"present.neural": torch.ones(12)}, "float32: use bool or uint8"),
        ({"present.neural": torch.full((12,), 2, dtype=torch.uint8)}, "0 (absent) or 1 (present)"),
        ({"present.video": torch.ones(12, dtype=torch.bool)}, "names no modality"),
    ],
)
def test_bad_masks_are_one_line_errors(tmp_path, mask, needle):
    p = tmp_path / "d.safetensors"
    save_file({"audio": torch.randn(12, 3), "neural": torch.randn(12, 2), **mask}, str(p))
    with pytest.raises(DataError) as e:
        load_dataset(p, "train")
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_missing_ratio_scheme_is_seeded_and_never_empties_a_tuple(tmp_path):
    p = tmp_path / "d.safetensors"
    save_file(
        {"a": torch.randn(400, 3), "b": torch.randn(400, 2), "c": torch.randn(400, 2), "split": torch.zeros(400)},
        str(p),
    )
    data = load_dataset(p, "train")
    d1, d2, d3 = (drop_modalities(data, 0.5, s) for s in (3, 3, 4))
    assert torch.equal(d1.present, d2.present) and not torch.equal(d1.present, d3.present)
    assert bool(d1.present.any(1).all())
    frac = 1 - d1.present.float().mean().item()
    assert 0.35 < frac < 0.55  # about R, a little less: emptied tuples get one back
    assert drop_modalities(data, 0.0, 3) is data


# --- the command line --------------------------------------------------------------------------------


def train_partial(data, out, capsys, *opts, latent_dim=3):
    """`mmvae train DATA *OPTS` for one epoch (batch 8, cpu) into OUT; returns (code, stdout, stderr)."""
    args = ["--epochs", "1", "--batch-size", "8", "--latent-dim", latent_dim, "--out", out, "--device", "cpu"]
    return run(["train", data, *opts, *args], capsys)


@pytest.mark.parametrize("fusion", ["poe", "moe", "mopoe", "none"])
def test_own_partial_data_trains_with_every_fusion_and_reloads(tmp_path, fusion, capsys):
    p = write_partial(tmp_path / "events.safetensors")
    out = tmp_path / f"run-{fusion}"
    code, _, err = train_partial(p, out, capsys, "--fusion", fusion)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["missing"]["ratio"] == 0.0
    assert sum(manifest["missing"]["observed_per_tuple"].values()) == 24
    assert manifest["history"][0]["loss"] == manifest["history"][0]["loss"]  # finite, not NaN
    model, _ = load_model(out, "cpu")
    test = load_dataset(p, "test")
    x = test.batch(torch.arange(4))
    gen = model.cross_generate({"audio": x["audio"]})
    assert all(bool(torch.isfinite(v).all()) for v in gen.values())


def test_fit_ebm_for_eb_mvae_uses_complete_tuples_and_says_so(tmp_path, capsys):
    p = write_partial(tmp_path / "events.safetensors")
    out = tmp_path / "run"
    assert train_partial(p, out, capsys, "--fusion", "none", latent_dim=2)[0] == 0
    code, _, err = run(["fit-ebm", out, *TINY_FIT_EBM, "--batch-size", "4", "--device", "cpu"], capsys)
    assert code == 0, err
    n_complete = int(load_dataset(p, "train").present.all(1).sum())
    assert f"fitted on the {n_complete} complete tuples of 24" in err


def test_missing_ratio_on_polymnist_trains_records_and_resumes(tmp_path, capsys):
    root = write_tiny_polymnist(tmp_path / "data", n_train=20, n_test=10)
    common = [
        "--data-root",
        root,
        "--batch-size",
        "10",
        "--latent-dim",
        "4",
        "--missing-ratio",
        "0.5",
        "--device",
        "cpu",
    ]
    out = tmp_path / "run"
    code, _, err = run(["train", "polymnist", "--out", out, "--epochs", "2", *common], capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["train"]["missing_ratio"] == 0.5
    hist = manifest["missing"]["observed_per_tuple"]
    assert sum(hist.values()) == 20 and set(hist) == {"1", "2", "3", "4", "5"} and hist["5"] < 20
    # interrupted after one epoch and resumed: bit-identical to the uninterrupted run (the mask is seeded)
    part = tmp_path / "part"
    assert run(["train", "polymnist", "--out", part, "--epochs", "1", *common], capsys)[0] == 0
    code, _, err = run(["train", "polymnist", "--out", part, "--epochs", "2", "--resume", *common], capsys)
    assert code == 0, err
    a, _ = load_model(out, "cpu")
    b, _ = load_model(part, "cpu")
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize(
    "opts",
    [
        ["--fusion", "mopoe", "--prior", "ebm", "--energy-hidden", "8", "--langevin-steps", "2"],
        [
            "--fusion",
            "moe",
            "--objective",
            "iwae",
            "--k",
            "2",
            "--prior",
            "ebm",
            "--energy-hidden",
            "8",
            "--langevin-steps",
            "2",
        ],
        ["--fusion", "poe", "--prior", "ebm", "--energy-hidden", "8", "--langevin-steps", "2"],
        ["--fusion", "moe", "--objective", "dreg", "--k", "2", "--private-dim", "2"],
    ],
    ids=["mopoe-joint-ebm", "mmvae-joint-ebm", "mvae-joint-ebm", "mmvaeplus"],
)
def test_joint_energy_and_mmvaeplus_train_on_partial_data(tmp_path, opts, capsys):
    p = write_partial(tmp_path / "events.safetensors")
    out = tmp_path / "run"
    code, _, err = train_partial(p, out, capsys, *opts)
    assert code == 0, err
    row = json.loads((out / "manifest.json").read_text())["history"][0]
    assert all(v == v for v in row.values())  # no NaN statistic
    if "--private-dim" not in opts:
        posthoc = tmp_path / "posthoc"
        code, _, err = run(
            ["fit-ebm", out, "--out", posthoc, *TINY_FIT_EBM, "--batch-size", "4", "--device", "cpu"], capsys
        )
        assert code == 0, err


def test_mopoe_subsets_a_tuple_cannot_hold_are_refused():
    specs = [ModalitySpec(n, [DX], "gaussian", 0.5, 1.0, "mlp") for n in NAMES]
    model = MultimodalVAE(ModelConfig(specs, DZ, "mopoe", "a,b;c", "elbo", hidden=4))
    x = {n: torch.randn(2, DX) for n in NAMES}
    with pytest.raises(MMVAEError, match="observes none of the mixture's subsets"):
        model(x, torch.tensor([[True, True, False], [True, False, False]]))
    loss, _ = model(x, torch.tensor([[True, True, False], [False, False, True]]))  # {a,b} and {c}: fine
    assert torch.isfinite(loss)
