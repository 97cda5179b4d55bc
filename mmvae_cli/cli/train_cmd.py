"""`mmvae train` and `mmvae classifier train`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import config
from ..console import log
from ..data import load_dataset
from ..registry import FAMILIES
from ..run import check_new_output
from ..runtime import pick_device, shutdown_distributed
from . import options


@click.command()
@click.argument("dataset")
@click.option(
    "--out", type=click.Path(file_okay=False), default=None, help="Run folder to write (default: runs/DATASET-FUSION)."
)
@click.option(
    "--prior",
    type=click.Choice([*FAMILIES, "ebm"]),
    default=None,
    help="Prior p(z): the base prior's family, or ebm: the energy-based prior exp(-E(z)) p0(z) of "
    "Yuan et al. trained jointly (Algorithm 1), p0 the recipe's base prior; see --langevin-steps, "
    "--step-size, --ebm-lr. Default: the recipe's (gaussian).",
)
@options.settings_options(config.ModelSettings)
@options.settings_options(config.TrainSettings)
@click.option(
    "--recipe",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML recipe (default: the shipped recipes/<family>-<model>.toml when it exists).",
)
@click.option("--schedule", default=None, help="Recipe schedule to apply, e.g. cpu (automatic for *-mini data).")
@options.device
@options.data_root
@options.resume(
    "Continue the run in --out from its last checkpoint, or from the beginning with its recorded settings "
    "when it stopped before its first one (killed in epoch 1); with --epochs N, train a finished run longer. "
    "`--resume auto` also starts the run when --out holds none and exits 0 when it already finished: one "
    "command a requeued batch job can always rerun (never --overwrite). Default: a new run, refused when "
    "--out holds one."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
@click.option(
    "--dry-run", is_flag=True, help="Print the resolved settings as JSON and exit (nothing is loaded or written)."
)
@options.log_jsonl
@options.tensorboard
@options.settings_options(config.RuntimeSettings)
@click.option(
    "--distributed",
    is_flag=True,
    help="Data-parallel training under torchrun or srun (automatic under torchrun); --batch-size is "
    "the global batch. See docs/cluster.md.",
)
@click.option("--max-steps", type=int, default=None, hidden=True, help="Stop after N steps (tests, benchmarks).")
@click.option("--step-delay", type=float, default=0.0, hidden=True, help="Sleep after every step (tests).")
@options.energy_net
@options.langevin_train
@options.settings_options(config.JointEnergySettings)
def train(
    dataset,
    out,
    prior,
    recipe,
    schedule,
    device,
    data_root,
    resume,
    overwrite,
    dry_run,
    log_jsonl,
    tensorboard,
    distributed,
    max_steps,
    step_delay,
    **settings,
):
    """Train a multimodal VAE on DATASET (a name listed by `mmvae data --help`, or a .safetensors path).

    Settings come from the recipe for the dataset and model (recipes/), its short `cpu` schedule for
    *-mini datasets, then these flags; the run's manifest records the resolved values (every flag's
    default, range and source live in mmvae_cli/config.py). Every input is checked before the run
    folder is created. SIGTERM/SIGUSR1 write a checkpoint and exit with code 75; --resume continues
    (`--resume auto` in batch scripts: continue, start or say it finished, whatever the last attempt left).
    Data-parallel: `torchrun --nproc-per-node N -m mmvae_cli train ...` (gloo on CPU, NCCL on GPU).
    """
    from ..commands.train import TrainRequest, prepare_training, resolve_request

    runtime = options.given(settings, config.RuntimeSettings)
    overrides = {k: v for k, v in settings.items() if k not in runtime}
    overrides["prior"] = prior
    request = TrainRequest(
        dataset=dataset,
        out=out,
        overrides=overrides,
        runtime=runtime,
        recipe=recipe,
        schedule=schedule,
        device=device,
        data_root=data_root,
        resume=resume,
        overwrite=overwrite,
        log_jsonl=log_jsonl,
        tensorboard=tensorboard,
        distributed=distributed,
        max_steps=max_steps,
        step_delay=step_delay,
    )
    if dry_run:
        click.echo(json.dumps(resolve_request(request).to_dict()))
        return
    job = prepare_training(request)
    try:
        job.run()
    finally:
        shutdown_distributed(job.dist)


@click.group()
def classifier():
    """Digit classifiers used to measure coherence."""


@classifier.command("train")
@click.argument("dataset")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Bundle folder to write.")
@options.settings_options(config.ClassifierSettings)
@click.option("--overwrite", is_flag=True, help="Replace a classifier bundle already in --out.")
@options.device
@options.data_root
@options.json_flag
def classifier_train(dataset, out, epochs, batch_size, lr, seed, overwrite, device, data_root, as_json):
    """Train one digit classifier per modality of DATASET and report test accuracy per modality."""
    from ..classifier import train_classifiers

    s = config.resolve(config.ClassifierSettings, dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed))
    dev = pick_device(device)
    check_new_output(Path(out), overwrite, "choose another --out")
    train_data = load_dataset(dataset, "train", data_root)
    test_data = load_dataset(dataset, "test", data_root)
    manifest = train_classifiers(train_data, test_data, Path(out), s.epochs, s.batch_size, s.lr, s.seed, dev)
    acc = manifest["test_accuracy"]
    if as_json:
        click.echo(json.dumps({"test_accuracy": acc}))
    else:
        click.echo("modality  test accuracy")
        for n, a in acc.items():
            click.echo(f"{n:<9} {a:.4f}")
    log(f"wrote {out}")
