"""Bundles: a run folder with `manifest.json` (JSON metadata) and `.safetensors` files.

    RUN/manifest.json            format, kind, dataset + fingerprint, model config, hyperparameters,
                                 seed, history, versions, files (sha256 + size), evaluations
    RUN/model.safetensors        model weights
    RUN/checkpoint.safetensors   training state: weights, optimizer, RNG, position (for --resume)

Every write is atomic (temp file in the same folder + os.replace), so a crash never
leaves a half-written file that loads. Loading checks the format version and each
file's sha256, and refuses anything else with a one-line BundleError. No pickle.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import BundleError

FORMAT = "mmvae-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


# --- atomic writes ---------------------------------------------------------------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict:
    return {"mmvae": __version__, "torch": torch.__version__, "python": platform.python_version()}


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# --- manifest + weights ----------------------------------------------------------------------------
def new_manifest(kind: str, **fields) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "created": now(),
        "versions": versions(),
        **fields,
        "files": {},
        "evaluations": [],
    }


def pending(name: str) -> str:
    """The name a staged file is written under until its manifest is saved (`write_weights(staged=True)`)."""
    return f".{name}.pending"


def write_weights(run: Path, name: str, tensors: dict[str, torch.Tensor], manifest: dict, staged: bool = False) -> None:
    """Write RUN/name atomically and record its sha256 and size in the manifest (not yet saved).

    `staged`: written as RUN/.name.pending, which `commit_staged` moves to RUN/name once the manifest
    naming it is saved; `read_weights` takes a pending file whose checksum the manifest names, so a
    process killed between the two still leaves files and manifest that agree."""
    path = Path(run) / (pending(name) if staged else name)
    atomic_save_tensors(path, tensors)
    manifest["files"][name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def commit_staged(run: Path, names) -> None:
    """Move staged files into place (after the manifest that names them was saved)."""
    for name in names:
        staged = Path(run) / pending(name)
        if staged.exists():
            os.replace(staged, Path(run) / name)


def recover(run: Path, manifest: dict) -> None:
    """Tidy a folder that a killed writer left, before writing into it again: a staged file whose
    checksum the manifest names is moved into place (its commit was cut short), other staged files and
    the atomic writers' temporary files are removed."""
    run = Path(run)
    for path in run.glob(".*"):
        if path.name.endswith(".pending") and path.is_file():
            name = path.name[1 : -len(".pending")]
            if _matches(path, manifest.get("files", {}).get(name, {})):
                os.replace(path, run / name)
            else:
                path.unlink()
        elif path.name.endswith(".tmp") and path.is_file():
            path.unlink()


def save_manifest(run: Path, manifest: dict) -> None:
    atomic_write_json(Path(run) / MANIFEST, manifest)


def read_manifest(run: Path, kind: str | None = None) -> dict:
    run = Path(run)
    path = run / MANIFEST
    if not run.exists():
        raise BundleError(f"{run}: no such run folder")
    if not path.exists():
        raise BundleError(f"{run}: not a bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: corrupted manifest ({e.__class__.__name__}: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not an mmvae manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{run}: bundle format version {manifest.get('format_version')} is not supported "
            f"by mmvae {__version__} (expects {FORMAT_VERSION})"
        )
    if kind is not None and manifest.get("kind") != kind:
        raise BundleError(f"{run}: is a {manifest.get('kind')!r} bundle, expected {kind!r}")
    return manifest


def _matches(path: Path, meta: dict) -> bool:
    return path.exists() and path.stat().st_size == meta.get("bytes") and sha256_file(path) == meta.get("sha256")


def read_weights(run: Path, name: str, manifest: dict) -> dict[str, torch.Tensor]:
    """Load RUN/name after checking it against the sha256 recorded in the manifest (or its staged file,
    when a commit was interrupted after the manifest was saved)."""
    path = Path(run) / name
    meta = manifest.get("files", {}).get(name)
    if meta is None:
        raise BundleError(f"{run}: manifest does not list {name}")
    if not _matches(path, meta):
        staged = Path(run) / pending(name)
        if _matches(staged, meta):
            path = staged
        elif not path.exists():
            raise BundleError(f"{path}: missing")
        else:
            raise BundleError(f"{path}: checksum mismatch (corrupted or modified after it was written)")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{path}: unreadable ({e})") from None


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise BundleError(f"{where}: weights do not fit the architecture in the manifest ({first})") from None


# --- optimizer state as tensors + JSON -------------------------------------------------------------
def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """optimizer.state_dict() -> (tensors, JSON-able rest): per-parameter tensors become
    'opt.<param index>.<name>', everything else (param_groups, non-tensor state) goes to JSON."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}
