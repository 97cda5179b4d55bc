"""`mmvae train` below the click layer: every input checked first, then the run created.

    request = TrainRequest(dataset=..., ...)     # what the user asked for (flags by name, None = not given)
    job = prepare_training(request)              # resolves and checks settings, device, data, model and output
                                                 # (run.plan_run: new, restarted or resumed): writes nothing
    job.run()                                    # creates (or reopens) the bundle and trains it (train.fit)

The post-hoc fits (`fit-ebm`, `fit-prior`) have the same shape (fit_prior.py). A validation failure
raises a one-line MMVAEError before any file exists, so the corrected command is never refused for a
half-made run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import bundle, config, registry
from ..config import RuntimeSettings
from ..console import log
from ..data import load_dataset
from ..errors import BundleError, MMVAEError
from ..model import MultimodalVAE, build_config
from ..model_io import CHECKPOINT, bundle_files, trained_with_vae, upgrade
from ..recipe import TrainConfig, resolve_train
from ..run import Run, check_log_file, check_tensorboard, plan_run
from ..runtime import Dist, autocast_dtype, init_distributed, pick_device, shutdown_distributed
from ..train import STATE_KEY, fit, main_log


@dataclass
class TrainRequest:
    dataset: str
    out: str | None = None
    overrides: dict = field(default_factory=dict)  # settings by field name (model/train/energy/joint/langevin)
    runtime: dict = field(default_factory=dict)  # precision, compile, channels_last (None = not given)
    recipe: str | None = None
    schedule: str | None = None
    device: str = config.default_of(config.CommandSettings, "device")
    data_root: str | None = None
    resume: str | None = None  # None, "last" (--resume) or "auto" (--resume auto): run.plan_run
    overwrite: bool = False
    log_jsonl: str | None = None
    tensorboard: str | None = None
    distributed: bool = False
    max_steps: int | None = None
    step_delay: float = 0.0


def default_out(dataset: str, fusion: str | None, objective: str | None = None) -> Path:
    """runs/DATASET-FUSION, or runs/DATASET-MODEL for a peer model's objective (registry.Objective.model)."""
    peer = registry.OBJECTIVES[objective].model if objective in registry.OBJECTIVES else ""
    return Path(f"runs/{Path(dataset).stem}-{peer or fusion or config.default_of(config.ModelSettings, 'fusion')}")


def training_data(name_or_path: str, root: str | None, train: config.TrainSettings):
    """The training split as the run trains on it: the data's own presence masks, then `--missing-ratio`'s
    drops (a function of the seed and the data: the same for a resumed run, fit-ebm and fit-prior)."""
    from ..data.base import drop_modalities

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
    (its mixture runs over the subsets within what it observes), and a fusion that needs complete tuples
    any partial one; refused before anything is written."""
    if data.present is not None:
        config.check_partial(config.ModelSettings(fusion=model.config.fusion), f"{data.name} has partial tuples")
    if data.present is None or not model.fusion.spec.subsets:
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
    return resolve_train(name, r.overrides, r.recipe, r.schedule)


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
    action: str = "create"  # run.plan_run's: "create", "restart" (replaces a run without checkpoint) or "reopen"

    def run(self) -> dict:
        r, dist = self.request, self.dist
        kw = dict(
            checkpoint_name=CHECKPOINT, state_key=STATE_KEY, log_jsonl=r.log_jsonl, tensorboard=r.tensorboard, dist=dist
        )
        if self.action == "reopen":
            run = Run.reopen(self.out, self.manifest, **kw)
        else:
            run = Run.create(
                self.out,
                self.manifest,
                overwrite=r.overwrite or self.action == "restart",
                stale=bundle_files(),
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
        tp = self.model.train_prior  # a jointly trained energy: its divergence test sees every epoch
        monitor = tp.monitor(self.manifest.get("history", [])) if tp is not None else None
        manifest = fit(
            self.model,
            self.data,
            run,
            self.cfg.train,
            self.device,
            joint=self.cfg.joint,
            resume=self.action == "reopen",
            max_steps=r.max_steps,
            runtime=self.runtime,
            step_delay=r.step_delay,
            monitor=monitor,
        )
        main_log(dist, f"wrote {self.out}")
        return manifest


@dataclass
class FinishedRun:
    """`--resume` on a run that already trained its epochs: nothing to do, nothing written (exit 0)."""

    out: Path
    manifest: dict
    dist: Dist = field(default_factory=Dist)

    def run(self) -> dict:
        epochs = self.manifest.get("epochs_done", "its")
        log(f"{self.out} already finished ({epochs} epochs); nothing to do (--resume --epochs N trains it longer)")
        return self.manifest


def _attach_train_prior(model: MultimodalVAE, cfg: TrainConfig) -> None:
    """--prior ebm: the energy trained with the VAE (Algorithm 1) as the model's train_prior."""
    if cfg.joint_ebm:
        from ..priors.ebm.joint import joint_prior

        model.attach_prior(joint_prior(cfg, model.z_dim))


def _runtime(r: TrainRequest, recorded: dict) -> RuntimeSettings:
    """Flags given now, else the values the run recorded, else the defaults."""
    recorded = {k: v for k, v in recorded.items() if k != "world_size"}
    if recorded:
        recorded.setdefault("cpu_chunk", 0)  # runs from before cpu_chunk ran whole calls
    base = config.from_dict(RuntimeSettings, recorded, "manifest [runtime]")
    return config.resolve(RuntimeSettings, r.runtime, base)


def prepare_training(r: TrainRequest) -> TrainingJob | FinishedRun:
    """Check every input of `mmvae train` (flags, recipe, device, logs, output folder, data, model) and
    return the job; nothing is written here. The output folder and --resume decide (run.plan_run): a
    new run, the same run from its checkpoint, or, stopped before its first checkpoint, from the
    beginning with its recorded settings; a finished run needs nothing (FinishedRun)."""
    out = Path(r.out) if r.out else default_out(r.dataset, r.overrides.get("fusion"), r.overrides.get("objective"))
    check_log_file(r.log_jsonl)
    check_tensorboard(r.tensorboard)
    if r.max_steps is not None and r.max_steps < 1:
        raise MMVAEError(f"--max-steps must be >= 1, got {r.max_steps}")
    action, manifest = plan_run(out, r.resume, STATE_KEY, r.overwrite)
    if manifest is not None:
        manifest = upgrade(manifest)  # bundles written before the energy was a prior kind
    if action == "create":
        cfg = resolve_request(r)
        return _prepare_new(r, out, cfg, config.resolve(RuntimeSettings, r.runtime))
    cfg = _recorded_settings(r, out, manifest)
    epochs = r.overrides.get("epochs")
    if "finished" in manifest and (epochs is None or epochs == cfg.train.epochs):
        return FinishedRun(out, manifest)
    fitted = [k for k, s in (manifest.get("priors") or {}).items() if not trained_with_vae(s)]
    if fitted:
        raise MMVAEError(
            f"{out} has priors fitted to its weights ({', '.join(fitted)}): training cannot be resumed under them"
        )
    if action == "restart":
        cfg = _extended(cfg, epochs, 0, out)
        log(f"{out} has no checkpoint yet (stopped in its first epoch): training it from the beginning")
        return _prepare_new(r, out, cfg, _runtime(r, manifest.get("runtime", {})), restart=manifest)
    return _prepare_resume(r, out, manifest, cfg)


def _prepare_new(
    r: TrainRequest, out: Path, cfg: TrainConfig, rt: RuntimeSettings, restart: dict | None = None
) -> TrainingJob:
    """A run from its first step: new, or (`restart`: its recorded manifest) one that has no checkpoint yet."""
    autocast_dtype(rt.precision, pick_device(r.device))  # impossible precision/device pairs, before anything
    dist, dev = init_distributed(r.device, required=r.distributed)
    try:
        if restart is None:
            name_or_path = r.dataset
            data = training_data(name_or_path, r.data_root, cfg.train)
        else:
            name_or_path = restart["dataset"]["name_or_path"]
            data = run_training_data(restart, r.data_root, cfg.train, out, "the dataset changed since this run started")
        torch.manual_seed(cfg.train.seed)  # the initial weights are part of the seeded run
        model = MultimodalVAE(build_config(cfg.model, data))
        check_observed_sets(model, data)
        _attach_train_prior(model, cfg)
        manifest = bundle.new_manifest(
            "mmvae",
            dataset={
                "name": data.name,
                "name_or_path": name_or_path,
                "fingerprint": data.fingerprint,
                "size": len(data),
            },
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
        if model.train_prior is not None:
            manifest["priors"] = {model.train_prior.kind: {"prior": model.train_prior.to_json()}}
        missing = missing_section(data, cfg.train.missing_ratio)
        if missing is not None:
            manifest["missing"] = missing
    except BaseException:
        shutdown_distributed(dist)
        raise
    return TrainingJob(r, out, cfg, model, data, rt, manifest, dev, dist, "create" if restart is None else "restart")


RESUMABLE = ("epochs",)  # the only setting --resume may change (extends a finished run)


def _same_data(given: str, recorded: str) -> bool:
    """Whether DATASET names the data a run recorded (the same name, or the same file or folder)."""
    if given == recorded:
        return True
    a, b = Path(given).expanduser(), Path(recorded).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def _recorded_settings(r: TrainRequest, out: Path, manifest: dict) -> TrainConfig:
    """The settings a run recorded; a flag, recipe, schedule or DATASET that differs is refused in one line."""
    cfg = TrainConfig.from_dict(manifest.get("settings", {}), str(out))
    recorded_data = manifest.get("dataset", {}).get("name_or_path")
    if recorded_data is not None and not _same_data(r.dataset, recorded_data):
        raise MMVAEError(
            f"DATASET {r.dataset} is not the data {out} trains on ({recorded_data}): --resume continues a run "
            "with its recorded settings"
        )
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
    return cfg


def _extended(cfg: TrainConfig, epochs: int | None, done: int, out: Path) -> TrainConfig:
    """The settings with --epochs `epochs` (None: unchanged); never fewer than the `done` epochs."""
    if epochs is None or epochs == cfg.train.epochs:
        return cfg
    config.check(config.overridden(cfg.train, {"epochs": epochs}))
    if epochs < done:
        raise MMVAEError(f"--epochs {epochs}: {out} has already trained {done} epochs")
    return replace(cfg, train=config.overridden(cfg.train, {"epochs": epochs}))


def _prepare_resume(r: TrainRequest, out: Path, manifest: dict, cfg: TrainConfig) -> TrainingJob:
    if STATE_KEY not in manifest:
        raise BundleError(f"{out}: no checkpoint to resume from (manifest has no {STATE_KEY})")
    extended = _extended(cfg, r.overrides.get("epochs"), int(manifest.get("epochs_done", 0)), out)
    rt = _runtime(r, manifest.get("runtime", {}))
    autocast_dtype(rt.precision, pick_device(r.device))
    dist, dev = init_distributed(r.device, required=r.distributed)
    try:
        data = run_training_data(manifest, r.data_root, cfg.train, out, "the dataset changed since this run started")
        model = MultimodalVAE(build_config(cfg.model, data))
        _attach_train_prior(model, cfg)  # its weights: the checkpoint's
    except BaseException:
        shutdown_distributed(dist)
        raise
    if extended is not cfg:
        main_log(dist, f"extending {out} from {cfg.train.epochs} to {extended.train.epochs} epochs")
        cfg = extended
        manifest["settings"] = cfg.to_dict()
        manifest.pop("finished", None)
    manifest["runtime"] = {**config.to_dict(rt), "world_size": dist.world}
    return TrainingJob(r, out, cfg, model, data, rt, manifest, dev, dist, "reopen")
