"""The run lifecycle shared by every long command (`train`, `fit-ebm`, `fit-prior`).

    action, recorded = plan_run(path, resume, state_key)  # --resume [last|auto]: create, restart or reopen
    run = Run.create(path, manifest, ...)        # after every input was checked: folder + manifest, atomically
    run = Run.reopen(path, manifest, ...)        # --resume: the same bundle, its checkpoint state
    loop.fit()                                   # loop.Loop: epochs and steps in run.session(), which handles
                                                 # SIGTERM/SIGUSR1 (checkpoint, then exit code 75), and per
                                                 # epoch run.end_epoch(row) (stderr, --log-jsonl, --tensorboard,
                                                 # manifest history) and run.checkpoint(tensors, state)
    run.finalise()

A checkpoint is a safetensors file (weights, optimizer state, RNG streams as tensors) plus a JSON
state under one manifest key, committed with the files staged for it (`stage`: the epoch's weights)
by one manifest save (runtime.write_checkpoint), so a run killed anywhere, kill -9 included, resumes
bit-identically. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from . import bundle
from .console import log
from .errors import Interrupted, MMVAEError
from .runtime import Dist, StopFlag, capture_rng, read_checkpoint, restore_rng, write_checkpoint


def check_new_output(path: Path, overwrite: bool, resume_hint: str = "use --resume to continue it") -> None:
    """Refuse (one line, nothing written) to start a new run in a folder that already holds one."""
    if (path / bundle.MANIFEST).exists() and not overwrite:
        raise MMVAEError(f"{path} already holds a run; {resume_hint} or --overwrite to replace it")
    if path.exists() and not path.is_dir():
        raise MMVAEError(f"{path} exists and is not a folder")


RESUME_MODES = ("last", "auto")  # --resume [last|auto]; plain --resume is "last"


def plan_run(path: Path, resume: str | None, state_key: str, overwrite: bool = False) -> tuple[str, dict | None]:
    """What a long command does with its output folder `path`, given its --resume mode (checked here,
    nothing written); (action, the recorded manifest or None):

        no --resume       "create": a new run; refused when `path` holds one, unless `overwrite`
        --resume [last]   "reopen": continue the run from its checkpoint (`manifest[state_key]`), or
                          "restart": a run stopped before its first checkpoint (no state, no files: a
                          kill -9 in its first epoch lost nothing) starts again from the beginning with
                          the settings its manifest records; refused when `path` holds no run
        --resume auto     the same, and "create" when `path` holds no run: one command that a requeued
                          batch job can always rerun

    The caller refuses settings that differ from the recorded ones and says when a run already finished.
    """
    if resume is not None and resume not in RESUME_MODES:
        raise MMVAEError(f"--resume {resume}: choose {' or '.join(RESUME_MODES)}")
    if resume and overwrite:
        raise MMVAEError(f"--resume continues the run in {path} and --overwrite replaces it: give one of them")
    if path.exists() and not path.is_dir():
        raise MMVAEError(f"{path} exists and is not a folder")
    held = (path / bundle.MANIFEST).exists()
    if not resume or (resume == "auto" and not held):
        check_new_output(path, overwrite)
        return "create", None
    if not held:
        raise MMVAEError(
            f"--resume: {path} holds no run to continue (no {bundle.MANIFEST}); --resume auto starts it instead"
        )
    manifest = bundle.read_manifest(path, kind="mmvae")
    fresh = state_key not in manifest and not manifest.get("files")
    return ("restart" if fresh else "reopen"), manifest


def check_log_file(path: str | None, option: str = "--log-jsonl") -> None:
    """A log file's folder must exist (checked before the run starts)."""
    if path is not None:
        parent = Path(path).expanduser().resolve().parent
        if not parent.is_dir():
            raise MMVAEError(f"{option} {path}: folder {parent} does not exist")
        if Path(path).is_dir():
            raise MMVAEError(f"{option} {path} is a folder")


def check_tensorboard(logdir: str | None) -> None:
    """--tensorboard needs the optional `tensorboard` package (pip install 'mmvae-cli[tb]')."""
    if logdir is None:
        return
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise MMVAEError("--tensorboard needs the tensorboard package: pip install 'mmvae-cli[tb]'") from None
    if Path(logdir).exists() and not Path(logdir).is_dir():
        raise MMVAEError(f"--tensorboard {logdir} exists and is not a folder")


class Run:
    """A bundle being written by a long command: its folder, manifest, checkpoint and logs."""

    def __init__(
        self,
        path: Path,
        manifest: dict,
        *,
        checkpoint_name: str,
        state_key: str,
        event: str = "epoch",
        log_jsonl: str | None = None,
        tensorboard: str | None = None,
        dist: Dist | None = None,
        history_key: str | None = "history",
    ):
        self.path, self.manifest = Path(path), manifest
        self.checkpoint_name, self.state_key, self.event = checkpoint_name, state_key, event
        self.log_jsonl, self.tensorboard = log_jsonl, tensorboard
        self.dist = dist or Dist()
        self.history_key = history_key
        self.stop = StopFlag()
        self.extra_state: dict = {}  # JSON added to every checkpoint's state (e.g. the settings to resume with)
        self._staged: list[str] = []  # files written with the next checkpoint (`stage`)
        self._tb = None

    # --- creation ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, manifest: dict, overwrite: bool = False, stale: tuple[str, ...] = (), **kw) -> Run:
        """Create `path` with `manifest` atomically (a new folder appears whole, with its manifest); with
        `overwrite`, an existing run's `stale` files are removed first. Rank 0 writes; others wait."""
        run = cls(path, manifest, **kw)
        path = run.path
        if run.dist.is_main:
            if path.exists():
                check_new_output(path, overwrite)
                bundle.recover(path, {})
                bundle.save_manifest(path, manifest)  # first: the stale files it no longer names may stay
                for name in stale:
                    (path / name).unlink(missing_ok=True)
                    (path / bundle.pending(name)).unlink(missing_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
                try:
                    bundle.save_manifest(tmp, manifest)
                    os.rename(tmp, path)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
        run.dist.barrier()
        return run

    @classmethod
    def reopen(cls, path: Path, manifest: dict, **kw) -> Run:
        """An existing bundle whose manifest was read (and checked) by the caller; what a killed writer
        left in it is tidied (bundle.recover)."""
        run = cls(path, manifest, **kw)
        if run.dist.is_main:
            bundle.recover(run.path, manifest)
        return run

    # --- the session ---------------------------------------------------------------------------
    @contextmanager
    def session(self):
        """Signals handled (SIGTERM/SIGUSR1 set `stop`), the TensorBoard writer open, while the body runs."""
        if self.tensorboard and self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(self.tensorboard)
        try:
            with self.stop.installed():
                yield self
        finally:
            if self._tb is not None:
                self._tb.close()
                self._tb = None

    def stop_requested(self) -> bool:
        """Whether a stop signal arrived (on any rank; a collective call when distributed)."""
        return self.stop.requested(self.dist)

    def interrupted(self, resume_hint: str = "continue with --resume") -> None:
        raise Interrupted(
            f"stopped by signal {self.stop.signal or 'on another rank'}: checkpoint written to "
            f"{self.path}; {resume_hint}"
        )

    # --- checkpoints ---------------------------------------------------------------------------
    def stage(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write the file RUN/name with the next checkpoint (one commit with its manifest; rank 0)."""
        if self.dist.is_main:
            bundle.write_weights(self.path, name, tensors, self.manifest, staged=True)
            self._staged.append(name)

    def checkpoint(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        """Write the checkpoint file, its manifest state and the staged files together (rank 0; every
        rank calls)."""
        if self.dist.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
        write_checkpoint(
            self.path,
            self.checkpoint_name,
            tensors,
            self.manifest,
            self.state_key,
            {**state, **self.extra_state},
            self.dist,
            tuple(self._staged),
        )
        self._staged.clear()

    def restore(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, state) of the last checkpoint, checksum-checked."""
        return read_checkpoint(self.path, self.checkpoint_name, self.manifest, self.state_key)

    def checkpoint_fit(
        self,
        prefix: str,
        module: torch.nn.Module,
        opt,
        generator: torch.Generator,
        state: dict,
        perm: torch.Tensor | None = None,
        extra: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """A post-hoc fit's checkpoint (fit-ebm, fit-prior): the module's weights under `prefix.`, Adam,
        the RNG streams, the epoch generator (and mid-epoch permutation) as tensors; `state` (position,
        sums, history) with Adam's hyperparameters as JSON."""
        tensors = {f"{prefix}.{k}": v for k, v in module.state_dict().items()}
        opt_tensors, opt_meta = bundle.flatten_optimizer(opt)
        tensors.update(opt_tensors)
        tensors.update(capture_rng())
        tensors["fit.generator"] = generator.get_state()
        if perm is not None:
            tensors["fit.perm"] = perm
        tensors.update(extra or {})
        self.checkpoint(tensors, {**state, "optimizer": opt_meta})

    def restore_fit(
        self, prefix: str, module: torch.nn.Module, opt, generator: torch.Generator, seed: int
    ) -> tuple[dict[str, torch.Tensor], dict]:
        """Inverse of `checkpoint_fit`: weights, Adam, RNG streams and generator restored in place;
        returns (tensors, state) for the caller's own entries."""
        tensors, state = self.restore()
        n = len(prefix) + 1
        bundle.load_state(
            module, {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}, f"{self.path} checkpoint"
        )
        opt.load_state_dict(bundle.unflatten_optimizer(tensors, state["optimizer"]))
        restore_rng(tensors, seed=seed)
        generator.set_state(tensors["fit.generator"])
        return tensors, state

    def drop_checkpoint(self) -> None:
        """Forget the checkpoint: the manifest stops naming it, then the file goes."""
        self.manifest.pop(self.state_key, None)
        self.manifest.get("files", {}).pop(self.checkpoint_name, None)
        if self.dist.is_main:
            bundle.save_manifest(self.path, self.manifest)
            for name in (self.checkpoint_name, bundle.pending(self.checkpoint_name)):
                (self.path / name).unlink(missing_ok=True)

    # --- logs ----------------------------------------------------------------------------------
    def end_epoch(self, row: dict, total: int | None = None, prefix: str = "epoch") -> None:
        """One epoch's summary: a stderr line, a --log-jsonl line, TensorBoard scalars, manifest history."""
        if self.history_key is not None:
            self.manifest.setdefault(self.history_key, []).append(row)
        if not self.dist.is_main:
            return
        epoch = row.get("epoch")
        log(
            f"{prefix} {epoch}{f'/{total}' if total else ''}  "
            + "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch" and isinstance(v, (int, float)))
        )
        if self.log_jsonl:
            with open(self.log_jsonl, "a") as f:
                f.write(json.dumps({"event": self.event, "run": str(self.path), **row}) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{self.event}/{k}", v, epoch)
            self._tb.flush()

    def save_manifest(self) -> None:
        if self.dist.is_main:
            bundle.save_manifest(self.path, self.manifest)

    def finalise(self, **fields) -> None:
        """Mark the run finished (with `fields` added to the manifest) and drop its checkpoint state."""
        self.manifest.update(fields)
        self.manifest["finished"] = bundle.now()
        self.save_manifest()
