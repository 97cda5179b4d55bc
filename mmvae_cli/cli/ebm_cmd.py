"""`mmvae fit-ebm`: fit an energy-based prior to a trained (frozen) multimodal VAE."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click
import torch

from .. import bundle
from ..data import load_dataset
from ..ebm import EnergyConfig
from ..errors import BundleError, MMVAEError, NumericalError
from ..console import log
from ..runtime import StopFlag, read_checkpoint, write_checkpoint
from ..train import EBM_WEIGHTS, WEIGHTS, load_model, pick_device
from . import options

EBM_CHECKPOINT = "ebm-checkpoint.safetensors"   # an interrupted fit: energy, Adam, RNG, position
FIT_STATE = "ebm_fit_state"                      # its manifest key (position, sums, settings)


def _refuse_unfittable(run: Path, manifest: dict, out: Path | None, overwrite: bool) -> None:
    """One-line errors for bundles fit-ebm cannot (or must not) fit."""
    if manifest.get("parent") is not None:
        raise BundleError(f"{run} is an energy-only bundle (made by fit-ebm --out); fit its parent "
                          f"{manifest['parent'].get('path')} instead")
    if WEIGHTS not in manifest.get("files", {}):
        raise BundleError(f"{run} has no trained weights yet (no epoch finished); train it first")
    if "finished" not in manifest:
        log(f"warning: {run} has not finished training ({manifest.get('epochs_done', 0)} of "
            f"{manifest.get('settings', {}).get('train', {}).get('epochs', '?')} epochs); fitting its last saved "
            f"weights (an energy added to RUN stops `train --resume`; use --out to keep them apart)")
    section = manifest.get("ebm")
    if out is None and section:
        if section.get("training") == "joint":
            raise BundleError(f"{run}'s energy was trained jointly with the VAE; fit a post-hoc one into a new "
                              f"bundle with --out NEW_RUN")
        if not overwrite:
            raise BundleError(f"{run} already has an energy-based prior; use --overwrite to replace it "
                              f"or --out NEW_RUN to keep it")


@click.command("fit-ebm")
@click.argument("run", type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Write a new energy-only bundle that refers to RUN by path and weight fingerprint, "
                   "instead of adding the energy to RUN.")
@click.option("--objective", type=click.Choice(["ml", "exact", "sliced", "denoising"]), default=None,
              help="ml: maximum likelihood with Langevin negatives (Yuan et al. eq. 10) for the tilted prior "
                   "exp(-E(z)) p0(z); exact|sliced|denoising: score matching (EB-MVAE eq. 1) for exp(-E(z)). "
                   "Default: ml for a shared latent, denoising for --fusion none bundles.")
@click.option("--epochs", type=int, default=20, show_default=True, help="Passes over the training set.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=None,
              help="Adam learning rate of the energy. Default: 1e-4 for ml, 1e-3 for score matching (EB-MVAE).")
@click.option("--betas", type=(float, float), default=None, metavar="B1 B2",
              help="Adam betas. Default: 0.5 0.999 for ml (LEBM), 0.9 0.999 for score matching.")
@options.energy_net
@options.langevin_fit
@click.option("--persistent", is_flag=True, help="ml: continue each batch's negative chains from the previous batch's.")
@click.option("--reg", type=float, default=0.0, show_default=True,
              help="ml: weight of an L2 penalty on the energies (keeps them near 0).")
@click.option("--sigma", type=float, default=0.25, show_default=True,
              help="denoising: noise level (ours: about the smallest spread of polymnist-mini's EB-MVAE latents).")
@click.option("--projections", type=int, default=1, show_default=True, help="sliced/denoising: draws per sample.")
@click.option("--classifiers", "clf_run", type=click.Path(), default=None,
              help="Classifier bundle: report joint coherence with the base prior and with the fitted energy.")
@click.option("--n-joint", type=int, default=1000, show_default=True, help="Samples for those joint coherences.")
@click.option("--overwrite", is_flag=True, help="Replace an energy already fitted post hoc to RUN.")
@click.option("--resume", is_flag=True,
              help="Continue a fit stopped by SIGTERM/SIGUSR1 (exit code 75) from its checkpoint, with the "
                   "settings it was started with (same RUN and --out).")
@click.option("--step-delay", type=float, default=0.0, hidden=True, help="Sleep after every step (tests).")
@click.option("--log-jsonl", type=click.Path(dir_okay=False), default=None, help="Append one JSON line per epoch.")
@options.seed
@options.device
@options.data_root
@options.json_flag
def fit_ebm(run, out, objective, epochs, batch_size, lr, betas, energy_hidden, energy_layers, energy_activation,
            langevin_steps, step_size, noise_scale, clip_grad, persistent, reg, sigma, projections, clf_run, n_joint,
            overwrite, resume, step_delay, log_jsonl, seed, device, data_root, as_json):
    """Fit an energy over the latent of the trained model RUN, keeping the VAE frozen.

    \b
    Shared latent (poe, moe, mopoe): the energy-based prior p_alpha(z) ∝ exp(-E(z)) p0(z) of
    Yuan et al., fitted to the aggregate posterior by maximum likelihood (eq. 10) with negatives
    from short-run Langevin started at p0 (eq. 11). `mmvae sample RUN --prior ebm` then samples it.
    EB-MVAE (--fusion none bundles): a joint density exp(-E(z_1, ..., z_M)) over the unimodal
    latents, fitted by score matching (eq. 1); cross-generate and eval coherence then sample the
    unobserved latents by Langevin with the observed ones clamped (eq. 2-3).

    Writes ebm.safetensors and an `ebm` section into RUN's manifest (or into --out NEW_RUN).
    Prints the loss curve summary (and with --classifiers the joint coherence before and after);
    a diverging chain stops with exit code 3 and writes nothing. SIGTERM/SIGUSR1 write a checkpoint
    after the current step and exit with code 75; --resume continues it with the same result.
    """
    from ..fit_ebm import FitSettings, check_objective, fit_energy, summarise
    run = Path(run)
    outp = Path(out) if out else None
    manifest = bundle.read_manifest(run, kind="mmvae")
    if outp is not None and outp.resolve() == run.resolve():
        raise MMVAEError("--out must differ from RUN (omit --out to add the energy to RUN)")
    recorded = resumed = None                               # resumed: the --out manifest holding the checkpoint
    if resume:
        holder = manifest if outp is None else bundle.read_manifest(outp, kind="mmvae")
        resumed = holder if outp is not None else None
        recorded = holder.get(FIT_STATE)
        if not recorded:
            raise BundleError(f"{outp or run}: no interrupted fit-ebm to resume (no checkpoint); run without --resume")
        if outp is not None and holder.get("parent", {}).get("model_sha256") != \
                manifest.get("files", {}).get(WEIGHTS, {}).get("sha256"):
            raise BundleError(f"{run} changed since the interrupted fit into {outp} started; start it again "
                              f"without --resume")
    _refuse_unfittable(run, manifest, outp, overwrite or resume)
    if outp is not None and (outp / bundle.MANIFEST).exists() and not (overwrite or resume):
        raise MMVAEError(f"{outp} already holds a run; use --overwrite to replace it"
                         + (" or --resume to continue its interrupted fit" if FIT_STATE in
                            bundle.read_manifest(outp, kind="mmvae") else ""))
    try:                                                    # check the objective before loading anything
        mcfg = manifest["model"]
        fusion = mcfg["fusion"]
        z_dim = int(mcfg["latent_dim"]) * (len(mcfg["modalities"]) if fusion == "none" else 1)
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{run}: manifest has an invalid model section ({e})") from None
    if recorded is not None:                                # --resume: the interrupted fit's own settings
        try:
            rs = recorded["settings"]
            objective, langevin = rs["objective"], dict(rs["langevin"])
            s = FitSettings(**{**rs["fit"], "betas": tuple(rs["fit"]["betas"])})
            energy = EnergyConfig.from_dict(rs["energy"])
        except (KeyError, TypeError, ValueError, MMVAEError) as e:
            raise BundleError(f"{outp or run}: the fit-ebm checkpoint's settings are invalid ({e})") from None
        epochs, batch_size, seed, ml = s.epochs, s.batch_size, s.seed, objective == "ml"
        check_objective(objective, z_dim)
    else:
        objective = objective or ("denoising" if fusion == "none" else "ml")
        check_objective(objective, z_dim)
        ml = objective == "ml"
        s = FitSettings(objective=objective, epochs=epochs, batch_size=batch_size,
                        lr=lr if lr is not None else (1e-4 if ml else 1e-3),
                        betas=tuple(betas) if betas is not None else ((0.5, 0.999) if ml else (0.9, 0.999)),
                        reg=reg, persistent=persistent, sigma=sigma, projections=projections, seed=seed)
        langevin = {"steps": langevin_steps, "step_size": step_size, "noise_scale": noise_scale,
                    "clip_grad": clip_grad}
    dev = pick_device(device)
    model, manifest = load_model(run, dev)
    model.attach_ebm(None)                                  # the new energy replaces any old one
    if recorded is None:
        try:
            energy = EnergyConfig(dim=model.z_dim, hidden=energy_hidden, layers=energy_layers,
                                  activation=energy_activation or ("gelu" if ml else "softplus"))
        except MMVAEError as e:
            raise MMVAEError(f"--energy-*: {e}") from None
        if not ml and energy.activation == "leaky_relu":
            raise MMVAEError("score matching needs a twice-differentiable energy: choose --energy-activation "
                             "gelu, silu, softplus or elu")
    data = load_dataset(manifest["dataset"]["name_or_path"], "train", data_root)
    if data.fingerprint != manifest["dataset"]["fingerprint"]:
        raise MMVAEError(f"{run}: its training data changed since it was trained (fingerprint differs)")

    clf = None
    coherence = {}
    if clf_run:
        from ..classifier import load_classifiers
        from ..evaluate.coherence import joint_coherence
        clf, _ = load_classifiers(Path(clf_run), dev)
        torch.manual_seed(seed)
        coherence["base"] = joint_coherence(model.sample_prior, model, clf, n_joint)["joint"]
        log(f"joint coherence with the base prior: {coherence['base']:.4f} ({n_joint} samples)")

    log(f"fitting a {energy.layers}-layer energy ({energy.hidden} units, {energy.activation}) over {model.z_dim} "
        f"latent dimensions of {run} ({fusion}) by {objective} on {len(data)} tuples: {epochs} epochs, batch "
        f"{batch_size}, lr {s.lr:g}" + (f", Langevin {langevin_steps} steps of size {step_size:g}" if ml else ""))
    # where the energy goes: RUN's own manifest, or a new energy-only bundle that names RUN as its parent
    if outp is None:
        target, tman = run, manifest
    elif resumed is not None:
        target, tman = outp, resumed
    else:
        target = outp
        tman = {k: v for k, v in manifest.items() if k not in ("files", "evaluations", "training_state", "ebm")}
        tman.update(created=bundle.now(), versions=bundle.versions(), files={}, evaluations=[],
                    parent={"path": str(run.resolve()), "model_sha256": manifest["files"][WEIGHTS]["sha256"]})
    settings = {"objective": objective, "energy": energy.to_dict(), "langevin": langevin,
                "fit": {**asdict(s), "betas": list(s.betas)}}
    resume_from = read_checkpoint(target, EBM_CHECKPOINT, tman, FIT_STATE) if recorded is not None else None

    def checkpoint(tensors: dict, state: dict) -> None:
        target.mkdir(parents=True, exist_ok=True)
        write_checkpoint(target, EBM_CHECKPOINT, tensors, tman, FIT_STATE, {**state, "settings": settings})

    if resume_from is not None:
        log(f"resuming the fit in {target} at epoch {resume_from[1]['epoch'] + 1}")

    def on_epoch(row: dict) -> None:
        if log_jsonl:
            with open(log_jsonl, "a") as f:
                f.write(json.dumps({"event": "fit-ebm-epoch", "run": str(target), **row}) + "\n")

    stop = StopFlag()
    try:
        with stop.installed():
            ebm, history = fit_energy(model, data, energy, s, langevin, dev, log, checkpoint=checkpoint,
                                      resume=resume_from, stop=stop, step_delay=step_delay,
                                      on_epoch=on_epoch)
    except NumericalError:       # a diverged fit leaves nothing behind: no checkpoint to resume into the same fate
        if FIT_STATE in tman:
            tman.pop(FIT_STATE)
            tman.get("files", {}).pop(EBM_CHECKPOINT, None)
            if outp is not None and recorded is None and "ebm" not in tman:   # the bundle this fit started
                (outp / bundle.MANIFEST).unlink(missing_ok=True)
            else:
                bundle.save_manifest(target, tman)
            (target / EBM_CHECKPOINT).unlink(missing_ok=True)
        raise

    if clf is not None:
        torch.manual_seed(seed)
        coherence["ebm"] = joint_coherence(lambda b: model.sample_latents(b, "ebm"), model, clf, n_joint)["joint"]
        coherence["n_joint"] = n_joint
        log(f"joint coherence with the energy-based prior: {coherence['ebm']:.4f} ({n_joint} samples)")

    section = {"energy": energy.to_dict(), "density": ebm.density, "training": "post-hoc", "objective": objective,
               "langevin": langevin,
               "fit": {"epochs": epochs, "batch_size": batch_size, "lr": s.lr, "betas": list(s.betas),
                       "reg": reg, "persistent": persistent, "sigma": sigma, "projections": projections,
                       "seed": seed},
               "loss_curve": summarise(history), "history": history, "created": bundle.now()}
    if coherence:
        section["joint_coherence"] = coherence
    from . import invocation
    section["command"] = invocation()
    if outp is not None:
        for stale in (WEIGHTS, "checkpoint.safetensors"):
            (outp / stale).unlink(missing_ok=True)
    tman["ebm"] = section
    tman.pop(FIT_STATE, None)
    tman.setdefault("files", {}).pop(EBM_CHECKPOINT, None)
    bundle.write_weights(target, EBM_WEIGHTS, ebm.state_dict(), tman)
    bundle.save_manifest(target, tman)
    (target / EBM_CHECKPOINT).unlink(missing_ok=True)       # after the manifest stopped naming it
    log(f"wrote {target}")
    result = {"run": str(target), "objective": objective, "density": ebm.density, "loss_curve": section["loss_curve"]}
    if coherence:
        result["joint_coherence"] = coherence
    if as_json:
        click.echo(json.dumps(result))
        return
    lc = section["loss_curve"]
    click.echo(f"{objective} loss: first {lc['first']:.4g}  last {lc['last']:.4g}  min {lc['min']:.4g} "
               f"(epoch {lc['min_epoch']} of {lc['epochs']})")
    if coherence:
        click.echo(f"joint coherence: base prior {coherence['base']:.4f}  ->  energy-based prior "
                   f"{coherence['ebm']:.4f}  ({n_joint} samples)")

