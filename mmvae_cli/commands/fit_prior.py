"""`mmvae fit-prior RUN --kind KIND` and `mmvae fit-ebm RUN` (= `--kind ebm`): one post-hoc fit job for
every fitted prior kind (priors/: ebm, gmm, flow, ...), the VAE frozen.

    job = prepare_fit_prior(FitPriorRequest(run=..., kind=..., settings={...}))   # checks; writes nothing
    result = job.run()       # fits to the aggregate posterior (priors/bank.py), writes prior-KIND.safetensors
                             # and the manifest's priors.KIND, into RUN or a new --out bundle naming RUN

The kind supplies its settings (`settings_sections`, `resolve_settings`), its checks and its `fit`;
this job supplies what every kind shares: the bundle and output checks, the data, the run lifecycle
(checkpoints, SIGTERM/SIGUSR1 -> exit 75, --resume), --classifiers' joint coherence before and after,
and the writes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import bundle, config, priors, registry
from ..console import log
from ..errors import BundleError, MMVAEError, NumericalError
from ..model import MultimodalVAE
from ..model_io import (
    LEGACY_EBM_FIT_STATE,
    PRIOR_CHECKPOINT,
    PRIOR_FIT_STATE,
    WEIGHTS,
    bundle_files,
    load_model,
    trained_with_vae,
    upgrade,
    write_prior,
)
from ..recipe import TrainConfig
from ..run import Run, check_log_file, check_new_output, check_tensorboard
from ..runtime import pick_device

# a new bundle written with --out keeps RUN's manifest but these (they belong to RUN's own files and fits)
NOT_INHERITED = ("files", "evaluations", "training_state", "priors", "ebm", PRIOR_FIT_STATE, LEGACY_EBM_FIT_STATE)


@dataclass
class FitPriorRequest:
    run: str
    kind: str
    out: str | None = None
    common: dict = field(default_factory=dict)  # config.PriorFitSettings fields (None = not given)
    settings: dict = field(default_factory=dict)  # fields of the fittable kinds' sections (None = not given)
    classifiers: str | None = None  # a classifier bundle: joint coherence before and after the fit
    n_joint: int = config.default_of(config.EvalSettings, "fit_n_joint")
    overwrite: bool = False
    resume: str | None = None  # None, "last" (--resume) or "auto" (--resume auto): see _resume_plan
    log_jsonl: str | None = None
    tensorboard: str | None = None
    step_delay: float = 0.0
    device: str = config.default_of(config.CommandSettings, "device")
    data_root: str | None = None
    command: str = ""  # the command line, recorded in the manifest


def open_fit_run(target: Path, manifest: dict, r: FitPriorRequest, cls, create: bool) -> Run:
    """The Run of a post-hoc fit: a new bundle is created first (unless resuming); logs per the request's
    --log-jsonl/--tensorboard; the fit's history lives in its own section."""
    kw = dict(checkpoint_name=PRIOR_CHECKPOINT, state_key=PRIOR_FIT_STATE)
    if create and not r.resume:
        Run.create(target, manifest, overwrite=r.overwrite, stale=bundle_files(), **kw)
    return Run.reopen(
        target,
        manifest,
        event=cls.fit_event(),
        log_jsonl=r.log_jsonl,
        tensorboard=r.tensorboard,
        history_key=None,
        **kw,
    )


@dataclass
class FitPriorJob:
    """A checked fit of a prior kind to a frozen VAE's aggregate posterior, ready to write."""

    request: FitPriorRequest
    run_path: Path
    target: Path  # RUN itself, or the --out bundle
    tman: dict  # the target's manifest
    new_bundle: bool  # the target is a bundle this fit creates
    model: MultimodalVAE
    data: object
    cls: type
    common: config.PriorFitSettings
    settings: object  # the kind's (cls.resolve_settings)
    device: torch.device
    clf: object = None
    base_settings: object = None  # the settings of the base prior fitted here first (`_base_plan`), or None
    sources: dict = field(default_factory=dict)  # RUN's manifest sections `priors`, for a base copied to --out

    def _section(self, prior, cls, settings, stats: dict, command: str) -> dict:
        """The manifest's priors.KIND section of a fitted prior."""
        return {
            "prior": prior.to_json(),
            "kind": cls.kind,
            "common": config.to_dict(self.common),
            "settings": cls.settings_to_json(settings),
            "fit": stats,
            "seconds": stats["seconds"],
            "created": bundle.now(),
            "command": command,
        }

    def _fit_base(self, bank) -> dict | None:
        """The prior this fit tilts, fitted first when RUN has none (`_base_plan`): attached, its section."""
        if self.base_settings is None:
            return None
        bcls = priors.get(self.cls.tilts(self.settings))
        what, how = bcls.describe(self.base_settings)
        log(f"fitting its base first, {what}: {how}")
        torch.manual_seed(self.common.seed)
        base, stats = bcls.fit(bank, self.common, self.base_settings)
        self.model.attach_prior(base)
        return self._section(base, bcls, self.base_settings, stats, f"{self.request.command} (its base)")

    def run(self) -> dict:
        """Fit, then write prior-KIND.safetensors and the manifest's `priors: {KIND: ...}`; the result."""
        from ..priors.bank import ExpertBank

        r, cls, model, kind = self.request, self.cls, self.model, self.cls.kind
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        coherence = {}
        if self.clf is not None:
            coherence["base"] = self._coherence(model.sample_prior, "base prior")
        what, how = cls.describe(self.settings)
        log(
            f"fitting {what} over {model.z_dim} latent dimensions of {self.run_path} ({model.config.fusion}) "
            f"on {len(self.data)} tuples: {how}"
        )
        torch.manual_seed(self.common.seed)
        bank = ExpertBank(model, self.data, self.device)
        run = open_fit_run(self.target, self.tman, r, cls, create=self.new_bundle)
        recorded = {
            "kind": kind,
            "common": config.to_dict(self.common),
            "settings": cls.settings_to_json(self.settings),
        }
        run.extra_state = {"kind": kind, "settings": recorded, "given": _given(r, cls)}
        base_section = self._fit_base(bank)
        tilted = cls.tilts(self.settings)
        if tilted is not None:  # the base the energy tilts: a resumed fit must tilt the same one
            fp = model.priors[tilted].fingerprint()
            if r.resume and self.tman[PRIOR_FIT_STATE].get("base_sha256") not in (None, fp):
                raise MMVAEError(
                    f"the {tilted} prior differs from the one the interrupted fit tilts; start again without --resume"
                )
            run.extra_state["base_sha256"] = fp
        if r.resume:
            log(f"resuming the {kind} fit in {self.target} at epoch {self.tman[PRIOR_FIT_STATE]['epoch'] + 1}")
        try:
            prior, stats = cls.fit(
                bank, self.common, self.settings, run=run, resume=bool(r.resume), step_delay=r.step_delay
            )
        except NumericalError:  # a diverged fit leaves nothing behind: no checkpoint to resume into the same fate
            if self.new_bundle and not r.resume:
                shutil.rmtree(self.target, ignore_errors=True)
            elif PRIOR_FIT_STATE in self.tman:
                run.drop_checkpoint()
            raise
        model.attach_prior(prior)
        if self.clf is not None:
            coherence[kind] = self._coherence(lambda b: model.sample_latents(b, kind), cls.name())
            coherence["n_joint"] = r.n_joint
        if prior.tractable:
            with torch.no_grad():  # one fresh draw of the aggregate posterior, both densities
                torch.manual_seed(self.common.seed + 1)
                z = bank.sample(torch.arange(min(bank.n, 10000)).to(bank.device))
                stats["log_lik"] = float(prior.log_prob(z).mean())
                stats["base_log_lik"] = float(model.base_log_prob(z).mean())
                stats["eval_samples"] = len(z)
        section = self._section(prior, cls, self.settings, stats, r.command)
        if coherence:
            section["joint_coherence"] = coherence
        self.tman.pop(PRIOR_FIT_STATE, None)
        self.tman.setdefault("files", {}).pop(PRIOR_CHECKPOINT, None)
        stale = []  # `tilted`: the base checked above
        if tilted is not None and tilted not in (self.tman.get("priors") or {}):  # fitted here, or RUN's into --out
            stale += write_prior(self.target, model.priors[tilted], self.tman, base_section or self.sources[tilted])
        stale += write_prior(self.target, prior, self.tman, section)
        bundle.save_manifest(self.target, self.tman)
        for name in (PRIOR_CHECKPOINT, *stale):  # after the manifest stopped naming them
            (self.target / name).unlink(missing_ok=True)
        log(f"wrote {self.target}")
        result = {"run": str(self.target), **prior.fit_result(stats)}
        if coherence:
            result["joint_coherence"] = coherence
        return result

    def _coherence(self, sample, what: str) -> float:
        """Joint coherence of `sample` (n -> latents) over --n-joint samples, seeded."""
        from ..evaluate.coherence import joint_coherence

        n = self.request.n_joint
        torch.manual_seed(self.common.seed)
        value = joint_coherence(sample, self.model, self.clf, n)["joint"]
        log(f"joint coherence with the {what}: {value:.4f} ({n} samples)")
        return value


def _latent(run: Path, manifest: dict) -> tuple[str, int]:
    """(fusion, latent size) from RUN's manifest, before its weights are read."""
    try:
        m = manifest["model"]
        return m["fusion"], registry.fusion(m["fusion"]).z_dim(int(m["latent_dim"]), len(m["modalities"]))
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{run}: manifest has an invalid model section ({e})") from None


def _given(r: FitPriorRequest, cls) -> dict:
    """The fit's flags given on the command line (field name -> value), as the checkpoint records them."""
    mine = cls.flags()
    given = {k: v for k, v in {**r.common, **r.settings}.items() if v is not None and (k in mine or k in r.common)}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(given.items())}


def _holder(r: FitPriorRequest, cls, run: Path, outp: Path | None, manifest: dict) -> dict:
    """--resume: the manifest that holds the interrupted fit (RUN's or --out's), checked. Flags given
    must be the ones the interrupted fit was started with (a requeued batch job reruns its command)."""
    where = outp or run
    if outp is not None and not (outp / bundle.MANIFEST).exists():
        raise BundleError(f"{outp}: no interrupted {cls.fit_command()} to resume (no run there); run without --resume")
    holder = manifest if outp is None else upgrade(bundle.read_manifest(outp, kind="mmvae"))
    state = holder.get(PRIOR_FIT_STATE)
    if not state:
        if holder.get(LEGACY_EBM_FIT_STATE):
            raise BundleError(
                f"{where}: its interrupted fit was written by an older mmvae and cannot be resumed; "
                "start it again without --resume"
            )
        raise BundleError(
            f"{where}: no interrupted {cls.fit_command()} to resume (no checkpoint); run without --resume"
        )
    if state.get("kind") != r.kind:
        raise MMVAEError(f"--resume: the interrupted fit in {where} is --kind {state.get('kind')}, not {r.kind}")
    given, recorded = _given(r, cls), state.get("given", {})
    changed = [k for k in given if given[k] != recorded.get(k)]
    if changed:
        flag = {**cls.flags(), **{k: f"--{k.replace('_', '-')}" for k in r.common}}.get(changed[0], changed[0])
        raise MMVAEError(
            f"--resume continues the interrupted fit with the settings it started with; {flag} differs "
            "(give the same flags, or none)"
        )
    if outp is not None and holder.get("parent", {}).get("model_sha256") != manifest.get("files", {}).get(
        WEIGHTS, {}
    ).get("sha256"):
        raise BundleError(
            f"{run} changed since the interrupted fit into {outp} started; start it again without --resume"
        )
    return holder


def _refuse_unfittable(r: FitPriorRequest, cls, run: Path, outp: Path | None, manifest: dict) -> None:
    """One-line errors for bundles this fit cannot (or must not) fit into."""
    if manifest.get("parent") is not None:
        kinds = list(manifest.get("priors") or {}) or [r.kind]
        only = " and ".join(priors.get(k).noun() for k in kinds)
        raise BundleError(
            f"{run} is {'an' if only[0] in 'aeiou' else 'a'} {only}-only bundle (made with --out); fit its parent "
            f"{manifest['parent'].get('path')} instead"
        )
    if WEIGHTS not in manifest.get("files", {}):
        raise BundleError(f"{run} has no trained weights yet (no epoch finished); train it first")
    existing = (manifest.get("priors") or {}).get(r.kind)
    if outp is None and existing:
        if trained_with_vae(existing):
            raise BundleError(
                f"{run}'s {cls.name()} was trained jointly with the VAE; fit a post-hoc one into a new "
                f"bundle with --out NEW_RUN"
            )
        if not (r.overwrite or r.resume):
            raise BundleError(
                f"{run} already has its {cls.name()}; use --overwrite to replace it or --out NEW_RUN to keep it"
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


@dataclass
class FinishedFit:
    """--resume on a fit that already finished: nothing to do, nothing written (exit 0)."""

    target: Path
    kind: str
    section: dict

    def run(self) -> dict:
        log(f"{self.target} already has its fitted {self.kind} prior; nothing to do")
        return {"kind": self.kind, "already_finished": True, "fit": self.section.get("fit", {})}


def _resume_plan(r: FitPriorRequest, run: Path, outp: Path | None) -> tuple[FitPriorRequest, dict | None]:
    """What --resume [last|auto] does (run.plan_run's modes for a fit): (the request as it runs, the
    finished fit's manifest section or None).

        a checkpoint of the fit            continue it (resume "last")
        the fit finished                   nothing to do (FinishedFit)
        no checkpoint (killed before its   start it from the beginning with the flags given: a kill -9
          first one), or with auto no        before the first checkpoint lost nothing (--out's bundle
          --out bundle yet                   is replaced)
    Plain --resume with an --out that holds no run is refused, as without a fit to continue."""
    if not r.resume:
        return r, None
    where = outp or run
    if not (where / bundle.MANIFEST).exists():
        if r.resume == "auto" and outp is not None:
            return replace(r, resume=None), None
        return replace(r, resume="last"), None  # _holder says there is no run to continue
    held = upgrade(bundle.read_manifest(where, kind="mmvae"))
    if held.get(PRIOR_FIT_STATE) or held.get(LEGACY_EBM_FIT_STATE):
        return replace(r, resume="last"), None
    section = (held.get("priors") or {}).get(r.kind)
    if section and not trained_with_vae(section):
        return r, section
    return replace(r, resume=None, overwrite=outp is not None), None


def prepare_fit_prior(r: FitPriorRequest) -> FitPriorJob | FinishedFit:
    """Check every input of `mmvae fit-prior` / `fit-ebm` (kind, flags, bundle, output, logs, classifiers,
    data) and return the job; nothing is written here."""
    from .train import run_training_data

    fittable = priors.fittable()
    if r.kind not in fittable:
        hint = f"; {r.kind} priors come from `{priors.get(r.kind).how_to_get()}`" if r.kind in priors.names() else ""
        raise MMVAEError(f"--kind {r.kind}: fit-prior fits {', '.join(fittable)}{hint}")
    cls = priors.get(r.kind)
    mine = cls.flags()
    elsewhere: dict[str, list[str]] = {}  # a flag given that only other kinds take -> those kinds
    for other in fittable:
        for name, flag in priors.get(other).flags().items() if other != r.kind else ():
            if name not in mine and r.settings.get(name) is not None:
                elsewhere.setdefault(flag, []).append(other)
    if elsewhere:
        flag, kinds = next(iter(elsewhere.items()))
        raise MMVAEError(f"{flag} applies to --kind {' or '.join(kinds)}, not {r.kind}")
    run, outp = Path(r.run), Path(r.out) if r.out else None
    if r.resume and r.overwrite:
        raise MMVAEError(f"--resume continues the fit in {outp or run} and --overwrite replaces it: give one of them")
    r, finished = _resume_plan(r, run, outp)
    if finished is not None:
        return FinishedFit(outp or run, r.kind, finished)
    check_log_file(r.log_jsonl)
    check_tensorboard(r.tensorboard)
    given = {k: v for k, v in r.settings.items() if k in mine}
    if not r.resume:  # flag ranges first: they need no bundle
        common = config.resolve(config.PriorFitSettings, r.common)
        cls.check_settings(given)
    manifest = upgrade(bundle.read_manifest(run, kind="mmvae"))
    if outp is not None and outp.resolve() == run.resolve():
        raise MMVAEError("--out must differ from RUN (omit --out to add the prior to RUN)")
    holder = _holder(r, cls, run, outp, manifest) if r.resume else None
    _refuse_unfittable(r, cls, run, outp, manifest)
    fusion, z_dim = _latent(run, manifest)
    if holder is not None:  # --resume: the interrupted fit's own settings
        try:
            st = holder[PRIOR_FIT_STATE]["settings"]
            common = config.from_dict(config.PriorFitSettings, st["common"], "checkpoint [common]")
            settings = cls.settings_from_json(st["settings"])
        except (KeyError, TypeError, ValueError, MMVAEError) as e:
            raise BundleError(f"{outp or run}: the interrupted fit's settings are invalid ({e})") from None
    else:
        settings = cls.resolve_settings(given, fusion, z_dim)
    if "finished" not in manifest:
        log(
            f"warning: {run} has not finished training ({manifest.get('epochs_done', 0)} of "
            f"{manifest.get('settings', {}).get('train', {}).get('epochs', '?')} epochs); fitting its last saved "
            f"weights (a prior added to RUN stops `train --resume`; use --out to keep them apart)"
        )
    dev = pick_device(r.device)
    clf = None
    if r.classifiers:
        from ..classifier import load_classifiers

        clf, _ = load_classifiers(Path(r.classifiers), dev)
    model, manifest = load_model(run, dev)
    train = TrainConfig.from_dict(manifest.get("settings", {}), str(run)).train
    data = run_training_data(manifest, r.data_root, train, run, "its training data changed since it was trained")
    cls.check_fit(settings, common, len(data))
    base_settings = _base_plan(r, cls, settings, model, run, common, len(data), fusion, z_dim)
    if outp is None:  # the prior goes into RUN's own manifest
        target, tman, new = run, manifest, False
    elif holder is not None:
        target, tman, new = outp, holder, True
    else:  # a new prior-only bundle naming RUN as its parent
        target, new = outp, True
        tman = {k: v for k, v in manifest.items() if k not in NOT_INHERITED}
        tman.update(
            created=bundle.now(),
            versions=bundle.versions(),
            files={},
            evaluations=[],
            parent={"path": str(run.resolve()), "model_sha256": manifest["files"][WEIGHTS]["sha256"]},
        )
    sources = dict(manifest.get("priors") or {})
    return FitPriorJob(r, run, target, tman, new, model, data, cls, common, settings, dev, clf, base_settings, sources)


def _base_plan(r: FitPriorRequest, cls, settings, model, run: Path, common, n: int, fusion: str, z_dim: int):
    """The prior a fit tilts (`cls.tilts`: an energy over the bundle's gmm or flow): None when it tilts
    none or RUN has it; RUN without it: one line naming the command that fits it when --base named it,
    else (the default base) its default settings, to fit it here first and store it with the energy."""
    kind = cls.tilts(settings)
    if kind is None or kind in model.priors:
        return None
    bcls = priors.get(kind)
    if r.settings.get("base") is not None:
        raise MMVAEError(
            f"{run} has no {bcls.name()} to tilt (--base {kind}); fit one first with `{bcls.how_to_get(str(run))}`"
        )
    bset = bcls.resolve_settings({}, fusion, z_dim)
    bcls.check_fit(bset, common, n)
    return bset
