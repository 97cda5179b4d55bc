"""`mmvae train` and `mmvae classifier train`."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from .. import bundle
from ..data import load_dataset
from ..ebm import EnergyConfig
from ..errors import MMVAEError
from ..model import MultimodalVAE
from ..recipes import resolve
from ..runtime import PRECISIONS, autocast_dtype, init_distributed, shutdown_distributed
from ..console import log
from ..train import Runtime, ebm_from_section, fit, main_log, model_config, pick_device
from . import options


@click.command()
@click.argument("dataset")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder to write (default: runs/DATASET-FUSION).")
@click.option("--fusion", type=click.Choice(["poe", "moe", "mopoe", "none"]), default=None,
              help="poe = MVAE (product of experts with the prior expert), moe = MMVAE (mixture of experts), "
                   "mopoe = MoPoE (mixture over all subsets' products), none = EB-MVAE's independent "
                   "unimodal VAEs (one beta-VAE per modality, --latent-dim each; couple them with "
                   "`mmvae fit-ebm`). Default: the recipe's, else mopoe.")
@click.option("--objective", type=click.Choice(["elbo", "iwae", "dreg", "mvae"]), default=None,
              help="Default: the recipe's, else mvae for poe, iwae for moe, elbo for mopoe. elbo: generalised multimodal ELBO; iwae/dreg: stratified IWAE of MMVAE with K samples "
                   "(dreg = doubly-reparameterised gradients); mvae: MVAE's sub-sampled sum of the joint and "
                   "unimodal ELBOs (NOT a bound on log p(X)).")
@click.option("--k", type=int, default=None, help="Importance samples for iwae/dreg.")
@click.option("--mvae-subsets", type=int, default=None,
              help="MVAE (--objective mvae): also add the ELBOs of this many random subsets of 2..M-1 "
                   "modalities per step (Wu & Goodman's sub-sampling); default 0.")
@click.option("--private-dim", type=int, default=None,
              help="MMVAE+: size of each modality's private latent w_m (with --fusion moe, --objective iwae|dreg); "
                   "decoding a modality without its input draws w_m from its learned prior p(w_m).")
@click.option("--subsets", default=None, help='MoPoE mixture subsets: "all", "unimodal+full", or "m0,m1;m2;...".')
@click.option("--posterior", type=click.Choice(["gaussian", "laplace"]), default=None)
@click.option("--prior", type=click.Choice(["gaussian", "laplace", "ebm"]), default=None,
              help="Prior p(z). ebm: the energy-based prior exp(-E(z)) p0(z) of Yuan et al. trained jointly "
                   "(Algorithm 1), p0 the recipe's base prior; see --langevin-steps, --step-size, --ebm-lr.")
@click.option("--learn-prior/--fixed-prior", default=None, help="Learn the prior's scale.")
@click.option("--likelihood", default=None,
              help="laplace, gaussian, bernoulli or categorical: one for every modality, or per modality as "
                   "NAME=KIND,... (e.g. mnist=bernoulli,svhn=laplace; unnamed modalities: laplace).")
@click.option("--rescale/--no-rescale", default=None, help="Weight log p(x_m|z) by (largest modality size / size of m).")
@click.option("--arch", default=None,
              help="Networks: conv28, conv32, conv (sized to any C,H,W), mlp; one for all or NAME=ARCH,... "
                   "(default by shape: vectors and 1x28x28 -> mlp, Cx28x28 -> conv28, Cx32x32 -> conv32, "
                   "other images -> conv).")
@click.option("--recipe", type=click.Path(dir_okay=False), default=None,
              help="TOML recipe (default: recipes/<family>-<model>.toml when it exists).")
@click.option("--schedule", default=None, help="Recipe schedule to apply, e.g. cpu (automatic for *-mini data).")
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--beta", type=float, default=None)
@click.option("--latent-dim", type=int, default=None)
@click.option("--seed", type=int, default=None)
@options.device
@options.data_root
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint "
                                            "(with --epochs: train a finished run for longer).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
@click.option("--log-jsonl", type=click.Path(dir_okay=False), default=None, help="Append one JSON line per epoch.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="fp32 (default), bf16 (autocast; CPU or recent GPUs) or fp16 (autocast + gradient scaler; "
                   "CUDA only). The networks run in this precision; the probabilistic math stays fp32.")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the encoders and decoders.")
@click.option("--channels-last/--no-channels-last", default=None, help="Channels-last convolutions.")
@click.option("--distributed", is_flag=True,
              help="Data-parallel training under torchrun or srun (automatic under torchrun); --batch-size is "
                   "the global batch. See docs/cluster.md.")
@click.option("--max-steps", type=int, default=None, hidden=True, help="Stop after N steps (tests, benchmarks).")
@click.option("--step-delay", type=float, default=0.0, hidden=True, help="Sleep after every step (tests).")
@options.energy_net
@options.langevin_fit
@click.option("--ebm-lr", type=float, default=2e-5, show_default=True,
              help="--prior ebm: Adam learning rate of the energy (LEBM's; Yuan et al. give none).")
@click.option("--ebm-betas", type=(float, float), default=(0.5, 0.999), show_default=True, metavar="B1 B2",
              help="--prior ebm: Adam betas of the energy (LEBM's).")
def train(dataset, out, fusion, objective, k, mvae_subsets, private_dim, subsets, posterior, prior, learn_prior,
          likelihood, rescale, arch, recipe, schedule, epochs, batch_size, lr, beta, latent_dim, seed, device,
          data_root, resume, overwrite, log_jsonl, precision, compile_, channels_last, distributed, max_steps,
          step_delay, energy_hidden, energy_layers, energy_activation, langevin_steps, step_size, noise_scale,
          clip_grad, ebm_lr, ebm_betas):
    """Train a multimodal VAE on DATASET (polymnist, polymnist-mini, mnist-svhn, or a .safetensors path).

    Settings come from the recipe for the dataset and model (recipes/), its short `cpu` schedule for
    *-mini datasets, then these flags; the run's manifest records the resolved values.
    SIGTERM/SIGUSR1 write a checkpoint and exit with code 75; --resume continues.
    Data-parallel: `torchrun --nproc-per-node N -m mmvae_cli train ...` (gloo on CPU, NCCL on GPU).
    """
    out = Path(out or f"runs/{Path(dataset).stem}-{fusion or 'mopoe'}")
    if precision is not None:
        autocast_dtype(precision, pick_device(device))     # refuse impossible combinations before anything runs
    dist, dev = init_distributed(device, required=distributed)
    try:
        _train(dict(locals()), out, dev, dist)
    finally:
        shutdown_distributed(dist)


def _runtime(recorded: dict, precision, compile_, channels_last, step_delay) -> Runtime:
    """Flags given now, else the values the run recorded, else the defaults."""
    pick = lambda given, key, default: given if given is not None else recorded.get(key, default)  # noqa: E731
    return Runtime(pick(precision, "precision", "fp32"), bool(pick(compile_, "compile", False)),
                   bool(pick(channels_last, "channels_last", False)), float(step_delay or 0.0))


def _train(o: dict, out: Path, dev, dist):
    """The body of `train`; `o` holds the command's options by name."""
    dataset, data_root, log_jsonl, max_steps = o["dataset"], o["data_root"], o["log_jsonl"], o["max_steps"]
    precision, compile_, channels_last, step_delay = o["precision"], o["compile_"], o["channels_last"], o["step_delay"]
    if o["resume"]:
        manifest = bundle.read_manifest(out, kind="mmvae")
        settings = manifest["settings"]
        data = load_dataset(manifest["dataset"]["name_or_path"], "train", data_root)
        if data.fingerprint != manifest["dataset"]["fingerprint"]:
            raise MMVAEError(f"{out}: the dataset changed since this run started (fingerprint differs)")
        model = MultimodalVAE(model_config(data, settings["model"]))
        if o["epochs"] is not None and o["epochs"] != settings["train"]["epochs"]:
            done = int(manifest.get("epochs_done", 0))
            if o["epochs"] < done:
                raise MMVAEError(f"--epochs {o['epochs']}: {out} has already trained {done} epochs")
            main_log(dist, f"extending {out} from {settings['train']['epochs']} to {o['epochs']} epochs")
            settings["train"]["epochs"] = o["epochs"]
            manifest.pop("finished", None)
        if manifest.get("ebm"):
            if manifest["ebm"].get("training") != "joint":
                raise MMVAEError(f"{out} has a post-hoc energy (fit-ebm): training cannot be resumed under it")
            model.attach_ebm(*ebm_from_section(manifest["ebm"], str(out)))
        rt = _runtime(manifest.get("runtime", {}), precision, compile_, channels_last, step_delay)
        manifest["runtime"] = {**rt.to_dict(), "world_size": dist.world}
        fit(model, data, out, manifest, settings["train"], dev, resume=True, log_jsonl=log_jsonl, max_steps=max_steps,
            runtime=rt, dist=dist)
        main_log(dist, f"wrote {out}")
        return
    exists = (out / bundle.MANIFEST).exists()
    dist.barrier()   # every rank has looked before rank 0 writes
    if exists and not o["overwrite"]:
        raise MMVAEError(f"{out} already holds a run; use --resume to continue it or --overwrite to replace it")
    joint_ebm = o["prior"] == "ebm"
    if joint_ebm and o["fusion"] == "none":
        raise MMVAEError("--prior ebm learns a prior over a shared latent; EB-MVAE (--fusion none) gets its "
                         "energy after training: `mmvae fit-ebm RUN`")
    overrides = {k: o[k] for k in ("fusion", "objective", "k", "private_dim", "subsets", "posterior", "prior",
                                   "learn_prior", "likelihood", "rescale", "arch", "epochs", "batch_size", "lr",
                                   "beta", "latent_dim", "seed")}
    if joint_ebm:
        overrides["prior"] = None           # the base prior p0 comes from the recipe
    mvae_subsets = o["mvae_subsets"]
    if mvae_subsets is not None:
        if mvae_subsets < 0:
            raise MMVAEError(f"--mvae-subsets must be >= 0, got {mvae_subsets}")
        overrides["extra"] = {"mvae_k": mvae_subsets}
    settings = resolve(Path(dataset).stem if dataset.endswith(".safetensors") else dataset, o["recipe"], overrides,
                       o["schedule"])
    if joint_ebm and settings["model"]["fusion"] == "none":
        raise MMVAEError("--prior ebm learns a prior over a shared latent; EB-MVAE (--fusion none) gets its "
                         "energy after training: `mmvae fit-ebm RUN`")
    data = load_dataset(dataset, "train", data_root)
    torch.manual_seed(int(settings["train"]["seed"]))   # the initial weights are part of the seeded run
    model = MultimodalVAE(model_config(data, settings["model"]))
    rt = _runtime({}, precision, compile_, channels_last, step_delay)
    ebm_section = None
    if joint_ebm:
        try:
            energy = EnergyConfig(dim=model.z_dim, hidden=o["energy_hidden"], layers=o["energy_layers"],
                                  activation=o["energy_activation"] or "gelu")
        except MMVAEError as e:
            raise MMVAEError(f"--energy-*: {e}") from None
        langevin = {"steps": o["langevin_steps"], "step_size": o["step_size"], "noise_scale": o["noise_scale"],
                    "clip_grad": o["clip_grad"]}
        ebm_section = {"energy": energy.to_dict(), "density": "tilted", "training": "joint", "objective": "ml",
                       "langevin": langevin}
        settings["train"].update(ebm_lr=o["ebm_lr"], ebm_betas=list(o["ebm_betas"]))
        model.attach_ebm(*ebm_from_section(ebm_section, str(out)))
    manifest = bundle.new_manifest(
        "mmvae",
        dataset={"name": data.name, "name_or_path": dataset, "fingerprint": data.fingerprint, "size": len(data)},
        modalities=[{"name": m.name, "shape": m.shape, "likelihood": m.likelihood, "scale": m.scale,
                     "rescale": m.rescale} for m in model.config.modalities],
        model=model.config.to_dict(), settings=settings, seed=settings["train"]["seed"],
        parameters=sum(p.numel() for p in model.parameters()), history=[],
        runtime={**rt.to_dict(), "world_size": dist.world})
    if ebm_section is not None:
        manifest["ebm"] = ebm_section
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in ("model.safetensors", "checkpoint.safetensors", "ebm.safetensors"):
            (out / stale).unlink(missing_ok=True)
        bundle.save_manifest(out, manifest)
    dist.barrier()
    m, t = settings["model"], settings["train"]
    main_log(dist, f"training {m['fusion']}/{m['objective']} on {data.name} ({len(data)} tuples, {len(data.modalities)} "
        f"modalities) for {t['epochs']} epochs, batch {t['batch_size']}, lr {t['lr']}, beta {m['beta']}, "
        f"latent {m['latent_dim']}, device {dev}, precision {rt.precision}"
        f"{f', {dist.world} processes' if dist.enabled else ''}  "
        f"[recipe {settings['recipe']}, schedule {settings['schedule']}]")
    if ebm_section is not None:
        main_log(dist, f"  with a jointly trained energy-based prior: {energy.layers} layers of {energy.hidden} "
                 f"units, Langevin {o['langevin_steps']} steps of size {o['step_size']:g}, energy lr "
                 f"{o['ebm_lr']:g}, betas {tuple(o['ebm_betas'])}")
    fit(model, data, out, manifest, t, dev, log_jsonl=log_jsonl, max_steps=max_steps, runtime=rt, dist=dist)
    main_log(dist, f"wrote {out}")


@click.group()
def classifier():
    """Digit classifiers used to measure coherence."""


@classifier.command("train")
@click.argument("dataset")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Bundle folder to write.")
@click.option("--epochs", type=int, default=40, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@options.seed
@options.device
@options.data_root
@options.json_flag
def classifier_train(dataset, out, epochs, batch_size, lr, seed, device, data_root, as_json):
    """Train one digit classifier per modality of DATASET and report test accuracy per modality."""
    from ..classifier import train_classifiers
    train_data = load_dataset(dataset, "train", data_root)
    test_data = load_dataset(dataset, "test", data_root)
    manifest = train_classifiers(train_data, test_data, Path(out), epochs, batch_size, lr, seed, pick_device(device))
    acc = manifest["test_accuracy"]
    if as_json:
        click.echo(json.dumps({"test_accuracy": acc}))
    else:
        click.echo("modality  test accuracy")
        for n, a in acc.items():
            click.echo(f"{n:<9} {a:.4f}")
    log(f"wrote {out}")
