"""`mmvae train` and `mmvae classifier train`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import bundle
from ..data import load_dataset
from ..ebm import EnergyConfig
from ..errors import MMVAEError
from ..model import MultimodalVAE
from ..recipes import resolve
from ..train import ebm_from_section, fit, log, model_config, pick_device
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
              help="elbo: generalised multimodal ELBO; iwae/dreg: stratified IWAE of MMVAE with K samples "
                   "(dreg = doubly-reparameterised gradients); mvae: MVAE's sub-sampled sum of the joint and "
                   "unimodal ELBOs (NOT a bound on log p(X)).")
@click.option("--k", type=int, default=None, help="Importance samples for iwae/dreg.")
@click.option("--subsets", default=None, help='MoPoE mixture subsets: "all", "unimodal+full", or "m0,m1;m2;...".')
@click.option("--posterior", type=click.Choice(["gaussian", "laplace"]), default=None)
@click.option("--prior", type=click.Choice(["gaussian", "laplace", "ebm"]), default=None,
              help="Prior p(z). ebm: the energy-based prior exp(-E(z)) p0(z) of Yuan et al. trained jointly "
                   "(Algorithm 1), p0 the recipe's base prior; see --langevin-steps, --step-size, --ebm-lr.")
@click.option("--learn-prior/--fixed-prior", default=None, help="Learn the prior's scale.")
@click.option("--likelihood", type=click.Choice(["laplace", "gaussian", "bernoulli", "categorical"]), default=None,
              help="Likelihood of every modality.")
@click.option("--rescale/--no-rescale", default=None, help="Weight log p(x_m|z) by (largest modality size / size of m).")
@click.option("--arch", default=None, help="Networks: conv28, conv32, mlp (default: by data shape).")
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
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
@click.option("--log-jsonl", type=click.Path(dir_okay=False), default=None, help="Append one JSON line per epoch.")
@click.option("--max-steps", type=int, default=None, hidden=True, help="Stop after N steps (tests, benchmarks).")
@options.energy_net
@options.langevin_fit
@click.option("--ebm-lr", type=float, default=2e-5, show_default=True,
              help="--prior ebm: Adam learning rate of the energy (LEBM's; Yuan et al. give none).")
@click.option("--ebm-betas", type=(float, float), default=(0.5, 0.999), show_default=True, metavar="B1 B2",
              help="--prior ebm: Adam betas of the energy (LEBM's).")
def train(dataset, out, fusion, objective, k, subsets, posterior, prior, learn_prior, likelihood, rescale, arch,
          recipe, schedule, epochs, batch_size, lr, beta, latent_dim, seed, device, data_root, resume, overwrite,
          log_jsonl, max_steps, energy_hidden, energy_layers, energy_activation, langevin_steps, step_size,
          noise_scale, clip_grad, ebm_lr, ebm_betas):
    """Train a multimodal VAE on DATASET (polymnist, polymnist-mini, mnist-svhn, or a .safetensors path).

    Settings come from the recipe for the dataset and model (recipes/), its short `cpu` schedule for
    *-mini datasets, then these flags; the run's manifest records the resolved values.
    SIGTERM/SIGUSR1 write a checkpoint and exit with code 75; --resume continues.
    """
    out = Path(out or f"runs/{Path(dataset).stem}-{fusion or 'mopoe'}")
    dev = pick_device(device)
    if resume:
        manifest = bundle.read_manifest(out, kind="mmvae")
        settings = manifest["settings"]
        data = load_dataset(manifest["dataset"]["name_or_path"], "train", data_root)
        if data.fingerprint != manifest["dataset"]["fingerprint"]:
            raise MMVAEError(f"{out}: the dataset changed since this run started (fingerprint differs)")
        model = MultimodalVAE(model_config(data, settings["model"]))
        if manifest.get("ebm"):
            if manifest["ebm"].get("training") != "joint":
                raise MMVAEError(f"{out} has a post-hoc energy (fit-ebm): training cannot be resumed under it")
            model.attach_ebm(*ebm_from_section(manifest["ebm"], str(out)))
        fit(model, data, out, manifest, settings["train"], dev, resume=True, log_jsonl=log_jsonl, max_steps=max_steps)
        log(f"wrote {out}")
        return
    if (out / bundle.MANIFEST).exists() and not overwrite:
        raise MMVAEError(f"{out} already holds a run; use --resume to continue it or --overwrite to replace it")
    joint_ebm = prior == "ebm"
    if joint_ebm and fusion == "none":
        raise MMVAEError("--prior ebm learns a prior over a shared latent; EB-MVAE (--fusion none) gets its "
                         "energy after training: `mmvae fit-ebm RUN`")
    overrides = {"fusion": fusion, "objective": objective, "k": k, "subsets": subsets, "posterior": posterior,
                 "prior": None if joint_ebm else prior, "learn_prior": learn_prior, "likelihood": likelihood, "rescale": rescale,
                 "arch": arch, "epochs": epochs, "batch_size": batch_size, "lr": lr, "beta": beta,
                 "latent_dim": latent_dim, "seed": seed}
    settings = resolve(Path(dataset).stem if dataset.endswith(".safetensors") else dataset, recipe, overrides,
                       schedule)
    if joint_ebm and settings["model"]["fusion"] == "none":
        raise MMVAEError("--prior ebm learns a prior over a shared latent; EB-MVAE (--fusion none) gets its "
                         "energy after training: `mmvae fit-ebm RUN`")
    data = load_dataset(dataset, "train", data_root)
    model = MultimodalVAE(model_config(data, settings["model"]))
    ebm_section = None
    if joint_ebm:
        try:
            energy = EnergyConfig(dim=model.z_dim, hidden=energy_hidden, layers=energy_layers,
                                  activation=energy_activation or "gelu")
        except MMVAEError as e:
            raise MMVAEError(f"--energy-*: {e}") from None
        langevin = {"steps": langevin_steps, "step_size": step_size, "noise_scale": noise_scale,
                    "clip_grad": clip_grad}
        ebm_section = {"energy": energy.to_dict(), "density": "tilted", "training": "joint", "objective": "ml",
                       "langevin": langevin}
        settings["train"].update(ebm_lr=ebm_lr, ebm_betas=list(ebm_betas))
        model.attach_ebm(*ebm_from_section(ebm_section, str(out)))
    manifest = bundle.new_manifest(
        "mmvae",
        dataset={"name": data.name, "name_or_path": dataset, "fingerprint": data.fingerprint, "size": len(data)},
        modalities=[{"name": m.name, "shape": m.shape, "likelihood": m.likelihood, "scale": m.scale,
                     "rescale": m.rescale} for m in model.config.modalities],
        model=model.config.to_dict(), settings=settings, seed=settings["train"]["seed"],
        parameters=sum(p.numel() for p in model.parameters()), history=[])
    if ebm_section is not None:
        manifest["ebm"] = ebm_section
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("model.safetensors", "checkpoint.safetensors", "ebm.safetensors"):
        (out / stale).unlink(missing_ok=True)
    bundle.save_manifest(out, manifest)
    m, t = settings["model"], settings["train"]
    log(f"training {m['fusion']}/{m['objective']} on {data.name} ({len(data)} tuples, {len(data.modalities)} "
        f"modalities) for {t['epochs']} epochs, batch {t['batch_size']}, lr {t['lr']}, beta {m['beta']}, "
        f"latent {m['latent_dim']}, device {dev}  [recipe {settings['recipe']}, schedule {settings['schedule']}]")
    if ebm_section is not None:
        log(f"  with a jointly trained energy-based prior: {energy.layers} layers of {energy.hidden} units, "
            f"Langevin {langevin_steps} steps of size {step_size:g}, energy lr {ebm_lr:g}, betas {tuple(ebm_betas)}")
    fit(model, data, out, manifest, t, dev, log_jsonl=log_jsonl, max_steps=max_steps)
    log(f"wrote {out}")


@click.group()
def classifier():
    """Digit classifiers used to measure coherence."""


@classifier.command("train")
@click.argument("dataset")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Bundle folder to write.")
@click.option("--epochs", type=int, default=10, show_default=True)
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
