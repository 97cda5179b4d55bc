"""The post-hoc fits below the click layer (`fit-ebm`, `fit-prior`): every input checked first, then
the run created.

    request = FitRequest(...)            # what the user asked for (flags by name, None = not given)
    job = prepare_energy_fit(request)    # resolves and checks settings, bundle, output, data: writes nothing
    job.run()                            # creates (or reopens) the bundle and fits (run.Run's lifecycle)

`train` has the same shape (commands/train.py). A validation failure raises a one-line MMVAEError
before any file exists, so the corrected command is never refused for a half-made run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from . import bundle, config
from .commands.train import run_training_data
from .config import TrainConfig
from .ebm import EnergyConfig
from .errors import BundleError, MMVAEError
from .model import MultimodalVAE
from .model_io import CHECKPOINT, EBM_WEIGHTS, WEIGHTS
from .run import Run, check_log_file, check_new_output, check_tensorboard
from .runtime import pick_device

# --- fit-ebm ----------------------------------------------------------------------------------------

EBM_CHECKPOINT = "ebm-checkpoint.safetensors"  # an interrupted fit: energy, Adam, RNG, position
FIT_STATE = "ebm_fit_state"  # its manifest key (position, sums, settings)


def open_fit_run(
    target: Path,
    manifest: dict,
    r,
    *,
    create: bool,
    stale: tuple[str, ...],
    checkpoint_name: str,
    state_key: str,
    event: str,
) -> Run:
    """The Run of a post-hoc fit (fit-ebm, fit-prior): a new bundle is created first (unless resuming);
    logs per the request's --log-jsonl/--tensorboard; the fit's history lives in its own section."""
    if create and not r.resume:
        Run.create(
            target, manifest, overwrite=r.overwrite, stale=stale, checkpoint_name=checkpoint_name, state_key=state_key
        )
    return Run.reopen(
        target,
        manifest,
        checkpoint_name=checkpoint_name,
        state_key=state_key,
        event=event,
        log_jsonl=r.log_jsonl,
        tensorboard=r.tensorboard,
        history_key=None,
    )


@dataclass
class FitRequest:
    run: str
    out: str | None = None
    fit: dict = field(default_factory=dict)  # config.FitSettings fields (None = not given)
    energy: dict = field(default_factory=dict)  # config.EnergySettings fields
    langevin: dict = field(default_factory=dict)  # config.LangevinSettings fields
    classifiers: str | None = None
    n_joint: int = 1000
    overwrite: bool = False
    resume: bool = False
    log_jsonl: str | None = None
    tensorboard: str | None = None
    step_delay: float = 0.0
    device: str = "auto"
    data_root: str | None = None


def _refuse_unfittable(run: Path, manifest: dict, out: Path | None, overwrite: bool) -> None:
    """One-line errors for bundles fit-ebm cannot (or must not) fit."""
    from .console import log

    if manifest.get("parent") is not None:
        raise BundleError(
            f"{run} is an energy-only bundle (made by fit-ebm --out); fit its parent "
            f"{manifest['parent'].get('path')} instead"
        )
    if WEIGHTS not in manifest.get("files", {}):
        raise BundleError(f"{run} has no trained weights yet (no epoch finished); train it first")
    if "finished" not in manifest:
        log(
            f"warning: {run} has not finished training ({manifest.get('epochs_done', 0)} of "
            f"{manifest.get('settings', {}).get('train', {}).get('epochs', '?')} epochs); fitting its last saved "
            f"weights (an energy added to RUN stops `train --resume`; use --out to keep them apart)"
        )
    section = manifest.get("ebm")
    if out is None and section:
        if section.get("training") == "joint":
            raise BundleError(
                f"{run}'s energy was trained jointly with the VAE; fit a post-hoc one into a new "
                f"bundle with --out NEW_RUN"
            )
        if not overwrite:
            raise BundleError(
                f"{run} already has an energy-based prior; use --overwrite to replace it or --out NEW_RUN to keep it"
            )


@dataclass
class EnergyFitJob:
    """A checked post-hoc energy fit, ready to write."""

    request: FitRequest
    run_path: Path
    target: Path  # RUN itself, or the --out energy-only bundle
    tman: dict  # the target's manifest
    new_bundle: bool  # the target is a bundle this fit creates
    model: MultimodalVAE
    data: object
    fit: config.FitSettings
    energy: EnergyConfig
    langevin: dict
    device: torch.device
    clf: object = None

    def run(self) -> dict:
        """Fit, then write ebm.safetensors and the manifest's `ebm` section; the result summary."""
        from .console import log
        from .errors import NumericalError
        from .fit_ebm import fit_energy, summarise

        r, s, model = self.request, self.fit, self.model
        coherence = {}
        if self.clf is not None:
            from .evaluate.coherence import joint_coherence

            torch.manual_seed(s.seed)
            coherence["base"] = joint_coherence(model.sample_prior, model, self.clf, r.n_joint)["joint"]
            log(f"joint coherence with the base prior: {coherence['base']:.4f} ({r.n_joint} samples)")
        e = self.energy
        log(
            f"fitting a {e.layers}-layer energy ({e.hidden} units, {e.activation}) over {model.z_dim} latent "
            f"dimensions of {self.run_path} ({model.config.fusion}) by {s.objective} on {len(self.data)} tuples: "
            f"{s.epochs} epochs, batch {s.batch_size}, lr {s.lr:g}"
            + (
                f", Langevin {self.langevin['steps']} steps of size {self.langevin['step_size']:g}"
                if s.objective == "ml"
                else ""
            )
        )
        run = open_fit_run(
            self.target,
            self.tman,
            r,
            create=self.new_bundle,
            stale=(WEIGHTS, CHECKPOINT, EBM_WEIGHTS, EBM_CHECKPOINT),
            checkpoint_name=EBM_CHECKPOINT,
            state_key=FIT_STATE,
            event="fit-ebm-epoch",
        )
        run.extra_state = {
            "settings": {
                "objective": s.objective,
                "energy": e.to_dict(),
                "langevin": self.langevin,
                "fit": config.to_dict(s),
            }
        }
        if r.resume:
            log(f"resuming the fit in {self.target} at epoch {self.tman[FIT_STATE]['epoch'] + 1}")
        try:
            ebm, history = fit_energy(
                model, self.data, e, s, self.langevin, self.device, run=run, resume=r.resume, step_delay=r.step_delay
            )
        except NumericalError:  # a diverged fit leaves nothing behind: no checkpoint to resume into the same fate
            if self.new_bundle and not r.resume and "ebm" not in self.tman:
                import shutil

                shutil.rmtree(self.target, ignore_errors=True)
            elif FIT_STATE in self.tman:
                run.drop_checkpoint()
            raise
        if self.clf is not None:
            from .evaluate.coherence import joint_coherence

            torch.manual_seed(s.seed)
            coherence["ebm"] = joint_coherence(lambda b: model.sample_latents(b, "ebm"), model, self.clf, r.n_joint)[
                "joint"
            ]
            coherence["n_joint"] = r.n_joint
            log(f"joint coherence with the energy-based prior: {coherence['ebm']:.4f} ({r.n_joint} samples)")
        from .console import invocation

        section = {
            "energy": e.to_dict(),
            "density": ebm.density,
            "training": "post-hoc",
            "objective": s.objective,
            "langevin": self.langevin,
            "fit": config.to_dict(s),
            **({"sigmas": ebm.energy.sigmas.tolist()} if ebm.energy.noise_conditional else {}),
            "loss_curve": summarise(history),
            "history": history,
            "created": bundle.now(),
            "command": invocation(),
        }
        if coherence:
            section["joint_coherence"] = coherence
        self.tman["ebm"] = section
        self.tman.pop(FIT_STATE, None)
        self.tman.setdefault("files", {}).pop(EBM_CHECKPOINT, None)
        bundle.write_weights(self.target, EBM_WEIGHTS, ebm.state_dict(), self.tman)
        bundle.save_manifest(self.target, self.tman)
        (self.target / EBM_CHECKPOINT).unlink(missing_ok=True)  # after the manifest stopped naming it
        log(f"wrote {self.target}")
        result = {
            "run": str(self.target),
            "objective": s.objective,
            "density": ebm.density,
            "loss_curve": section["loss_curve"],
            "seconds": round(sum(h.get("seconds", 0.0) for h in history), 2),
        }
        if coherence:
            result["joint_coherence"] = coherence
        return result


def prepare_energy_fit(r: FitRequest) -> EnergyFitJob:
    """Check every input of `mmvae fit-ebm` (flags, bundle, output, logs, data, classifiers); writes nothing."""
    from .fit_ebm import check_objective
    from .model_io import load_model

    run = Path(r.run)
    outp = Path(r.out) if r.out else None
    check_log_file(r.log_jsonl)
    check_tensorboard(r.tensorboard)
    if r.n_joint < 1:
        raise MMVAEError(f"--n-joint must be >= 1, got {r.n_joint}")
    manifest = bundle.read_manifest(run, kind="mmvae")
    if outp is not None and outp.resolve() == run.resolve():
        raise MMVAEError("--out must differ from RUN (omit --out to add the energy to RUN)")
    holder = None  # the manifest that holds an interrupted fit
    if r.resume:
        if any(v is not None for d in (r.fit, r.energy, r.langevin) for v in d.values()):
            raise MMVAEError(
                "--resume continues the interrupted fit with the settings it started with; "
                "give no fit, energy or Langevin settings"
            )
        if outp is not None and not (outp / bundle.MANIFEST).exists():
            raise BundleError(f"{outp}: no interrupted fit-ebm to resume (no run there); run without --resume")
        holder = manifest if outp is None else bundle.read_manifest(outp, kind="mmvae")
        if not holder.get(FIT_STATE):
            raise BundleError(f"{outp or run}: no interrupted fit-ebm to resume (no checkpoint); run without --resume")
        if outp is not None and holder.get("parent", {}).get("model_sha256") != manifest.get("files", {}).get(
            WEIGHTS, {}
        ).get("sha256"):
            raise BundleError(
                f"{run} changed since the interrupted fit into {outp} started; start it again without --resume"
            )
    _refuse_unfittable(run, manifest, outp, r.overwrite or r.resume)
    if outp is not None and not r.resume:
        check_new_output(
            outp,
            r.overwrite,
            "use --resume to continue its interrupted fit"
            if (outp / bundle.MANIFEST).exists() and FIT_STATE in bundle.read_manifest(outp, kind="mmvae")
            else "choose another --out",
        )
    try:
        mcfg = manifest["model"]
        fusion = mcfg["fusion"]
        z_dim = int(mcfg["latent_dim"]) * (len(mcfg["modalities"]) if fusion == "none" else 1)
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{run}: manifest has an invalid model section ({e})") from None
    if holder is not None:  # --resume: the interrupted fit's own settings
        try:
            rs = holder[FIT_STATE]["settings"]
            s = config.from_dict(config.FitSettings, rs["fit"], "checkpoint [fit]")
            langevin = dict(rs["langevin"])
            energy = EnergyConfig.from_dict(rs["energy"])
        except (KeyError, TypeError, ValueError, MMVAEError) as e:
            raise BundleError(f"{outp or run}: the fit-ebm checkpoint's settings are invalid ({e})") from None
    else:
        s = config.resolve(config.FitSettings, r.fit).resolved(fusion)
        config.check(s)
        # flags given win over the objective's measured defaults, which win over the sections' own
        lg = config.resolve(
            config.LangevinSettings,
            r.langevin,
            base=config.LangevinSettings(**config.fit_langevin_defaults(s.objective, fusion, s.sigma)),
        )
        langevin = config.to_dict(lg)
        es = config.resolve(
            config.EnergySettings,
            r.energy,
            base=config.EnergySettings(**config.fit_energy_defaults(s.objective, fusion)),
        )
        ml = s.objective == "ml"
        energy = EnergyConfig(
            dim=z_dim,
            hidden=es.energy_hidden,
            layers=es.energy_layers,
            activation=es.energy_activation or ("gelu" if ml else "softplus"),
            noise_levels=s.noise_levels if s.objective == "ncsn" else 0,
            standardise=bool(s.standardise),
        )
        if not ml and energy.activation == "leaky_relu":
            raise MMVAEError(
                "score matching needs a twice-differentiable energy: choose --energy-activation "
                "gelu, silu, softplus or elu"
            )
    check_objective(s.objective, z_dim)
    dev = pick_device(r.device)
    clf = None
    if r.classifiers:
        from .classifier import load_classifiers

        clf, _ = load_classifiers(Path(r.classifiers), dev)
    model, manifest = load_model(run, dev)
    model.attach_ebm(None)  # the new energy replaces any old one
    train = TrainConfig.from_dict(manifest.get("settings", {}), str(run)).train
    data = run_training_data(manifest, r.data_root, train, run, "its training data changed since it was trained")
    if outp is None:  # the energy goes into RUN's own manifest
        target, tman, new = run, manifest, False
    elif holder is not None:
        target, tman, new = outp, holder, True
    else:  # a new energy-only bundle naming RUN as its parent
        target, new = outp, True
        tman = {
            k: v
            for k, v in manifest.items()
            if k not in ("files", "evaluations", "training_state", "ebm", "priors", "prior_fit_state")
        }
        tman.update(
            created=bundle.now(),
            versions=bundle.versions(),
            files={},
            evaluations=[],
            parent={"path": str(run.resolve()), "model_sha256": manifest["files"][WEIGHTS]["sha256"]},
        )
    return EnergyFitJob(r, run, target, tman, new, model, data, s, energy, langevin, dev, clf)


# --- fit-prior --------------------------------------------------------------------------------------


@dataclass
class PriorFitRequest:
    run: str
    kind: str
    out: str | None = None
    common: dict = field(default_factory=dict)  # config.PriorFitSettings fields (None = not given)
    settings: dict = field(default_factory=dict)  # every fittable kind's settings fields given (None = not)
    overwrite: bool = False
    resume: bool = False
    log_jsonl: str | None = None
    tensorboard: str | None = None
    step_delay: float = 0.0
    device: str = "auto"
    data_root: str | None = None


@dataclass
class PriorFitJob:
    """A checked fit of a prior kind (priors/) to a frozen VAE's aggregate posterior, ready to write."""

    request: PriorFitRequest
    run_path: Path
    target: Path
    tman: dict
    new_bundle: bool
    model: MultimodalVAE
    data: object
    cls: type
    common: config.PriorFitSettings
    settings: object
    device: torch.device

    def run(self) -> dict:
        """Fit, then write prior-KIND.safetensors and the manifest's `priors: {KIND: ...}`; the result."""
        from .console import invocation, log
        from .fit_ebm import ExpertBank
        from .model_io import PRIOR_CHECKPOINT, PRIOR_FIT_STATE
        from .priors import prior_file

        r, kind, model = self.request, self.cls.kind, self.model
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        log(
            f"fitting a {kind} prior over {model.z_dim} latent dimensions of {self.run_path} "
            f"({model.config.fusion}) on {len(self.data)} tuples: {config.to_dict(self.settings)}"
        )
        torch.manual_seed(self.common.seed)
        bank = ExpertBank(model, self.data, self.device)
        run = open_fit_run(
            self.target,
            self.tman,
            r,
            create=self.new_bundle,
            stale=(WEIGHTS, CHECKPOINT, EBM_WEIGHTS, EBM_CHECKPOINT, PRIOR_CHECKPOINT, prior_file(kind)),
            checkpoint_name=PRIOR_CHECKPOINT,
            state_key=PRIOR_FIT_STATE,
            event=f"fit-prior-{kind}-epoch",
        )
        settings = {"kind": kind, "common": config.to_dict(self.common), "settings": config.to_dict(self.settings)}
        run.extra_state = {"kind": kind, "settings": settings}
        if r.resume:
            log(f"resuming the {kind} fit in {self.target} at epoch {self.tman[PRIOR_FIT_STATE]['epoch'] + 1}")
        prior, stats = self.cls.fit(bank, self.common, self.settings, run=run, resume=r.resume, step_delay=r.step_delay)
        with torch.no_grad():  # one fresh draw of the aggregate posterior, both densities
            torch.manual_seed(self.common.seed + 1)
            z = bank.sample(torch.arange(min(bank.n, 10000)).to(bank.device))
            stats["log_lik"] = float(prior.log_prob(z).mean())
            stats["base_log_lik"] = float(model.base_log_prob(z).mean())
            stats["eval_samples"] = len(z)
        section = {
            "prior": prior.to_json(),
            **settings,
            "fit": stats,
            "seconds": stats["seconds"],
            "created": bundle.now(),
            "command": invocation(),
        }
        self.tman.setdefault("priors", {})[kind] = section
        self.tman.pop(PRIOR_FIT_STATE, None)
        self.tman.setdefault("files", {}).pop(PRIOR_CHECKPOINT, None)
        bundle.write_weights(self.target, prior_file(kind), prior.tensors(), self.tman)
        bundle.save_manifest(self.target, self.tman)
        (self.target / PRIOR_CHECKPOINT).unlink(missing_ok=True)  # after the manifest stopped naming it
        log(f"wrote {self.target}")
        return {
            "run": str(self.target),
            "kind": kind,
            "prior": prior.to_json(),
            "seconds": stats["seconds"],
            "log_lik": stats["log_lik"],
            "base_log_lik": stats["base_log_lik"],
            "eval_samples": stats["eval_samples"],
            **{
                k: v
                for k, v in stats.items()
                if k not in ("history", "seconds", "log_lik", "base_log_lik", "eval_samples")
            },
        }


def prepare_prior_fit(r: PriorFitRequest) -> PriorFitJob:
    """Check every input of `mmvae fit-prior` (kind, flags, bundle, output, logs, data); writes nothing."""
    from . import priors
    from .console import log
    from .model_io import PRIOR_FIT_STATE, load_model

    fittable = priors.fittable()
    if r.kind not in fittable:
        hint = f"; {r.kind} priors come from `{priors.get(r.kind).how_to_get()}`" if r.kind in priors.names() else ""
        raise MMVAEError(f"--kind {r.kind}: fit-prior fits {', '.join(fittable)}{hint}")
    cls = priors.get(r.kind)
    mine = {f.name for f in fields(cls.settings_cls)}
    for other in fittable:
        if other == r.kind:
            continue
        for f in fields(priors.get(other).settings_cls):
            if f.name not in mine and r.settings.get(f.name) is not None:
                raise MMVAEError(f"{config.flag_name(f)} applies to --kind {other}, not {r.kind}")
    run = Path(r.run)
    outp = Path(r.out) if r.out else None
    check_log_file(r.log_jsonl)
    check_tensorboard(r.tensorboard)
    given = {k: v for k, v in r.settings.items() if k in mine}
    if not r.resume:  # flag ranges first: they need no bundle
        common = config.resolve(config.PriorFitSettings, r.common)
        settings = config.resolve(cls.settings_cls, given)
    manifest = bundle.read_manifest(run, kind="mmvae")
    if outp is not None and outp.resolve() == run.resolve():
        raise MMVAEError("--out must differ from RUN (omit --out to add the prior to RUN)")
    holder = None
    if r.resume:
        if any(v is not None for v in (*given.values(), *r.common.values())):
            raise MMVAEError(
                "--resume continues the interrupted fit with the settings it started with; give no prior settings"
            )
        if outp is not None and not (outp / bundle.MANIFEST).exists():
            raise BundleError(f"{outp}: no interrupted fit-prior to resume (no run there); run without --resume")
        holder = manifest if outp is None else bundle.read_manifest(outp, kind="mmvae")
        state = holder.get(PRIOR_FIT_STATE)
        if not state:
            raise BundleError(
                f"{outp or run}: no interrupted fit-prior to resume (no checkpoint); run without --resume"
            )
        if state.get("kind") != r.kind:
            raise MMVAEError(
                f"--resume: the interrupted fit in {outp or run} is --kind {state.get('kind')}, not {r.kind}"
            )
        if outp is not None and holder.get("parent", {}).get("model_sha256") != manifest.get("files", {}).get(
            WEIGHTS, {}
        ).get("sha256"):
            raise BundleError(
                f"{run} changed since the interrupted fit into {outp} started; start it again without --resume"
            )
    if manifest.get("parent") is not None:
        raise BundleError(
            f"{run} is a bundle made with --out (it refers to {manifest['parent'].get('path')}); fit its parent instead"
        )
    if WEIGHTS not in manifest.get("files", {}):
        raise BundleError(f"{run} has no trained weights yet (no epoch finished); train it first")
    if outp is None and r.kind in (manifest.get("priors") or {}) and not (r.overwrite or r.resume):
        raise BundleError(
            f"{run} already has a {r.kind} prior; use --overwrite to replace it or --out NEW_RUN to keep it"
        )
    if outp is None and not r.resume and manifest.get(PRIOR_FIT_STATE) and not r.overwrite:
        raise BundleError(
            f"{run} holds an interrupted {manifest[PRIOR_FIT_STATE].get('kind')} fit; continue it "
            f"with --resume or start again with --overwrite"
        )
    if outp is not None and not r.resume:
        check_new_output(
            outp,
            r.overwrite,
            "use --resume to continue its interrupted fit"
            if (outp / bundle.MANIFEST).exists() and PRIOR_FIT_STATE in bundle.read_manifest(outp, kind="mmvae")
            else "choose another --out",
        )
    if holder is not None:
        try:
            st = holder[PRIOR_FIT_STATE]["settings"]
            common = config.from_dict(config.PriorFitSettings, st["common"], "checkpoint [common]")
            settings = config.from_dict(cls.settings_cls, st["settings"], "checkpoint [settings]")
        except (KeyError, TypeError, ValueError, MMVAEError) as e:
            raise BundleError(f"{outp or run}: the fit-prior checkpoint's settings are invalid ({e})") from None
    if "finished" not in manifest:
        log(f"warning: {run} has not finished training; fitting its last saved weights")
    dev = pick_device(r.device)
    model, manifest = load_model(run, dev)
    train = TrainConfig.from_dict(manifest.get("settings", {}), str(run)).train
    data = run_training_data(manifest, r.data_root, train, run, "its training data changed since it was trained")
    n_points = len(data) * common.draws
    if getattr(settings, "components", 0) > n_points:
        raise MMVAEError(
            f"--components {settings.components}: more components than posterior samples "
            f"({n_points}); lower it or raise --draws"
        )
    if outp is None:
        target, tman, new = run, manifest, False
    elif holder is not None:
        target, tman, new = outp, holder, True
    else:
        target, new = outp, True
        tman = {
            k: v
            for k, v in manifest.items()
            if k not in ("files", "evaluations", "training_state", "ebm", "priors", PRIOR_FIT_STATE, FIT_STATE)
        }
        tman.update(
            created=bundle.now(),
            versions=bundle.versions(),
            files={},
            evaluations=[],
            parent={"path": str(run.resolve()), "model_sha256": manifest["files"][WEIGHTS]["sha256"]},
        )
    return PriorFitJob(r, run, target, tman, new, model, data, cls, common, settings, dev)
