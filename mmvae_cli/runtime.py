"""How training runs, independent of what it trains: signals and checkpoints for cluster jobs,
torch.distributed data parallelism, mixed precision, and speed settings.

Reusable by every long-running command (`train`, `fit-ebm`):

    dist = init_distributed(device_name, required=flag)    # world of 1 unless launched by torchrun/srun
    stop = StopFlag()
    with stop.installed():
        for step ...:
            ...one optimisation step...
            if stop.requested(dist):                        # same answer on every rank
                write_checkpoint(run, "x-checkpoint.safetensors", tensors | capture_rng(dist), manifest,
                                 "x_state", {...position...}, dist)
                raise Interrupted(...)                      # exit code 75

Nothing here pickles: RNG states and optimizer states travel as tensors, the rest as JSON.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from . import bundle
from .errors import BundleError, MMVAEError

PRECISIONS = ("fp32", "bf16", "fp16")


# --- signals ----------------------------------------------------------------------------------------
class StopFlag:
    """Set by SIGTERM / SIGUSR1; the loop checkpoints at the next step and exits with code 75."""

    def __init__(self):
        self.signal = None

    def __bool__(self):
        return self.signal is not None

    def requested(self, dist: Dist | None = None) -> bool:
        """Whether any rank received a stop signal (a collective call when distributed: every rank
        must call it at the same step, so all of them stop together)."""
        if dist is None or not dist.enabled:
            return bool(self)
        return dist.any(bool(self))

    @contextmanager
    def installed(self):
        sigs = [signal.SIGTERM] + ([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])
        old = {}
        try:
            for s in sigs:
                old[s] = signal.signal(s, lambda num, frame: setattr(self, "signal", num))
        except ValueError:  # not the main thread: signals cannot be handled here
            pass
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


# --- devices ----------------------------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    """--device: cpu, cuda, cuda:N, mps or auto (cuda when available); one-line errors otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise MMVAEError(f"--device {name!r}: choose cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MMVAEError(f"--device {name}: no CUDA device is available (use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MMVAEError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise MMVAEError(f"--device {name}: MPS is not available here")
    elif device.type != "cpu":
        raise MMVAEError(f"--device {name!r}: choose cpu, cuda, cuda:N or auto")
    return device


# --- torch.distributed ------------------------------------------------------------------------------
@dataclass
class Dist:
    """This process's place in a data-parallel job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world > 1 or bool(self.backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def comm_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def any(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return t
        out = t.to(self.comm_device()).clone()
        torch.distributed.all_reduce(out)
        return out.to(t.device)

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of a same-shaped tensor, in rank order (on every rank)."""
        if not self.enabled:
            return [t]
        src = t.to(self.comm_device())
        out = [torch.empty_like(src) for _ in range(self.world)]
        torch.distributed.all_gather(out, src)
        return [o.cpu() for o in out]

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch of indices (sizes differ by at most one)."""
        return idx.tensor_split(self.world)[self.rank] if self.world > 1 else idx


def _env_int(*names: str) -> int | None:
    for n in names:
        if os.environ.get(n, "").strip():
            return int(os.environ[n])
    return None


def init_distributed(device_name: str, required: bool = False) -> tuple[Dist, torch.device]:
    """Join the process group that torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or, with `required`
    (`--distributed`), SLURM's srun (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID plus MASTER_ADDR and
    MASTER_PORT) describes. gloo on CPU, NCCL on CUDA; each rank uses cuda:LOCAL_RANK.
    Returns (dist, device); a world of one without the environment and without `required`."""
    world = _env_int("WORLD_SIZE")
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK")
    if world is None and required:
        world, rank, local = _env_int("SLURM_NTASKS"), _env_int("SLURM_PROCID"), _env_int("SLURM_LOCALID")
        if world is not None:
            missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
            if missing:
                raise MMVAEError(
                    f"--distributed under srun needs {' and '.join(missing)} in the environment (see docs/cluster.md)"
                )
            os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(local or 0))
    if world is None:
        if required:
            raise MMVAEError(
                "--distributed: no process group to join; launch with "
                "`torchrun --nproc-per-node N -m mmvae_cli train ...` or srun (see docs/cluster.md)"
            )
        return Dist(), pick_device(device_name)
    if world == 1 and not required:
        return Dist(), pick_device(device_name)
    rank, local = rank or 0, local or 0
    device = pick_device(device_name)
    if device.type == "cuda":
        if torch.cuda.device_count() <= local:
            raise MMVAEError(f"rank {rank}: LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world)
    return Dist(rank, world, local, backend), device


def shutdown_distributed(dist: Dist) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# --- RNG state as tensors ---------------------------------------------------------------------------
def noise_seed(seed: int, rank: int) -> int:
    """Seed of rank `rank`'s noise stream (rank 0 uses `seed` itself, as a single process does)."""
    return seed if rank == 0 else seed * 1_000_003 + 7919 * rank


def _rng_key(rank: int, what: str) -> str:
    return f"rng.{what}" if rank == 0 else f"rng.rank{rank}.{what}"


def capture_rng(dist: Dist | None = None) -> dict[str, torch.Tensor]:
    """Every rank's CPU (and current CUDA device's) RNG state, as tensors for a checkpoint.
    A collective call when distributed."""
    dist = dist or Dist()
    out = {}
    for r, s in enumerate(dist.gather(torch.get_rng_state())):
        out[_rng_key(r, "cpu")] = s
    if torch.cuda.is_available():
        if dist.enabled:
            for r, s in enumerate(dist.gather(torch.cuda.get_rng_state())):
                out[_rng_key(r, "cuda.0")] = s
        else:
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                out[f"rng.cuda.{i}"] = s
    return out


def restore_rng(tensors: dict[str, torch.Tensor], dist: Dist | None = None, seed: int = 0, step: int = 0) -> bool:
    """Restore this rank's RNG state from a checkpoint. Returns False (and reseeds from seed, rank and
    step) when the checkpoint has no state for this rank, e.g. after changing the number of processes."""
    dist = dist or Dist()
    key = _rng_key(dist.rank, "cpu")
    if key not in tensors:
        torch.manual_seed(noise_seed(seed, dist.rank) + 104_729 * step)
        return False
    torch.set_rng_state(tensors[key])
    if torch.cuda.is_available():
        if dist.enabled:
            k = _rng_key(dist.rank, "cuda.0")
            if k in tensors:
                torch.cuda.set_rng_state(tensors[k])
        else:
            cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
            if cuda:
                torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    return True


# --- checkpoints ------------------------------------------------------------------------------------
def write_checkpoint(
    run: Path,
    name: str,
    tensors: dict[str, torch.Tensor],
    manifest: dict,
    key: str,
    state: dict,
    dist: Dist | None = None,
    staged: tuple[str, ...] = (),
) -> None:
    """Rank 0 writes RUN/name with `manifest[key] = state` and the `staged` files already written
    (bundle.write_weights(staged=True)) in one commit: the files staged, then the manifest (atomic:
    position, statistics and checksums always agree, wherever a kill -9 lands), then the files moved
    into place; other ranks only wait."""
    dist = dist or Dist()
    if dist.is_main:
        bundle.write_weights(run, name, tensors, manifest, staged=True)
        manifest[key] = state
        bundle.save_manifest(run, manifest)
        bundle.commit_staged(run, (*staged, name))
    dist.barrier()


def read_checkpoint(run: Path, name: str, manifest: dict, key: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, state) of a checkpoint written by `write_checkpoint`, checksum-checked."""
    state = manifest.get(key)
    if state is None:
        raise BundleError(f"{run}: no checkpoint to resume from (manifest has no {key})")
    return bundle.read_weights(run, name, manifest), state


# --- precision and speed ----------------------------------------------------------------------------
def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for --precision on `device` (None for fp32); one-line errors for
    combinations that cannot run."""
    if precision not in PRECISIONS:
        raise MMVAEError(f"unknown --precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise MMVAEError("--precision fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise MMVAEError("--precision bf16: this GPU does not support bfloat16 (use fp16 or fp32)")
    return torch.bfloat16


def make_scaler(precision: str, device: torch.device):
    """A gradient scaler for fp16 (None otherwise)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def speed_up(model: torch.nn.Module, channels_last: bool = False, compile: bool = False) -> None:
    """channels-last weights for the convolutions and torch.compile of every encoder and decoder, in
    place (parameter names and the bundle format are unchanged)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        if not hasattr(torch, "compile"):
            raise MMVAEError("--compile needs torch >= 2.0")
        for nets in (getattr(model, "encoders", {}), getattr(model, "decoders", {})):
            for net in nets.values():
                net.compile()
