"""Frechet Inception Distance, computed exactly as pytorch-fid computes it.

Features are the 2048-d final average-pool activations of pytorch-fid's FID
Inception-v3 (the TensorFlow FID network ported to PyTorch, weights file
``pt_inception-2015-12-05-6726825d.pth``): images in [0, 1] are resized to
299x299 (bilinear, ``align_corners=False``), scaled to [-1, 1] and passed
through the network; the distance between the two feature Gaussians is
pytorch-fid's ``calculate_frechet_distance``.

pytorch-fid's own ``InceptionV3`` constructor downloads the weights. This
module never does: it assembles the same network from pytorch-fid's
FID-specific Inception blocks, loads the weights from a local file (found by
:func:`find_inception_weights`), and refuses to run without them (no silent
fallback to an untrained network).

Weight files are never unpickled. ``.safetensors`` is preferred; the official
``.pth`` is read only through :func:`_load_pth_weights_only` (PyTorch's
restricted ``weights_only`` loader, which cannot execute code), and
:func:`convert_inception_weights` turns it into ``.safetensors`` once.

Reference statistics of a real split can be cached with
:func:`save_statistics` / :func:`load_statistics` (or
:func:`load_or_compute_statistics`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..bundle import atomic_write_bytes
from ..errors import DataError, MMVAEError, NumericalError

#: File name pytorch-fid downloads into torch hub's checkpoint folder.
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
#: The same weights converted with :func:`convert_inception_weights`.
WEIGHTS_SAFETENSORS = "pt_inception-2015-12-05-6726825d.safetensors"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILE
ENV_VAR = "MMVAE_INCEPTION_WEIGHTS"
FEATURE_DIM = 2048
INCEPTION_SIZE = 299

_STATS_FORMAT = "mmvae-fid-statistics"
_STATS_VERSION = "1"

Extractor = Callable[[torch.Tensor], torch.Tensor]


def _one_line(text: object, limit: int = 240) -> str:
    """Collapse an exception message to a single short line."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


# --------------------------------------------------------------------------------------
# Finding the weights
# --------------------------------------------------------------------------------------


def hub_weights_path() -> Path:
    """Where pytorch-fid's download would put the weights: ``<torch hub>/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def _resolve(p: Path) -> Path | None:
    """A weights file at `p`, or inside `p` when it is a folder (.safetensors preferred)."""
    if p.is_dir():
        for name in (WEIGHTS_SAFETENSORS, WEIGHTS_FILE):
            if (p / name).is_file():
                return p / name
        return None
    return p if p.is_file() else None


def _not_found(where: str) -> MMVAEError:
    hub = hub_weights_path().parent
    return MMVAEError(
        f"FID Inception weights not found ({where}): download {WEIGHTS_FILE} ({WEIGHTS_URL}) "
        f"and put it in {hub}/, or point --inception-weights or ${ENV_VAR} at it "
        f"(the .pth or its converted .safetensors, or a folder holding one)"
    )


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The local FID Inception weights file.

    Looks at, in order: `path` (the ``--inception-weights`` value), then
    ``$MMVAE_INCEPTION_WEIGHTS``, then torch hub's cache where pytorch-fid
    would have downloaded it. A folder is searched for
    ``pt_inception-2015-12-05-6726825d.safetensors`` then ``.pth``. An
    explicitly given path (option or variable) that holds no weights is an
    error rather than silently falling through to another file. Never
    downloads anything.
    """
    if path is not None and str(path) != "":
        p = Path(path).expanduser()
        found = _resolve(p)
        if found is None:
            raise _not_found(f"--inception-weights {p} does not exist or holds no weights file")
        return found
    env = os.environ.get(ENV_VAR, "")
    if env:
        p = Path(env).expanduser()
        found = _resolve(p)
        if found is None:
            raise _not_found(f"${ENV_VAR}={p} does not exist or holds no weights file")
        return found
    hub_dir = hub_weights_path().parent
    found = _resolve(hub_dir)
    if found is None:
        raise _not_found(f"no --inception-weights, ${ENV_VAR} unset, nothing in {hub_dir}")
    return found


# --------------------------------------------------------------------------------------
# Loading the weights (never unpickling)
# --------------------------------------------------------------------------------------


def _build_fid_inception_net() -> nn.Module:
    """pytorch-fid's FID Inception-v3 architecture, without weights and without downloading.

    Mirrors ``pytorch_fid.inception.fid_inception_v3`` minus its
    ``load_state_dict_from_url`` call: torchvision's Inception-v3 (1008
    classes, no aux head, no weight init) with the FID-specific blocks that
    pytorch-fid ships. Build it under ``torch.device("meta")`` to get the
    structure for free, then load real tensors with ``assign=True``.
    """
    import torchvision
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        net = _build_fid_inception_net()
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _load_pth_weights_only(path: Path) -> object:
    # SECURITY: the ONLY place this project reads a pickle-based file. torch.load with
    # weights_only=True uses PyTorch's restricted unpickler: it rebuilds tensors, numbers,
    # strings and (Ordered)dicts/lists and refuses to import or call anything else, so a
    # crafted .pth cannot execute code. Never remove weights_only=True; prefer .safetensors
    # (see convert_inception_weights) so even this restricted path is not needed.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, not a torch file, or refused by the safe loader
        raise MMVAEError(
            f"{path}: cannot read as a weights-only PyTorch state dict ({type(e).__name__}: {_one_line(e, 160)})"
        ) from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:
        raise MMVAEError(
            f"{path}: not a readable .safetensors file ({type(e).__name__}: {_one_line(e, 160)})"
        ) from None


def _validate_state_dict(obj: object, source: Path | str) -> dict[str, torch.Tensor]:
    """Check keys and shapes against the FID Inception; return float32 tensors."""
    what = f"{source}: not pytorch-fid's FID Inception weights"
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise MMVAEError(f"{what} (expected a state dict, got {type(obj).__name__})")
    expected = _expected_shapes()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in obj and k not in optional]
    unexpected = [k for k in obj if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
        raise MMVAEError(f"{what} ({'; '.join(parts)})")
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise MMVAEError(f"{what} ({k} is a {type(v).__name__}, not a tensor)")
        if tuple(v.shape) != expected[k]:
            raise MMVAEError(f"{what} ({k} has shape {tuple(v.shape)}, expected {expected[k]})")
        if k in optional:
            out[k] = v.to(torch.long)
            continue
        if not v.is_floating_point():
            raise MMVAEError(f"{what} ({k} has dtype {v.dtype}, expected floating point)")
        v = v.to(torch.float32)
        if not np.isfinite(v.sum().item()):  # cheap: a NaN/Inf anywhere makes the sum non-finite
            raise MMVAEError(f"{what} ({k} contains NaN or Inf)")
        out[k] = v
    for k in optional:  # BatchNorm counters: absent from old checkpoints, unused in eval mode
        out.setdefault(k, torch.zeros((), dtype=torch.long))
    return out


def load_inception_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read and validate FID Inception weights from a ``.safetensors`` or ``.pth`` file."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        obj: object = _load_safetensors(p)
    elif suffix in (".pth", ".pt"):
        obj = _load_pth_weights_only(p)
    else:
        raise MMVAEError(
            f"{p}: unsupported Inception weights format '{p.suffix}' (use .safetensors or the official .pth)"
        )
    return _validate_state_dict(obj, p)


def convert_inception_weights(pth: str | os.PathLike, out_safetensors: str | os.PathLike) -> Path:
    """Convert the official ``.pth`` (read weights-only) to ``.safetensors``, once.

    The keys and shapes are validated first; the sha256 of the source file is
    recorded in the output's metadata. Written atomically.
    """
    src = Path(pth)
    dst = Path(out_safetensors)
    if dst.suffix.lower() != ".safetensors":
        raise MMVAEError(f"{dst}: the converted weights file must end in .safetensors")
    if not src.is_file():
        raise MMVAEError(f"{src}: no such file (expected pytorch-fid's {WEIGHTS_FILE})")
    sd = _validate_state_dict(_load_pth_weights_only(src), src)
    digest = hashlib.sha256()
    with open(src, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    from safetensors.torch import save

    data = save(
        {k: v.contiguous() for k, v in sd.items()},
        metadata={"format": "pytorch-fid-inception", "source": src.name, "source_sha256": digest.hexdigest()},
    )
    atomic_write_bytes(dst, data)
    return dst


# --------------------------------------------------------------------------------------
# The feature extractor
# --------------------------------------------------------------------------------------


class FIDInceptionFeatures(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, 2048) pool features.

    Same computation as ``pytorch_fid.inception.InceptionV3([3],
    resize_input=True, normalize_input=True, use_fid_inception=True)``:
    bilinear resize to 299x299 (align_corners=False), scale to [-1, 1], then
    its blocks 0-3 in the same order.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.blocks = nn.Sequential(
            # block 0: input to maxpool1
            net.Conv2d_1a_3x3,
            net.Conv2d_2a_3x3,
            net.Conv2d_2b_3x3,
            nn.MaxPool2d(kernel_size=3, stride=2),
            # block 1: maxpool1 to maxpool2
            net.Conv2d_3b_1x1,
            net.Conv2d_4a_3x3,
            nn.MaxPool2d(kernel_size=3, stride=2),
            # block 2: maxpool2 to the aux classifier
            net.Mixed_5b,
            net.Mixed_5c,
            net.Mixed_5d,
            net.Mixed_6a,
            net.Mixed_6b,
            net.Mixed_6c,
            net.Mixed_6d,
            net.Mixed_6e,
            # block 3: aux classifier to the final average pool
            net.Mixed_7a,
            net.Mixed_7b,
            net.Mixed_7c,
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        return self.blocks(x).flatten(1)


def inception_from_state_dict(state_dict: dict[str, torch.Tensor]) -> FIDInceptionFeatures:
    """The FID extractor with these (already validated) weights, in eval mode, on CPU."""
    with torch.device("meta"):
        net = _build_fid_inception_net()
    net.load_state_dict(state_dict, strict=True, assign=True)
    model = FIDInceptionFeatures(net).eval()
    model.requires_grad_(False)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:  # cannot happen after a strict load; guards against an untrained network
            raise MMVAEError(f"FID Inception: {name} was not loaded from the weights file")
    return model


def load_fid_inception(
    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> FIDInceptionFeatures:
    """Find (see :func:`find_inception_weights`), validate and load the FID Inception."""
    path = find_inception_weights(weights)
    return inception_from_state_dict(load_inception_state_dict(path)).to(device)


# --------------------------------------------------------------------------------------
# Features and statistics
# --------------------------------------------------------------------------------------

_RANGE_TOL = 1e-3


def _prepare_batch(batch: object, clamp: bool) -> torch.Tensor:
    """float32 (B, 3, H, W) in [0, 1] from float [0, 1] or uint8 [0, 255], 1 or 3 channels."""
    if not isinstance(batch, torch.Tensor):
        raise DataError(f"FID: expected image batches as tensors, got {type(batch).__name__}")
    if batch.dim() != 4:
        raise DataError(f"FID: expected image batches of shape (B, C, H, W), got {tuple(batch.shape)}")
    if batch.dtype == torch.uint8:
        x = batch.float() / 255.0  # what pytorch-fid's ToTensor does to image files
    elif batch.is_floating_point():
        x = batch.float()
        if not torch.isfinite(x).all():
            raise NumericalError("FID: images contain NaN or Inf")
        if not clamp and x.numel() and (x.min() < -_RANGE_TOL or x.max() > 1 + _RANGE_TOL):
            raise DataError(f"FID: float images must lie in [0, 1], got [{x.min().item():.3g}, {x.max().item():.3g}]")
        x = x.clamp(0.0, 1.0)
    else:
        raise DataError(f"FID: unsupported image dtype {batch.dtype} (use float in [0, 1] or uint8)")
    c = x.shape[1]
    if c == 1:
        x = x.expand(-1, 3, -1, -1)
    elif c != 3:
        raise DataError(f"FID: images need 1 or 3 channels, got {c}")
    return x


def inception_features(
    images: Iterable[torch.Tensor],
    extractor: Extractor,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
    clamp: bool = False,
) -> np.ndarray:
    """(N, F) float32 features of all images, F = 2048 for the FID Inception.

    `images` yields (B, C, H, W) batches: float in [0, 1] (or uint8 in
    [0, 255]), C = 1 (repeated to 3 channels) or 3. Each batch is fed to
    `extractor` in chunks of at most `batch_size`. `extractor` is normally
    :func:`load_fid_inception`'s model (already on `device`); tests pass a
    tiny network instead. Float values outside [0, 1] are an error unless
    `clamp` is set.
    """
    if batch_size < 1:
        raise DataError(f"FID: batch size must be >= 1, got {batch_size}")
    if isinstance(extractor, nn.Module):
        extractor.eval()
    feats: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in images:
            x = _prepare_batch(batch, clamp)
            for chunk in x.split(batch_size):
                out = extractor(chunk.to(device))
                if out.dim() == 4 and out.shape[2:] != (1, 1):
                    out = F.adaptive_avg_pool2d(out, (1, 1))  # as pytorch-fid's get_activations
                out = out.reshape(out.shape[0], -1)
                if out.shape[0] != chunk.shape[0]:
                    raise MMVAEError(f"FID: extractor returned {out.shape[0]} rows for {chunk.shape[0]} images")
                feats.append(out.detach().to("cpu", torch.float32).numpy())
    if not feats:
        raise DataError("FID: no images")
    return np.concatenate(feats, axis=0)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of (N, F) features in float64, as pytorch-fid (np.mean, np.cov rowvar=False)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise DataError(f"FID: features must be (N, F), got shape {f.shape}")
    if f.shape[0] < 2:
        raise DataError(f"FID: need at least 2 images for a covariance, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise NumericalError("FID: features contain NaN or Inf")
    mu = np.mean(f, axis=0)
    sigma = np.atleast_2d(np.cov(f, rowvar=False))
    return mu, sigma


def _check_stats(mu: np.ndarray, sigma: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DataError(f"{what}: mean {mu.shape} and covariance {sigma.shape} do not fit together")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise NumericalError(f"{what}: statistics contain NaN or Inf")
    return mu, sigma


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance of N(mu1, sigma1) and N(mu2, sigma2): pytorch-fid's implementation.

    ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).
    """
    from pytorch_fid.fid_score import calculate_frechet_distance

    mu1, sigma1 = _check_stats(mu1, sigma1, "FID")
    mu2, sigma2 = _check_stats(mu2, sigma2, "FID")
    if mu1.shape != mu2.shape:
        raise DataError(f"FID: feature dimensions differ ({mu1.shape[0]} vs {mu2.shape[0]})")
    from scipy.linalg import LinAlgWarning

    printed = io.StringIO()
    try:
        # it prints its eps fallback (keep stdout clean) and passes scipy's deprecated `disp`; a singular
        # covariance product (fewer samples than features, features that never fire) makes scipy warn,
        # while pytorch-fid checks the root's imaginary part itself (ValueError below)
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*disp.*", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=LinAlgWarning)
            d = calculate_frechet_distance(mu1, sigma1, mu2, sigma2, eps=eps)
    except ValueError as e:  # large imaginary part of the matrix square root
        raise NumericalError(f"FID: matrix square root failed ({_one_line(e)})") from None
    if printed.getvalue().strip():
        warnings.warn(_one_line(printed.getvalue()), RuntimeWarning, stacklevel=2)
    d = float(d)
    if not np.isfinite(d):
        raise NumericalError("FID: distance is not finite")
    return d


def fid(
    images_a: Iterable[torch.Tensor],
    images_b: Iterable[torch.Tensor],
    *,
    inception_weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
    clamp: bool = False,
    extractor: Extractor | None = None,
) -> float:
    """FID between two streams of image batches (see :func:`inception_features`).

    `extractor` is FOR TESTS ONLY (the CLI never passes it): a callable
    mapping a float (B, 3, H, W) batch in [0, 1] to (B, F) features, used
    instead of the FID Inception. Without it the Inception is loaded from
    `inception_weights` / ``$MMVAE_INCEPTION_WEIGHTS`` / torch hub's cache.
    """
    if extractor is None:
        extractor = load_fid_inception(inception_weights, device)
    mu_a, s_a = statistics(inception_features(images_a, extractor, device, batch_size, clamp))
    mu_b, s_b = statistics(inception_features(images_b, extractor, device, batch_size, clamp))
    return frechet_distance(mu_a, s_a, mu_b, s_b)


# --------------------------------------------------------------------------------------
# Cached statistics
# --------------------------------------------------------------------------------------


def _normalise_meta(meta: dict | None) -> dict:
    return json.loads(json.dumps(meta or {}, sort_keys=True, default=str))


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, meta: dict | None = None) -> Path:
    """Write (mu, sigma) and a JSON-able `meta` dict to a .safetensors file, atomically."""
    from safetensors.numpy import save

    mu, sigma = _check_stats(mu, sigma, "FID statistics")
    p = Path(path)
    data = save(
        {"mu": np.ascontiguousarray(mu), "sigma": np.ascontiguousarray(sigma)},
        metadata={
            "format": _STATS_FORMAT,
            "version": _STATS_VERSION,
            "meta": json.dumps(_normalise_meta(meta), sort_keys=True),
        },
    )
    atomic_write_bytes(p, data)
    return p


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """(mu, sigma, meta) from a file written by :func:`save_statistics`."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such FID statistics file")
    try:
        with safe_open(str(p), framework="np") as f:
            header = f.metadata() or {}
            keys = set(f.keys())
            tensors = {k: f.get_tensor(k) for k in keys & {"mu", "sigma"}}
        meta = json.loads(header.get("meta", "{}"))
    except Exception as e:
        raise DataError(f"{p}: unreadable FID statistics file ({type(e).__name__}: {_one_line(e, 160)})") from None
    if header.get("format") != _STATS_FORMAT or keys != {"mu", "sigma"}:
        raise DataError(f"{p}: not an mmvae FID statistics file")
    if header.get("version") != _STATS_VERSION:
        raise DataError(f"{p}: FID statistics format version {header.get('version')!r} is not supported")
    mu, sigma = _check_stats(tensors["mu"], tensors["sigma"], str(p))
    return mu, sigma, meta


def load_or_compute_statistics(
    path: str | os.PathLike, meta: dict, compute: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Cached reference statistics: reuse `path` if its meta equals `meta`, else compute and save.

    `meta` should identify what the statistics are of (dataset, split,
    modality, data fingerprint, number of images, weights file), so a stale
    cache is recomputed rather than reused.
    """
    p = Path(path)
    want = _normalise_meta(meta)
    if p.is_file():
        try:
            mu, sigma, have = load_statistics(p)
        except MMVAEError:
            have = None
        if have == want:
            return mu, sigma
    mu, sigma = compute()
    save_statistics(p, mu, sigma, want)
    return _check_stats(mu, sigma, "FID statistics")
