"""A trained model as a bundle on disk: model.safetensors (the VAE), prior-KIND.safetensors (each prior
fitted to it or trained with it, priors/: ebm, gmm, flow), manifest.json (its ModelConfig, settings,
history and `priors: {KIND: {"prior": its settings, ...}}`). `load_model` rebuilds and checks it;
nothing is unpickled.

Bundles written before issue 24 kept the energy in ebm.safetensors and a top-level `ebm` section;
`upgrade` reads them as priors.ebm (the section names its file), and the next write of the energy
moves it to prior-ebm.safetensors."""

from __future__ import annotations

from pathlib import Path

import torch

from . import bundle
from .errors import BundleError, MMVAEError
from .model import ModelConfig, MultimodalVAE

CHECKPOINT = "checkpoint.safetensors"  # an interrupted or extendable training run
WEIGHTS = "model.safetensors"
PRIOR_CHECKPOINT = "prior-checkpoint.safetensors"  # an interrupted fit-prior (flow, ebm): weights, Adam, RNG
PRIOR_FIT_STATE = "prior_fit_state"  # its manifest key (kind, settings, position)
LEGACY_EBM_WEIGHTS = "ebm.safetensors"  # before issue 24: the energy's weights (read, never written)
LEGACY_EBM_CHECKPOINT = "ebm-checkpoint.safetensors"  # ... an interrupted fit-ebm
LEGACY_EBM_FIT_STATE = "ebm_fit_state"  # ... and its manifest key
LEGACY_FILES = (LEGACY_EBM_WEIGHTS, LEGACY_EBM_CHECKPOINT)


def upgrade(manifest: dict) -> dict:
    """The manifest in today's layout (in place): an `ebm` section of a bundle written before issue 24
    becomes priors.ebm as the fit job writes it ("prior": the energy's settings, "settings" and "common":
    the fit's, "fit": its statistics), with its file (ebm.safetensors) under "file"."""
    old = manifest.pop("ebm", None)
    if old:
        if not isinstance(old, dict):
            raise BundleError("manifest has an invalid ebm section")
        old = dict(old)
        prior = {k: old.pop(k) for k in ("energy", "density", "training", "langevin") if k in old}
        section = {"prior": prior, "file": LEGACY_EBM_WEIGHTS, "kind": "ebm"}
        if isinstance(old.get("fit"), dict):  # the fit's settings (its seed is every fit's common setting now)
            fit = dict(old.pop("fit"))
            section["common"] = {"seed": fit.pop("seed", 0)}
            section["settings"] = {"fit": fit, "energy": prior.get("energy"), "langevin": prior.get("langevin")}
        section["fit"] = {k: old.pop(k) for k in ("objective", "loss_curve", "history", "sigmas") if k in old}
        manifest.setdefault("priors", {})["ebm"] = {**section, **old}  # and created, command, joint_coherence
    return manifest


def trained_with_vae(section: dict) -> bool:
    """Whether a `priors` section holds a prior trained jointly with the VAE (not fitted to its weights)."""
    return isinstance(section, dict) and (section.get("prior") or {}).get("training") == "joint"


def _vae_weights(run: Path, manifest: dict) -> dict[str, torch.Tensor]:
    """The VAE's weights: this bundle's, or for a prior-only bundle (`fit-ebm --out`, `fit-prior --out`)
    the parent's, after checking that the parent's weights are still the ones the prior was fitted to."""
    parent = manifest.get("parent")
    if parent is None:
        return bundle.read_weights(run, WEIGHTS, manifest)
    ppath = Path(parent.get("path", ""))
    if not ppath.is_absolute():
        ppath = Path(run) / ppath
    pman = bundle.read_manifest(ppath, kind="mmvae")
    got = pman.get("files", {}).get(WEIGHTS, {}).get("sha256")
    if got != parent.get("model_sha256"):
        kinds = sorted(manifest.get("priors") or {"ebm": 0}, key=lambda k: k != "ebm")  # an energy before its base
        from . import priors

        raise BundleError(
            f"{run}: its parent {ppath} changed since the prior was fitted "
            f"(model.safetensors fingerprint differs); refit with `{priors.get(kinds[0]).how_to_get()}`"
        )
    return bundle.read_weights(ppath, WEIGHTS, pman)


def load_model(run: Path, device: str | torch.device = "cpu") -> tuple[MultimodalVAE, dict]:
    """Rebuild a trained model from its bundle (weights checked against the manifest), with every prior
    in its `priors` section attached; returns it and the manifest (`upgrade`d)."""
    from . import priors

    manifest = upgrade(bundle.read_manifest(run, kind="mmvae"))
    if manifest.get("parent") is not None and not manifest.get("priors"):
        state = manifest.get(PRIOR_FIT_STATE) or {}
        cmd = priors.get(state.get("kind", "ebm")).how_to_get(manifest["parent"].get("path"))
        raise BundleError(
            f"{run}: its prior is not fitted yet (the fit was interrupted); continue with `{cmd} --out {run} --resume`"
        )
    try:
        config = ModelConfig.from_dict(manifest["model"])
    except (KeyError, TypeError) as e:
        raise BundleError(f"{run}: manifest has an invalid model section ({e})") from None
    model = MultimodalVAE(config)
    bundle.load_state(model, _vae_weights(Path(run), manifest), str(run))
    model = model.to(device).eval()
    for kind, section in (manifest.get("priors") or {}).items():
        model.attach_prior(prior_from_section(Path(run), kind, section, manifest))
    model.eval()
    return model, manifest


def prior_from_section(run: Path, kind: str, section: dict, manifest: dict):
    """A prior from its manifest section `priors: {kind: ...}` and its file (prior-KIND.safetensors)."""
    from . import priors

    try:
        cls = priors.get(kind)
    except MMVAEError:
        raise BundleError(
            f"{run}: has a {kind!r} prior that this mmvae does not know (registered: {', '.join(priors.names())})"
        ) from None
    if not isinstance(section, dict) or not isinstance(section.get("prior"), dict):
        raise BundleError(f"{run}: manifest has an invalid priors.{kind} section")
    name = section.get("file", priors.prior_file(kind))
    tensors = bundle.read_weights(run, name, manifest)
    try:
        return cls.from_stored(section["prior"], tensors)
    except MMVAEError as e:
        raise BundleError(f"{run}/{name}: {e}") from None


def write_prior(run: Path, prior, manifest: dict, section: dict) -> list[str]:
    """prior-KIND.safetensors written and `section` set as the manifest's priors.KIND (manifest not saved);
    returns the files the manifest stopped naming (a bundle's older energy file), to remove once it is saved."""
    from .priors import prior_file

    old = (manifest.get("priors") or {}).get(prior.kind) or {}
    bundle.write_weights(run, prior_file(prior.kind), prior.tensors(), manifest)
    manifest.setdefault("priors", {})[prior.kind] = section
    stale = [old["file"]] if old.get("file") not in (None, prior_file(prior.kind)) else []
    for name in stale:
        manifest["files"].pop(name, None)
    return stale


def bundle_files() -> tuple[str, ...]:
    """Every file a bundle may hold, but its manifest (stale when a run is replaced)."""
    from . import priors

    return (WEIGHTS, CHECKPOINT, PRIOR_CHECKPOINT, *LEGACY_FILES, *map(priors.prior_file, priors.fittable()))


def model_files(model: MultimodalVAE, manifest: dict) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """A trained model's files: model.safetensors holds the VAE, prior-KIND.safetensors the prior trained
    with it (when there is one), whose manifest section `priors.KIND` is refreshed here (not saved).
    Also returns the files the manifest stops naming (a bundle's older energy file), to remove once the
    manifest is saved."""
    from .priors import prior_file

    state = model.state_dict()
    files = {WEIGHTS: {k: v for k, v in state.items() if not k.startswith("train_prior.")}}
    stale = []
    tp = model.train_prior
    if tp is not None:
        old = (manifest.get("priors") or {}).get(tp.kind) or {}
        manifest.setdefault("priors", {})[tp.kind] = {
            **{k: v for k, v in old.items() if k != "file"},
            "prior": tp.to_json(),
        }
        files[prior_file(tp.kind)] = tp.tensors()
        if old.get("file") not in (None, prior_file(tp.kind)):
            stale.append(old["file"])
            manifest.get("files", {}).pop(old["file"], None)
    return files, stale


def save_bundle(run: Path, model: MultimodalVAE, manifest: dict) -> None:
    """Write the model's files (`model_files`) and the manifest."""
    files, stale = model_files(model, manifest)
    for name, tensors in files.items():
        bundle.write_weights(run, name, tensors, manifest)
    bundle.save_manifest(run, manifest)
    for name in stale:
        (Path(run) / name).unlink(missing_ok=True)
