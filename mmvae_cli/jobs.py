"""The long commands below the click layer: every input checked first, then the run created.

    request = TrainRequest(...)          # what the user asked for (flags by name, None = not given)
    job = prepare_training(request)      # resolves and checks settings, device, data, model, output: writes nothing
    job.run()                            # creates (or reopens) the bundle and trains it (run.Run's lifecycle)

`fit-ebm` has the same shape (`prepare_energy_fit`). A validation failure raises a one-line
MMVAEError before any file exists, so the corrected command is never refused for a half-made run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from . import bundle, config
from .config import RuntimeSettings, TrainConfig
from .data import load_dataset
from .ebm import EnergyConfig
from .errors import BundleError, MMVAEError
from .model import MultimodalVAE, build_config
from .model_io import CHECKPOINT, EBM_WEIGHTS, WEIGHTS, ebm_from_section
from .run import Run, check_log_file, check_new_output, check_tensorboard
from .runtime import Dist, autocast_dtype, init_distributed, pick_device, shutdown_distributed
from .train import STATE_KEY, fit, main_log


@dataclass
class TrainRequest:
    dataset: str
    out: str | None = None
    overrides: dict = field(default_factory=dict)  # settings by field name (model/train/energy/joint/langevin)
    runtime: dict = field(default_factory=dict)  # precision, compile, channels_last (None = not given)
    recipe: str | None = None
    schedule: str | None = None
    device: str = "auto"
    data_root: str | None = None
    resume: bool = False
    overwrite: bool = False
    log_jsonl: str | None = None
    tensorboard: str | None = None
    distributed: bool = False
    max_steps: int | None = None
    step_delay: float = 0.0


def default_out(dataset: str, fusion: str | None) -> Path:
    return Path(f"runs/{Path(dataset).stem}-{fusion or config.default_of(config.ModelSettings, 'fusion')}")


def training_data(name_or_path: str, root: str | None, train: config.TrainSettings):
    """The training split as the run trains on it: the data's own presence masks, then `--missing-ratio`'s
    drops (a function of the seed and the data: the same for a resumed run, fit-ebm and fit-prior)."""
    from .data.base import drop_modalities

    return drop_modalities(load_dataset(name_or_path, "train", root), train.missing_ratio, train.seed)


def run_training_data(manifest: dict, root: str | None, train: config.TrainSettings, where, changed: str):
    """A run's training split as it trained on it (`training_data`), refused when its fingerprint is not the
    manifest's (`changed`: how the one-line error says so)."""
    data = training_data(manifest["dataset"]["name_or_path"], root, train)
    if data.fingerprint != manifest["dataset"]["fingerprint"]:
        raise MMVAEError(f"{where}: {changed} (fingerprint differs)")
    return data


def missing_section(data, ratio: float) -> dict | None:
    """The manifest's `missing` entry: the ratio and how many tuples observe k modalities (None if complete)."""
    if data.present is None:
        return None
    return {
        "ratio": float(ratio),
        "observed_per_tuple": data.observed_histogram(),
        "scheme": "own presence masks, then each present modality dropped with probability ratio; "
        "a tuple left with none keeps one of its present modalities at random",
    }


def check_observed_sets(model: MultimodalVAE, data) -> None:
    """Partially observed data with MoPoE's explicit --subsets: every tuple must hold one of the subsets
    (its mixture runs over the subsets within what it observes); refused before anything is written."""
    if data.present is None or model.config.fusion != "mopoe":
        return
    cols = [data.modalities.index(n) for n in model.names]
    observed = data.present[:, cols].unique(dim=0)  # (U, M) distinct observed sets
    subsets = model.fusion.subsets
    held = ~(subsets[None, :, :] & ~observed[:, None, :]).any(-1)  # (U, S): subset within the set
    if not bool(held.any(1).all()):
        bad = observed[~held.any(1)][0]
        names = ",".join(n for n, b in zip(model.names, bad.tolist()) if b)
        raise MMVAEError(
            f"--subsets {model.config.subsets}: some tuples observe only {names}, which holds none of the "
            "mixture's subsets; add the single modalities (e.g. --subsets unimodal+full) or use all"
        )


def resolve_request(r: TrainRequest) -> TrainConfig:
    """The checked settings of a new run (no data loaded, nothing written): `train --dry-run`."""
    name = Path(r.dataset).stem if r.dataset.endswith(".safetensors") else r.dataset
    return config.resolve_train(name, r.overrides, r.recipe, r.schedule)


@dataclass
class TrainingJob:
    """A checked training run, ready to create its bundle and train."""

    request: TrainRequest
    out: Path
    cfg: TrainConfig
    model: MultimodalVAE
    data: object
    runtime: RuntimeSettings
    manifest: dict
    device: torch.device
    dist: Dist

    def run(self) -> dict:
        r, dist = self.request, self.dist
        kw = dict(
            checkpoint_name=CHECKPOINT, state_key=STATE_KEY, log_jsonl=r.log_jsonl, tensorboard=r.tensorboard, dist=dist
        )
        if r.resume:
            run = Run.reopen(self.out, self.manifest, **kw)
        else:
            run = Run.create(
                self.out,
                self.manifest,
                overwrite=r.overwrite,
                stale=(WEIGHTS, CHECKPOINT, EBM_WEIGHTS, *_prior_files()),
                **kw,
            )
            m, t = self.cfg.model, self.cfg.train
            main_log(
                dist,
                f"training {m.fusion}/{m.objective} on {self.data.name} ({len(self.data)} tuples, "
                f"{len(self.data.modalities)} modalities) for {t.epochs} epochs, batch {t.batch_size}, lr {t.lr}, "
                f"beta {m.beta}, latent {m.latent_dim}, device {self.device}, precision {self.runtime.precision}"
                f"{f', {dist.world} processes' if dist.enabled else ''}  "
                f"[recipe {self.cfg.recipe}, schedule {self.cfg.schedule}]",
            )
            if self.cfg.joint_ebm:
                e, lg, j = self.cfg.energy, self.cfg.langevin, self.cfg.joint
                main_log(
                    dist,
                    f"  with a jointly trained energy-based prior: {e.energy_layers} layers of "
                    f"{e.energy_hidden} units, Langevin {lg.steps} steps of size {lg.step_size:g}, energy lr "
                    f"{j.ebm_lr:g}, betas {tuple(j.ebm_betas)}",
                )
        manifest = fit(
            self.model,
            self.data,
            run,
            self.cfg.train,
            self.device,
            joint=self.cfg.joint,
            resume=r.resume,
            max_steps=r.max_steps,
            runtime=self.runtime,
            step_delay=r.step_delay,
            monitor=joint_monitor(self.model, self.manifest.get("history", [])),
        )
        main_log(dist, f"wrote {self.out}")
        return manifest


def _prior_files() -> tuple[str, ...]:
    """Every fitted prior kind's file and the fit-prior checkpoint (stale when a run is replaced)."""
    from . import priors
    from .model_io import PRIOR_CHECKPOINT

    return (PRIOR_CHECKPOINT, *(priors.prior_file(k) for k in priors.fittable()))


def joint_monitor(model: MultimodalVAE, history: list[dict]):
    """The divergence test of a jointly trained energy (None without one), fed the run's history so far:
    a diverging epoch raises NumericalError (exit 3) before it is saved (see ebm.DivergenceTest)."""
    if model.ebm is None or not model.ebm.joint:
        return None
    from .ebm import DivergenceTest
    from .errors import NumericalError

    test = DivergenceTest()
    for row in history:
        test.update(row)

    def monitor(row: dict) -> None:
        reason = test.update(row)
        if reason:
            raise NumericalError(reason)

    return monitor


def _runtime(r: TrainRequest, recorded: dict) -> RuntimeSettings:
    """Flags given now, else the values the run recorded, else the defaults."""
    recorded = {k: v for k, v in recorded.items() if k != "world_size"}
    if recorded:
        recorded.setdefault("cpu_chunk", 0)  # runs from before cpu_chunk ran whole calls
    base = config.from_dict(RuntimeSettings, recorded, "manifest [runtime]")
    return config.resolve(RuntimeSettings, r.runtime, base)


def _joint_section(cfg: TrainConfig, z_dim: int) -> dict:
    e, lg = cfg.energy, cfg.langevin
    energy = EnergyConfig(
        dim=z_dim, hidden=e.energy_hidden, layers=e.energy_layers, activation=e.energy_activation or "gelu"
    )
    return {
        "energy": energy.to_dict(),
        "density": "tilted",
        "training": "joint",
        "objective": "ml",
        "langevin": config.to_dict(lg),
    }


def prepare_training(r: TrainRequest) -> TrainingJob:
    """Check every input of `mmvae train` (flags, recipe, device, logs, output folder, data, model) and
    return the job; nothing is written here."""
    out = Path(r.out) if r.out else default_out(r.dataset, r.overrides.get("fusion"))
    check_log_file(r.log_jsonl)
    check_tensorboard(r.tensorboard)
    if r.max_steps is not None and r.max_steps < 1:
        raise MMVAEError(f"--max-steps must be >= 1, got {r.max_steps}")
    if r.resume:
        return _prepare_resume(r, out)
    cfg = resolve_request(r)
    rt = config.resolve(RuntimeSettings, r.runtime)
    autocast_dtype(rt.precision, pick_device(r.device))  # impossible precision/device pairs, before anything
    check_new_output(out, r.overwrite)
    dist, dev = init_distributed(r.device, required=r.distributed)
    try:
        data = training_data(r.dataset, r.data_root, cfg.train)
        torch.manual_seed(cfg.train.seed)  # the initial weights are part of the seeded run
        model = MultimodalVAE(build_config(cfg.model, data))
        check_observed_sets(model, data)
        ebm_section = None
        if cfg.joint_ebm:
            ebm_section = _joint_section(cfg, model.z_dim)
            model.attach_ebm(*ebm_from_section(ebm_section, str(out)))
            model.ebm.joint_settings = cfg.joint
        manifest = bundle.new_manifest(
            "mmvae",
            dataset={"name": data.name, "name_or_path": r.dataset, "fingerprint": data.fingerprint, "size": len(data)},
            modalities=[
                {
                    "name": m.name,
                    "kind": m.kind,
                    "shape": m.shape,
                    "likelihood": m.likelihood,
                    "scale": m.scale,
                    "rescale": m.rescale,
                }
                for m in model.config.modalities
            ],
            model=model.config.to_dict(),
            settings=cfg.to_dict(),
            seed=cfg.train.seed,
            parameters=sum(p.numel() for p in model.parameters()),
            history=[],
            runtime={**config.to_dict(rt), "world_size": dist.world},
        )
        if ebm_section is not None:
            manifest["ebm"] = ebm_section
        missing = missing_section(data, cfg.train.missing_ratio)
        if missing is not None:
            manifest["missing"] = missing
    except BaseException:
        shutdown_distributed(dist)
        raise
    return TrainingJob(r, out, cfg, model, data, rt, manifest, dev, dist)


RESUMABLE = ("epochs",)  # the only setting --resume may change (extends a finished run)


def _prepare_resume(r: TrainRequest, out: Path) -> TrainingJob:
    if not (out / bundle.MANIFEST).exists():
        raise MMVAEError(f"--resume: {out} holds no run to continue (no {bundle.MANIFEST})")
    manifest = bundle.read_manifest(out, kind="mmvae")
    if manifest.get("ebm") and manifest["ebm"].get("training") != "joint":
        raise MMVAEError(f"{out} has a post-hoc energy (fit-ebm): training cannot be resumed under it")
    if manifest.get("priors"):
        raise MMVAEError(
            f"{out} has priors fitted to its weights (fit-prior: {', '.join(manifest['priors'])}): "
            f"training cannot be resumed under them"
        )
    cfg = TrainConfig.from_dict(manifest.get("settings", {}), str(out))
    recorded = {k: v for name in config.SECTIONS for k, v in vars(getattr(cfg, name)).items()}
    recorded["prior"] = "ebm" if cfg.joint_ebm else cfg.model.prior
    changed = sorted(
        k
        for k, v in r.overrides.items()
        if v is not None and k not in RESUMABLE and (tuple(v) if isinstance(v, list) else v) != recorded.get(k)
    )
    if changed or (r.recipe and Path(r.recipe).name != cfg.recipe) or (r.schedule and r.schedule != cfg.schedule):
        what = f"--{changed[0].replace('_', '-')}" if changed else ("--recipe" if r.recipe else "--schedule")
        raise MMVAEError(
            f"{what} cannot change when resuming: --resume continues {out} with its recorded "
            "settings (only --epochs extends it)"
        )
    if STATE_KEY not in manifest:
        raise BundleError(f"{out}: no checkpoint to resume from (manifest has no {STATE_KEY})")
    epochs = r.overrides.get("epochs")
    if epochs is not None and epochs != cfg.train.epochs:
        done = int(manifest.get("epochs_done", 0))
        config.check(config.overridden(cfg.train, {"epochs": epochs}))
        if epochs < done:
            raise MMVAEError(f"--epochs {epochs}: {out} has already trained {done} epochs")
    rt = _runtime(r, manifest.get("runtime", {}))
    autocast_dtype(rt.precision, pick_device(r.device))
    dist, dev = init_distributed(r.device, required=r.distributed)
    try:
        data = run_training_data(manifest, r.data_root, cfg.train, out, "the dataset changed since this run started")
        model = MultimodalVAE(build_config(cfg.model, data))
        if manifest.get("ebm"):
            model.attach_ebm(*ebm_from_section(manifest["ebm"], str(out)))
            model.ebm.joint_settings = cfg.joint
    except BaseException:
        shutdown_distributed(dist)
        raise
    if epochs is not None and epochs != cfg.train.epochs:
        main_log(dist, f"extending {out} from {cfg.train.epochs} to {epochs} epochs")
        cfg = replace(cfg, train=config.overridden(cfg.train, {"epochs": epochs}))
        manifest["settings"] = cfg.to_dict()
        manifest.pop("finished", None)
    manifest["runtime"] = {**config.to_dict(rt), "world_size": dist.world}
    return TrainingJob(r, out, cfg, model, data, rt, manifest, dev, dist)


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
        from .cli import invocation

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
        from .cli import invocation
        from .console import log
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
