"""The training loop: uint8 batches gathered on the device, checkpoints, signals, resume, DDP.

Determinism: the model is built right after seeding with the run's seed; the epoch-e permutation
comes from a generator seeded with (seed, e); the RNG state of every rank (reparameterisation
noise), the optimizer state, the position in the epoch and the partial-epoch statistics are saved
in every checkpoint, so a resumed run on the CPU ends with bit-identical parameters.

Data parallel (torchrun / --distributed, see runtime.py): --batch-size is the global batch; every
rank draws the same permutation and takes its contiguous share of each global batch; the loss is
weighted so that DDP's gradient average equals the gradient of the global-batch mean; rank 0
alone writes bundles and logs.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import bundle
from .console import log, progress
from .data.base import GatheredTensors, MultimodalData
from .ebm import LatentEBM
from .errors import BundleError, Interrupted, MMVAEError, NumericalError
from .distributions import LIKELIHOODS
from .model import ModalitySpec, ModelConfig, MultimodalVAE
from .nets import ARCHS, default_arch
from .runtime import (Dist, StopFlag, autocast_dtype, capture_rng, make_scaler, noise_seed,
                      read_checkpoint, restore_rng, speed_up, write_checkpoint)

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "model.safetensors"
EBM_WEIGHTS = "ebm.safetensors"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MMVAEError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def main_log(dist: Dist, msg: str) -> None:
    """`log` on rank 0 only."""
    if dist.is_main:
        log(msg)


def per_modality(spec: str | None, names: list[str], option: str, choices: tuple[str, ...], default: str) -> dict:
    """Parse a per-modality setting: one value for all ("laplace") or "name=value,..." pairs, where
    unnamed modalities keep `default`. Returns {modality: value}."""
    spec = (spec or "").strip()
    if not spec:
        return {n: default for n in names}
    if "=" not in spec:
        pairs = {n: spec for n in names}
    else:
        pairs = {n: default for n in names}
        for item in spec.split(","):
            name, sep, value = (t.strip() for t in item.partition("="))
            if not sep or name not in names:
                raise MMVAEError(f"{option} {spec!r}: {name!r} is not a modality of this data "
                                 f"({', '.join(names)}); use VALUE or NAME=VALUE,...")
            pairs[name] = value
    for n, v in pairs.items():
        if v not in choices and v != default:
            raise MMVAEError(f"{option}: unknown value {v!r} for {n}; choose one of {', '.join(choices)}")
    return pairs


def model_config(data: MultimodalData, m: dict) -> ModelConfig:
    """ModelConfig for `data` from resolved model settings. `likelihood` and `arch` take one value
    for all modalities or NAME=VALUE pairs; with `rescale`, log p(x_m | z) is weighted by
    (largest modality size) / (size of m), as the MMVAE reference does (MNIST x 3072/784)."""
    names = list(data.modalities)
    sizes = {n: int(torch.tensor(data.shape(n)).prod()) for n in names}
    largest = max(sizes.values())
    lik = per_modality(m["likelihood"], names, "--likelihood", LIKELIHOODS, "laplace")
    arch = per_modality(m["arch"], names, "--arch", ARCHS, "")
    specs = [ModalitySpec(n, list(data.shape(n)), lik[n], float(m["likelihood_scale"]),
                          float(largest / sizes[n]) if m["rescale"] else 1.0,
                          arch[n] or default_arch(data.shape(n)))
             for n in names]
    extra = dict(m.get("extra", {}) or {})
    return ModelConfig(specs, int(m["latent_dim"]), m["fusion"], m["subsets"], m["objective"], int(m["k"]),
                       float(m["beta"]), m["posterior"], m["prior"], bool(m["learn_prior"]), None, extra,
                       private_dim=int(m.get("private_dim", 0) or 0))


def make_optimizer(model: torch.nn.Module, t: dict) -> torch.optim.Optimizer:
    """Adam over the VAE's parameters; a jointly trained energy gets its own group (ebm_lr, ebm_betas)."""
    ebm = getattr(model, "ebm", None)
    if ebm is None:
        groups = [{"params": list(model.parameters())}]
    else:
        own = {id(p) for p in ebm.parameters()}
        groups = [{"params": [p for p in model.parameters() if id(p) not in own]},
                  {"params": list(ebm.parameters()), "lr": float(t["ebm_lr"]), "betas": tuple(t["ebm_betas"])}]
    return torch.optim.Adam(groups, lr=float(t["lr"]), betas=tuple(t["adam_betas"]), amsgrad=bool(t["amsgrad"]))


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
        raise BundleError(f"{run}: its parent {ppath} changed since the energy was fitted "
                          f"(model.safetensors fingerprint differs); refit with `mmvae fit-ebm`")
    return bundle.read_weights(ppath, WEIGHTS, pman)


def load_model(run: Path, device: str | torch.device = "cpu") -> tuple[MultimodalVAE, dict]:
    """Rebuild a trained model from its bundle (weights checked against the manifest), with its
    energy-based prior when the manifest has an `ebm` section."""
    manifest = bundle.read_manifest(run, kind="mmvae")
    if manifest.get("parent") is not None and not manifest.get("ebm"):
        raise BundleError(f"{run}: its energy is not fitted yet (fit-ebm was interrupted); continue with "
                          f"`mmvae fit-ebm {manifest['parent'].get('path')} --out {run} --resume`")
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
    return model.to(device).eval(), manifest


def save_bundle(run: Path, model: MultimodalVAE, manifest: dict) -> None:
    """model.safetensors holds the VAE, ebm.safetensors the energy (when there is one)."""
    state = model.state_dict()
    bundle.write_weights(run, WEIGHTS, {k: v for k, v in state.items() if not k.startswith("ebm.")}, manifest)
    if model.ebm is not None:
        bundle.write_weights(run, EBM_WEIGHTS, model.ebm.state_dict(), manifest)
    bundle.save_manifest(run, manifest)


def save_checkpoint(run: Path, model, opt, manifest: dict, epoch: int, step: int, partial: dict | None = None,
                    scaler=None, dist: Dist | None = None) -> None:
    """checkpoint.safetensors (weights, optimizer, every rank's RNG) + the manifest's training_state
    (position, optimizer hyperparameters, partial-epoch sums), written together by rank 0."""
    dist = dist or Dist()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = bundle.flatten_optimizer(opt)
    tensors.update(opt_tensors)
    tensors.update(capture_rng(dist))
    state = {"epoch": epoch, "step": step, "optimizer": opt_meta, "world_size": dist.world,
             "partial": partial or {"sums": {}, "seen": 0}}
    if scaler is not None:
        state["scaler"] = {k: v for k, v in scaler.state_dict().items()}
    write_checkpoint(run, CHECKPOINT, tensors, manifest, "training_state", state, dist)


def restore_checkpoint(run: Path, model, opt, manifest: dict, scaler=None, dist: Dist | None = None,
                       seed: int = 0) -> tuple[int, int]:
    dist = dist or Dist()
    tensors, state = read_checkpoint(run, CHECKPOINT, manifest, "training_state")
    bundle.load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(run))
    opt.load_state_dict(bundle.unflatten_optimizer(tensors, state["optimizer"]))
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if not restore_rng(tensors, dist, seed, int(state["step"])):
        print(f"warning: rank {dist.rank}: the checkpoint was written by {state.get('world_size', 1)} process(es); "
              "this rank's noise is reseeded, so the run is not bit-identical to an uninterrupted one",
              file=sys.stderr, flush=True)
    return int(state["epoch"]), int(state["step"])



def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


@dataclass
class Runtime:
    """How a run executes (not what it computes): recorded in the manifest, reused by --resume."""

    precision: str = "fp32"       # fp32 | bf16 | fp16 (autocast of the networks; fp16 with a gradient scaler)
    compile: bool = False         # torch.compile every encoder and decoder
    channels_last: bool = False   # channels-last convolutions
    step_delay: float = 0.0       # hidden: sleep after every step (tests of signal handling)

    def to_dict(self) -> dict:
        return {"precision": self.precision, "compile": self.compile, "channels_last": self.channels_last}


def place_data(data: MultimodalData, device: torch.device) -> MultimodalData:
    """The dataset moved to a CUDA `device` when it fits in half its free memory (batches are then pure
    on-device index gathers); otherwise unchanged (gathered on the host, copied per batch)."""
    if device.type != "cuda":
        return data
    gathered = isinstance(data.tensors, GatheredTensors)
    parts = list(data.tensors.store.values()) + list(data.tensors.index.values()) if gathered else \
        list(data.tensors.values())
    nbytes = sum(t.numel() * t.element_size() for t in parts)
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes > free // 2:
        log(f"data ({nbytes / 2**30:.1f} GiB) does not fit on {device}: batches are gathered on the host")
        return data
    if gathered:
        tensors = GatheredTensors({m: t.to(device) for m, t in data.tensors.store.items()},
                                  {m: i.to(device) for m, i in data.tensors.index.items()})
    else:
        tensors = {m: t.to(device) for m, t in data.tensors.items()}
    return replace(data, tensors=tensors, labels=None)


def _data_device(data: MultimodalData) -> torch.device:
    t = data.tensors.store if isinstance(data.tensors, GatheredTensors) else data.tensors
    return next(iter(t.values())).device


def _reduce(sums: dict[str, float], seen: int, dist: Dist) -> tuple[dict[str, float], int]:
    """Sample-weighted statistic sums and the sample count over all ranks."""
    if not dist.enabled:
        return dict(sums), seen
    keys = sorted(sums)
    total = dist.sum(torch.tensor([float(seen)] + [sums[k] for k in keys], dtype=torch.float64))
    return {k: float(v) for k, v in zip(keys, total[1:].tolist())}, int(total[0].item())


def fit(model: MultimodalVAE, data: MultimodalData, run: Path, manifest: dict, t: dict, device: torch.device,
        resume: bool = False, log_jsonl: str | None = None, max_steps: int | None = None,
        runtime: Runtime | None = None, dist: Dist | None = None) -> dict:
    """Train `model` on `data` with the resolved train settings `t`, writing the bundle in `run`.

    Checkpoints at the end of every epoch and when SIGTERM/SIGUSR1 arrives (then raises Interrupted).
    `max_steps` stops after that many optimisation steps in this call (for tests and benchmarks).
    With `dist` (several processes), every rank calls fit; rank 0 alone writes."""
    rt, dist = runtime or Runtime(), dist or Dist()
    amp = autocast_dtype(rt.precision, device)
    model.to(device)
    speed_up(model, rt.channels_last, rt.compile)
    model.amp_dtype, model.channels_last = amp, rt.channels_last
    opt = make_optimizer(model, t)
    scaler = make_scaler(rt.precision, device)
    seed = int(t["seed"])
    start_epoch, start_step, partial = 0, 0, {"sums": {}, "seen": 0}
    if resume:
        start_epoch, start_step = restore_checkpoint(run, model, opt, manifest, scaler, dist, seed)
        partial = manifest["training_state"].get("partial") or partial
        main_log(dist, f"resuming {run} at epoch {start_epoch + 1}, step {start_step}")
    else:
        torch.manual_seed(noise_seed(seed, dist.rank))
    model.train()
    net = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    data = place_data(data, device)
    on = _data_device(data)
    n, bs, epochs = len(data), int(t["batch_size"]), int(t["epochs"])
    if bs < dist.world:
        raise MMVAEError(f"--batch-size {bs} is the global batch: it must be at least the number of processes "
                         f"({dist.world})")
    steps_per_epoch = (n + bs - 1) // bs
    history = manifest.setdefault("history", [])
    done = 0
    stop = StopFlag()
    with stop.installed():
        for epoch in range(start_epoch, epochs):
            perm = epoch_permutation(n, seed, epoch)
            first = start_step if epoch == start_epoch else 0
            sums: dict[str, float] = {}
            seen = 0
            if first and dist.is_main:  # the partial epoch's (global) sums were saved with the checkpoint
                sums, seen = {k: float(v) for k, v in partial.get("sums", {}).items()}, int(partial.get("seen", 0))
            t0 = time.time()
            bar = progress(range(first, steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", total=steps_per_epoch,
                           initial=first, disable=not dist.is_main)
            for step in bar:
                gidx = perm[step * bs:(step + 1) * bs]
                idx = dist.shard(gidx)
                x = data.batch(idx.to(on), device)
                loss, stats = net(x)
                bad, stopping = not bool(torch.isfinite(loss)), bool(stop)
                if dist.enabled:   # one collective per step: every rank raises or stops together
                    flags = dist.sum(torch.tensor([float(bad), float(stopping)]))
                    bad, stopping = bool(flags[0] > 0), bool(flags[1] > 0)
                if bad:
                    raise NumericalError(f"loss became non-finite at epoch {epoch + 1}, step {step + 1}; "
                                         "try a lower --lr (the last good checkpoint is kept for --resume)")
                if len(idx) * dist.world != len(gidx):   # uneven shards: DDP's average = global-batch mean
                    loss = loss * (len(idx) * dist.world / len(gidx))
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
                seen += len(idx)
                bar.set_postfix(loss=f"{stats['loss']:.1f}")
                done += 1
                if rt.step_delay:
                    time.sleep(rt.step_delay)
                if stopping or (max_steps is not None and done >= max_steps and step + 1 < steps_per_epoch):
                    g_sums, g_seen = _reduce(sums, seen, dist)
                    save_checkpoint(run, model, opt, manifest, epoch, step + 1, {"sums": g_sums, "seen": g_seen},
                                    scaler, dist)
                    if stopping:
                        raise Interrupted(f"stopped by signal {stop.signal or 'on another rank'}: checkpoint "
                                          f"written to {run}; continue with --resume")
                    return manifest
            sums, seen = _reduce(sums, seen, dist)
            summary = {"epoch": epoch + 1, **{k: v / max(seen, 1) for k, v in sums.items()},
                       "seconds": round(time.time() - t0, 2)}
            history.append(summary)
            main_log(dist, f"epoch {epoch + 1}/{epochs}  " +
                     "  ".join(f"{k} {v:.4g}" for k, v in summary.items() if k != "epoch"))
            if log_jsonl and dist.is_main:
                with open(log_jsonl, "a") as f:
                    f.write(json.dumps({"event": "epoch", "run": str(run), **summary}) + "\n")
            manifest["epochs_done"] = epoch + 1
            if dist.is_main:
                save_bundle(run, model, manifest)
            save_checkpoint(run, model, opt, manifest, epoch + 1, 0, None, scaler, dist)
            if max_steps is not None and done >= max_steps:
                return manifest
    manifest["finished"] = bundle.now()
    if dist.is_main:
        bundle.save_manifest(run, manifest)
    return manifest
