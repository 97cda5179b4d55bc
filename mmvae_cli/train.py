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
from .ebm import LatentEBM
from .errors import BundleError, Interrupted, MMVAEError, NumericalError
from .model import ModalitySpec, ModelConfig, MultimodalVAE

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "model.safetensors"
EBM_WEIGHTS = "ebm.safetensors"


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


def model_config(data: MultimodalData, m: dict) -> ModelConfig:
    """ModelConfig for `data` from resolved model settings."""
    sizes = {n: int(torch.tensor(data.shape(n)).prod()) for n in data.modalities}
    largest = max(sizes.values())
    specs = [ModalitySpec(n, list(data.shape(n)), m["likelihood"], float(m["likelihood_scale"]),
                          float(largest / sizes[n]) if m["rescale"] else 1.0, m["arch"])
             for n in data.modalities]
    extra = dict(m.get("extra", {}) or {})
    return ModelConfig(specs, int(m["latent_dim"]), m["fusion"], m["subsets"], m["objective"], int(m["k"]),
                       float(m["beta"]), m["posterior"], m["prior"], bool(m["learn_prior"]), None, extra)


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
