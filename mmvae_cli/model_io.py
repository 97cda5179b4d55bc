"""A trained model as a bundle on disk: model.safetensors (the VAE), ebm.safetensors (an energy),
prior-KIND.safetensors (each fitted prior, priors/), manifest.json (its ModelConfig, settings,
history, `ebm` and `priors: {KIND: ...}` sections). `load_model` rebuilds and checks it; nothing is
unpickled."""

from __future__ import annotations

from pathlib import Path

import torch

from . import bundle
from .ebm import LatentEBM
from .errors import BundleError, MMVAEError
from .model import ModelConfig, MultimodalVAE

CHECKPOINT = "checkpoint.safetensors"  # an interrupted or extendable training run
WEIGHTS = "model.safetensors"
EBM_WEIGHTS = "ebm.safetensors"
PRIOR_CHECKPOINT = "prior-checkpoint.safetensors"  # an interrupted fit-prior (flow): weights, Adam, RNG
PRIOR_FIT_STATE = "prior_fit_state"  # its manifest key (kind, settings, position)


def ebm_from_section(section: dict, where: str) -> tuple[LatentEBM, dict]:
    """(LatentEBM, Langevin settings) from a manifest's `ebm` section (weights not loaded)."""
    try:
        ebm = LatentEBM(section["energy"], section["density"], section.get("training") == "joint")
        return ebm, dict(section.get("langevin", {}))
    except (KeyError, TypeError) as e:
        raise BundleError(f"{where}: manifest has an invalid ebm section ({e})") from None


def _vae_weights(run: Path, manifest: dict) -> dict[str, torch.Tensor]:
    """The VAE's weights: this bundle's, or for an energy-only bundle (`fit-ebm --out`) the parent's,
    after checking that the parent's weights are still the ones the energy was fitted to."""
    parent = manifest.get("parent")
    if parent is None:
        return bundle.read_weights(run, WEIGHTS, manifest)
    ppath = Path(parent.get("path", ""))
    if not ppath.is_absolute():
        ppath = Path(run) / ppath
    pman = bundle.read_manifest(ppath, kind="mmvae")
    got = pman.get("files", {}).get(WEIGHTS, {}).get("sha256")
    if got != parent.get("model_sha256"):
        raise BundleError(
            f"{run}: its parent {ppath} changed since the energy was fitted "
            f"(model.safetensors fingerprint differs); refit with `mmvae fit-ebm`"
        )
    return bundle.read_weights(ppath, WEIGHTS, pman)


def load_model(run: Path, device: str | torch.device = "cpu") -> tuple[MultimodalVAE, dict]:
    """Rebuild a trained model from its bundle (weights checked against the manifest), with its
    energy-based prior when the manifest has an `ebm` section."""
    manifest = bundle.read_manifest(run, kind="mmvae")
    if manifest.get("parent") is not None and not manifest.get("ebm") and not manifest.get("priors"):
        if manifest.get(PRIOR_FIT_STATE):
            raise BundleError(
                f"{run}: its prior is not fitted yet (fit-prior was interrupted); continue with "
                f"`mmvae fit-prior {manifest['parent'].get('path')} --kind "
                f"{manifest[PRIOR_FIT_STATE].get('kind', 'KIND')} --out {run} --resume`"
            )
        raise BundleError(
            f"{run}: its energy is not fitted yet (fit-ebm was interrupted); continue with "
            f"`mmvae fit-ebm {manifest['parent'].get('path')} --out {run} --resume`"
        )
    try:
        config = ModelConfig.from_dict(manifest["model"])
    except (KeyError, TypeError) as e:
        raise BundleError(f"{run}: manifest has an invalid model section ({e})") from None
    model = MultimodalVAE(config)
    bundle.load_state(model, _vae_weights(Path(run), manifest), str(run))
    if manifest.get("ebm"):
        ebm, settings = ebm_from_section(manifest["ebm"], str(run))
        bundle.load_state(ebm, bundle.read_weights(run, EBM_WEIGHTS, manifest), f"{run}/{EBM_WEIGHTS}")
        model.attach_ebm(ebm, settings)
    model = model.to(device).eval()
    for kind, section in (manifest.get("priors") or {}).items():
        model.attach_prior(prior_from_section(Path(run), kind, section, manifest))
    return model, manifest


def prior_from_section(run: Path, kind: str, section: dict, manifest: dict):
    """A fitted prior from its manifest section `priors: {kind: ...}` and prior-KIND.safetensors."""
    from . import priors

    try:
        cls = priors.get(kind)
    except MMVAEError:
        raise BundleError(
            f"{run}: has a {kind!r} prior that this mmvae does not know (registered: {', '.join(priors.names())})"
        ) from None
    if not isinstance(section, dict) or not isinstance(section.get("prior"), dict):
        raise BundleError(f"{run}: manifest has an invalid priors.{kind} section")
    tensors = bundle.read_weights(run, priors.prior_file(kind), manifest)
    try:
        return cls.from_stored(section["prior"], tensors)
    except MMVAEError as e:
        raise BundleError(f"{run}/{priors.prior_file(kind)}: {e}") from None


def bundle_files(model: MultimodalVAE) -> dict[str, dict[str, torch.Tensor]]:
    """A trained model's files: model.safetensors holds the VAE, ebm.safetensors the energy (when there is one)."""
    state = model.state_dict()
    files = {WEIGHTS: {k: v for k, v in state.items() if not k.startswith("ebm.")}}
    if model.ebm is not None:
        files[EBM_WEIGHTS] = model.ebm.state_dict()
    return files


def save_bundle(run: Path, model: MultimodalVAE, manifest: dict) -> None:
    """Write the model's files (`bundle_files`) and the manifest."""
    for name, tensors in bundle_files(model).items():
        bundle.write_weights(run, name, tensors, manifest)
    bundle.save_manifest(run, manifest)
