"""The training loop: uint8 batches gathered on the device, checkpoints, signals, resume.

Determinism: the epoch-e permutation comes from a generator seeded with (seed, e), and the
global RNG state (reparameterisation noise) is saved in every checkpoint, so a resumed run on
the CPU takes exactly the same steps as an uninterrupted one.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from . import bundle
from .data.base import MultimodalData
from .errors import BundleError, Interrupted, MMVAEError, NumericalError
from .distributions import LIKELIHOODS
from .model import ModalitySpec, ModelConfig, MultimodalVAE
from .nets import ARCHS

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "model.safetensors"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MMVAEError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def progress(iterable, **kw):
    """tqdm on stderr, off when stderr is not a terminal."""
    return tqdm(iterable, file=sys.stderr, disable=not sys.stderr.isatty(), leave=False, **kw)


class StopFlag:
    """Set by SIGTERM / SIGUSR1; the loop checkpoints at the next step and exits with code 75."""

    def __init__(self):
        self.signal = None

    def __bool__(self):
        return self.signal is not None

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
                          float(largest / sizes[n]) if m["rescale"] else 1.0, arch[n])
             for n in names]
    extra = dict(m.get("extra", {}) or {})
    return ModelConfig(specs, int(m["latent_dim"]), m["fusion"], m["subsets"], m["objective"], int(m["k"]),
                       float(m["beta"]), m["posterior"], m["prior"], bool(m["learn_prior"]), None, extra,
                       private_dim=int(m.get("private_dim", 0) or 0))


def make_optimizer(model: torch.nn.Module, t: dict) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=float(t["lr"]), betas=tuple(t["adam_betas"]),
                            amsgrad=bool(t["amsgrad"]))


def load_model(run: Path, device: str | torch.device = "cpu") -> tuple[MultimodalVAE, dict]:
    """Rebuild a trained model from its bundle (weights checked against the manifest)."""
    manifest = bundle.read_manifest(run, kind="mmvae")
    try:
        config = ModelConfig.from_dict(manifest["model"])
    except (KeyError, TypeError) as e:
        raise BundleError(f"{run}: manifest has an invalid model section ({e})") from None
    model = MultimodalVAE(config)
    bundle.load_state(model, bundle.read_weights(run, WEIGHTS, manifest), str(run))
    return model.to(device).eval(), manifest


def save_bundle(run: Path, model: MultimodalVAE, manifest: dict) -> None:
    bundle.write_weights(run, WEIGHTS, model.state_dict(), manifest)
    bundle.save_manifest(run, manifest)


def save_checkpoint(run: Path, model, opt, manifest: dict, epoch: int, step: int) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = bundle.flatten_optimizer(opt)
    tensors.update(opt_tensors)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    state = {"epoch": epoch, "step": step, "optimizer": opt_meta, "history": manifest.get("history", [])}
    bundle.write_weights(run, CHECKPOINT, tensors, manifest)
    manifest["training_state"] = state
    bundle.save_manifest(run, manifest)


def restore_checkpoint(run: Path, model, opt, manifest: dict) -> tuple[int, int]:
    tensors = bundle.read_weights(run, CHECKPOINT, manifest)
    state = manifest.get("training_state")
    if state is None:
        raise BundleError(f"{run}: checkpoint has no training state in the manifest")
    bundle.load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(run))
    opt.load_state_dict(bundle.unflatten_optimizer(tensors, state["optimizer"]))
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    return int(state["epoch"]), int(state["step"])


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def fit(model: MultimodalVAE, data: MultimodalData, run: Path, manifest: dict, t: dict, device: torch.device,
        resume: bool = False, log_jsonl: str | None = None, max_steps: int | None = None) -> dict:
    """Train `model` on `data` with the resolved train settings `t`, writing the bundle in `run`.

    Checkpoints at the end of every epoch and when SIGTERM/SIGUSR1 arrives (then raises Interrupted).
    `max_steps` stops after that many optimisation steps in this call (for tests and benchmarks)."""
    opt = make_optimizer(model, t)
    start_epoch, start_step = 0, 0
    if resume:
        start_epoch, start_step = restore_checkpoint(run, model, opt, manifest)
        log(f"resuming {run} at epoch {start_epoch + 1}, step {start_step}")
    else:
        torch.manual_seed(int(t["seed"]))
    model.to(device).train()
    n, bs, epochs, seed = len(data), int(t["batch_size"]), int(t["epochs"]), int(t["seed"])
    steps_per_epoch = (n + bs - 1) // bs
    history = manifest.setdefault("history", [])
    done = 0
    stop = StopFlag()
    with stop.installed():
        for epoch in range(start_epoch, epochs):
            perm = epoch_permutation(n, seed, epoch)
            sums: dict[str, float] = {}
            seen = 0
            t0 = time.time()
            first = start_step if epoch == start_epoch else 0
            if first:  # partial-epoch sums were saved with the checkpoint
                partial = manifest.get("training_state", {}).get("partial", {})
                sums, seen = dict(partial.get("sums", {})), int(partial.get("seen", 0))
            bar = progress(range(first, steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", total=steps_per_epoch,
                           initial=first)
            for step in bar:
                idx = perm[step * bs:(step + 1) * bs]
                x = data.batch(idx, device)
                loss, stats = model(x)
                if not torch.isfinite(loss):
                    raise NumericalError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                                         "try a lower --lr (the last good checkpoint is kept for --resume)")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
                seen += len(idx)
                bar.set_postfix(loss=f"{stats['loss']:.1f}")
                done += 1
                if stop or (max_steps is not None and done >= max_steps and step + 1 < steps_per_epoch):
                    manifest.setdefault("training_state", {})
                    save_checkpoint(run, model, opt, manifest, epoch, step + 1)
                    manifest["training_state"]["partial"] = {"sums": sums, "seen": seen}
                    bundle.save_manifest(run, manifest)
                    if stop:
                        raise Interrupted(f"stopped by signal {stop.signal}: checkpoint written to {run}; "
                                          f"continue with --resume")
                    return manifest
            summary = {"epoch": epoch + 1, **{k: v / max(seen, 1) for k, v in sums.items()},
                       "seconds": round(time.time() - t0, 2)}
            history.append(summary)
            log(f"epoch {epoch + 1}/{epochs}  " + "  ".join(f"{k} {v:.4g}" for k, v in summary.items() if k != "epoch"))
            if log_jsonl:
                with open(log_jsonl, "a") as f:
                    f.write(json.dumps({"event": "epoch", "run": str(run), **summary}) + "\n")
            manifest["epochs_done"] = epoch + 1
            save_bundle(run, model, manifest)
            save_checkpoint(run, model, opt, manifest, epoch + 1, 0)
            if max_steps is not None and done >= max_steps:
                return manifest
    manifest["finished"] = bundle.now()
    bundle.save_manifest(run, manifest)
    return manifest
