"""The training loop: uint8 batches gathered on the device, checkpoints, signals, resume, DDP.

Determinism: the model is built right after seeding with the run's seed; the epoch-e permutation
comes from a generator seeded with (seed, e); the RNG state of every rank (reparameterisation
noise), the optimizer state, the position in the epoch and the partial-epoch statistics are saved
in every checkpoint, so a resumed run on the CPU ends with bit-identical parameters. Partially
observed data passes each batch's presence mask (B, M) to the objective; `--missing-ratio`'s mask is
drawn once from its own seeded generator (data.base.drop_modalities), never from the training RNG.

Data parallel (torchrun / --distributed, see runtime.py): --batch-size is the global batch; every
rank draws the same permutation and takes its contiguous share of each global batch; the loss is
weighted so that DDP's gradient average equals the gradient of the global-batch mean; rank 0
alone writes bundles and logs.

The bundle's lifecycle (creation, checkpoints, signals, logs) is run.Run's, the epoch/step loop
loop.Loop's; this file is the training step (TrainLoop's hooks).
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import torch

from . import bundle
from .config import JointEnergySettings, RuntimeSettings, TrainSettings
from .console import log
from .data.base import GatheredTensors, MultimodalData
from .errors import MMVAEError
from .loop import Loop
from .model import MultimodalVAE
from .model_io import model_files
from .run import Run
from .runtime import Dist, autocast_dtype, capture_rng, make_scaler, noise_seed, restore_rng, speed_up

STATE_KEY = "training_state"


def main_log(dist: Dist, msg: str) -> None:
    """`log` on rank 0 only."""
    if dist.is_main:
        log(msg)


def make_optimizer(
    model: torch.nn.Module, t: TrainSettings, joint: JointEnergySettings | None = None
) -> torch.optim.Optimizer:
    """Adam over the VAE's parameters; the prior trained with it (model.train_prior, a jointly trained
    energy) gets its own group (ebm_lr, ebm_betas)."""
    tp = getattr(model, "train_prior", None)
    if tp is None:
        groups = [{"params": list(model.parameters())}]
    else:
        joint = joint or JointEnergySettings()
        own = {id(p) for p in tp.parameters()}
        groups = [
            {"params": [p for p in model.parameters() if id(p) not in own]},
            {"params": list(tp.parameters()), "lr": float(joint.ebm_lr), "betas": tuple(joint.ebm_betas)},
        ]
    params = [p for g in groups for p in g["params"]]
    # one fused kernel per step instead of ~10 per parameter (measured: the optimizer step 5x faster on
    # 2 CPU cores for MoPoE's 14M parameters, docs/results/speed.md); same update up to float rounding
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(
        groups, lr=float(t.lr), betas=tuple(t.adam_betas), amsgrad=bool(t.amsgrad), fused=fused or None
    )


def lr_factor(decay: str, fraction: float, step: int, total: int) -> float:
    """The learning rate's multiplier at global step `step` of `total` (train settings lr_decay,
    lr_decay_fraction). Constant until s0 = total (1 - fraction), then with p = (step - s0) / (total - s0):
    linear 1 - p, cosine (1 + cos(pi p)) / 2; "none" is 1 throughout. A function of the step alone, so a
    resumed run follows the same schedule (its horizon is the run's --epochs)."""
    if decay == "none":
        return 1.0
    start = total * (1.0 - float(fraction))
    if step < start:
        return 1.0
    p = (step - start) / max(total - start, 1e-12)
    return 1.0 - p if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))


def beta_ramp(warmup_steps: float, step: int) -> float:
    """KL annealing's multiplier of beta at global step `step`: min(1, step / warmup_steps)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def checkpoint_state(
    model, opt, epoch: int, step: int, partial: dict | None = None, scaler=None, dist: Dist | None = None
) -> tuple[dict, dict]:
    """(tensors, state) of a training checkpoint: weights, optimizer, every rank's RNG as tensors;
    position, optimizer hyperparameters and partial-epoch sums as JSON. A collective call."""
    dist = dist or Dist()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = bundle.flatten_optimizer(opt)
    tensors.update(opt_tensors)
    tensors.update(capture_rng(dist))
    state = {
        "epoch": epoch,
        "step": step,
        "optimizer": opt_meta,
        "world_size": dist.world,
        "partial": partial or {"sums": {}, "seen": 0},
    }
    if scaler is not None:
        state["scaler"] = {k: v for k, v in scaler.state_dict().items()}
    return tensors, state


def restore_checkpoint(run: Run, model, opt, scaler=None, seed: int = 0) -> tuple[int, int]:
    dist = run.dist
    tensors, state = run.restore()
    bundle.load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(run.path))
    opt.load_state_dict(bundle.unflatten_optimizer(tensors, state["optimizer"]))
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if not restore_rng(tensors, dist, seed, int(state["step"])):
        print(
            f"warning: rank {dist.rank}: the checkpoint was written by {state.get('world_size', 1)} process(es); "
            "this rank's noise is reseeded, so the run is not bit-identical to an uninterrupted one",
            file=sys.stderr,
            flush=True,
        )
    return int(state["epoch"]), int(state["step"])


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def place_data(data: MultimodalData, device: torch.device) -> MultimodalData:
    """The dataset moved to a CUDA `device` when it fits in half its free memory (batches are then pure
    on-device index gathers); otherwise unchanged (gathered on the host, copied per batch)."""
    if device.type != "cuda":
        return data
    gathered = isinstance(data.tensors, GatheredTensors)
    parts = (
        list(data.tensors.store.values()) + list(data.tensors.index.values())
        if gathered
        else list(data.tensors.values())
    )
    nbytes = sum(t.numel() * t.element_size() for t in parts)
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes > free // 2:
        log(f"data ({nbytes / 2**30:.1f} GiB) does not fit on {device}: batches are gathered on the host")
        return data
    if gathered:
        tensors = GatheredTensors(
            {m: t.to(device) for m, t in data.tensors.store.items()},
            {m: i.to(device) for m, i in data.tensors.index.items()},
        )
    else:
        tensors = {m: t.to(device) for m, t in data.tensors.items()}
    present = None if data.present is None else data.present.to(device)
    return replace(data, tensors=tensors, labels=None, present=present)


def _data_device(data: MultimodalData) -> torch.device:
    t = data.tensors.store if isinstance(data.tensors, GatheredTensors) else data.tensors
    return next(iter(t.values())).device


class TrainLoop(Loop):
    """train.fit's steps (loop.Loop's hooks): epoch e visits epoch_permutation(n, seed, e); each rank
    takes its share of the global batch (the loss weighted so that DDP's average is the global-batch
    mean); beta's warm-up and the learning rate's decay are functions of the global step; the AMP
    scaler steps fp16; after each epoch `monitor(row)` may stop a diverging run, and the bundle's
    weights are written."""

    def __init__(self, run: Run, model: MultimodalVAE, opt, scaler, data, t: TrainSettings, device, monitor, **kw):
        super().__init__(run, n=len(data), batch_size=t.batch_size, epochs=t.epochs, **kw)
        self.model, self.net, self.opt, self.scaler, self.t, self.device = model, model, opt, scaler, t, device
        self.data, self.on, self.monitor, self.seed = data, _data_device(data), monitor, int(t.seed)
        self.base_lrs = [g["lr"] for g in opt.param_groups]  # before a checkpoint's (scheduled) rates are restored

    def place(self) -> None:
        """After the checkpoint is restored: DDP around the model when distributed, the data on the device."""
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            cuda = self.device.type == "cuda"
            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)
        self.data = place_data(self.data, self.device)
        self.on = _data_device(self.data)

    def order(self, epoch: int) -> torch.Tensor:
        return epoch_permutation(self.n, self.seed, epoch)

    def _at(self, epoch: int, step: int) -> int:
        """The global step: the warm-up and the decay are functions of it."""
        return epoch * self.steps_per_epoch + step

    def forward(self, epoch: int, step: int, gidx: torch.Tensor):
        model, dist, t = self.model, self.dist, self.t
        if t.beta_warmup_epochs > 0:
            model.beta_scale = beta_ramp(t.beta_warmup_epochs * self.steps_per_epoch, self._at(epoch, step))
        idx = dist.shard(gidx)
        x = self.data.batch(idx.to(self.on), self.device)
        present = self.data.presence(idx, model.names, self.device)  # None for complete data
        loss, stats = self.net(x) if present is None else self.net(x, present)
        if len(idx) * dist.world != len(gidx):  # uneven shards: DDP's average = global-batch mean
            loss = loss * (len(idx) * dist.world / len(gidx))
        return loss, stats, len(idx)

    def backward(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        t, opt = self.t, self.opt
        opt.zero_grad(set_to_none=True)
        if t.lr_decay != "none":
            k = lr_factor(t.lr_decay, t.lr_decay_fraction, self._at(epoch, step), self.epochs * self.steps_per_epoch)
            for g, base in zip(opt.param_groups, self.base_lrs):
                g["lr"] = base * k
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            opt.step()

    def diverged(self, loss, epoch: int, step: int) -> str:
        return (
            f"loss became non-finite at epoch {epoch + 1}, step {step + 1}; "
            "try a lower --lr (the last good checkpoint is kept for --resume)"
        )

    def row(self, epoch: int, means: dict[str, float]) -> dict:
        return {"epoch": epoch + 1, **means, "lr": self.opt.param_groups[0]["lr"]}

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        if self.monitor is not None:  # raises for a diverging run: this epoch is logged, not saved
            self.monitor(row)
        self.run.manifest["epochs_done"] = epoch + 1
        files, _ = model_files(self.model, self.run.manifest)  # (an older energy file stays, unnamed)
        for name, tensors in files.items():  # written with the epoch's checkpoint
            self.run.stage(name, tensors)

    def save(self, epoch: int, step: int, sums: dict[str, float], seen: float) -> None:
        partial = {"sums": sums, "seen": seen}
        self.run.checkpoint(*checkpoint_state(self.model, self.opt, epoch, step, partial, self.scaler, self.dist))

    def restore(self) -> tuple[int, int, dict[str, float], float]:
        epoch, step = restore_checkpoint(self.run, self.model, self.opt, self.scaler, self.seed)
        partial = self.run.manifest[STATE_KEY].get("partial") or {}
        sums = {k: float(v) for k, v in partial.get("sums", {}).items()}
        return epoch, step, sums, int(partial.get("seen", 0))


def fit(
    model: MultimodalVAE,
    data: MultimodalData,
    run: Run,
    t: TrainSettings,
    device: torch.device,
    joint: JointEnergySettings | None = None,
    resume: bool = False,
    max_steps: int | None = None,
    runtime: RuntimeSettings | None = None,
    step_delay: float = 0.0,
    monitor=None,
) -> dict:
    """Train `model` on `data` with the train settings `t`, writing the bundle of `run` (TrainLoop).

    Checkpoints at the end of every epoch and when SIGTERM/SIGUSR1 arrives (then raises Interrupted).
    `max_steps` stops after that many optimisation steps in this call (for tests and benchmarks);
    `step_delay` sleeps after every step (tests of signal handling). `monitor(row)` sees each epoch's
    summary before it is saved and may raise (e.g. NumericalError for a diverging joint energy): the
    previous epoch's checkpoint then stays the last good one. With several processes (run.dist),
    every rank calls fit; rank 0 alone writes."""
    rt, dist = runtime or RuntimeSettings(), run.dist
    amp = autocast_dtype(rt.precision, device)
    model.to(device)
    speed_up(model, rt.channels_last, rt.compile)
    model.amp_dtype, model.channels_last, model.grouped_nets = amp, rt.channels_last, rt.grouped_nets
    model.cpu_chunk = rt.cpu_chunk
    opt = make_optimizer(model, t, joint)
    scaler = make_scaler(rt.precision, device)
    loop = TrainLoop(run, model, opt, scaler, data, t, device, monitor, step_delay=step_delay, max_steps=max_steps)
    if resume:
        loop.resume()
        main_log(dist, f"resuming {run.path} at epoch {loop.start[0] + 1}, step {loop.start[1]}")
    else:
        torch.manual_seed(noise_seed(loop.seed, dist.rank))
    model.train()
    loop.place()
    if loop.batch_size < dist.world:
        raise MMVAEError(
            f"--batch-size {loop.batch_size} is the global batch: it must be at least the number of processes "
            f"({dist.world})"
        )
    try:
        finished = loop.fit()
    finally:
        model.beta_scale = 1.0  # a warm-up's ramp ends with fit, however it ends
    if finished:
        run.finalise()
    return run.manifest
