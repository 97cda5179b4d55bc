"""`mmvae eval WHAT RUN` (also `mmvae evaluate`)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from .. import bundle
from ..data import load_dataset
from ..errors import MMVAEError
from ..train import load_model, pick_device
from . import options


@click.group()
def evaluate():
    """Evaluate a trained bundle (coherence)."""


def _record(run: Path, what: str, result: dict) -> None:
    """Append the result and the command that produced it to the bundle's manifest."""
    from . import invocation
    manifest = bundle.read_manifest(run)
    manifest.setdefault("evaluations", []).append(
        {"metric": what, "created": bundle.now(), "command": invocation(), "result": result})
    bundle.save_manifest(run, manifest)


@evaluate.command()
@click.argument("run", type=click.Path())
@click.option("--classifiers", "clf_run", type=click.Path(), required=True, help="Classifier bundle.")
@click.option("--n-joint", type=int, default=10000, show_default=True, help="Prior samples for joint coherence.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--limit", type=int, default=None, help="Use only the first N tuples of the split.")
@click.option("--prior", type=click.Choice(["base", "ebm"]), default="base", show_default=True,
              help="Joint coherence from the base prior or the bundle's energy-based prior (Langevin).")
@options.langevin_sample
@options.seed
@options.device
@options.data_root
@options.json_flag
def coherence(run, clf_run, n_joint, split, limit, prior, steps, step_size, noise_scale, clip_grad, seed, device,
              data_root, as_json):
    """Joint coherence (prior samples) and conditional coherence for every subset of inputs.

    For EB-MVAE bundles (--fusion none with an energy) conditional generation samples the missing
    latents by Langevin with the given ones clamped; the Langevin options apply there too.
    """
    from ..classifier import load_classifiers
    from ..evaluate.coherence import conditional_coherence, joint_coherence
    dev = pick_device(device)
    model, manifest = load_model(Path(run), dev)
    clf, _ = load_classifiers(Path(clf_run), dev)
    data = load_dataset(manifest["dataset"]["name_or_path"], split, data_root)
    if limit:
        data = data.subset(torch.arange(min(limit, len(data))))
    langevin = {k: v for k, v in dict(steps=steps, step_size=step_size, noise_scale=noise_scale,
                                      clip_grad=clip_grad).items() if v is not None}
    if prior == "ebm" and model.ebm is None:
        raise MMVAEError(f"{run} has no energy-based prior; fit one with `mmvae fit-ebm {run}`")
    torch.manual_seed(seed)
    joint = joint_coherence(lambda b: model.sample_latents(b, prior, **langevin), model, clf, n_joint)
    cond = conditional_coherence(model, clf, data, dev, langevin=langevin)
    result = {"run": str(run), "split": split, "seed": seed, "prior": prior, "langevin": langevin,
              "joint": joint["joint"], "n_joint": n_joint,
              "conditional": cond["by_inputs"], "cross_pairs_mean": cond["cross_pairs_mean"],
              "per_subset": cond["per_subset"], "n_test": cond["n_test"]}
    _record(Path(run), "coherence", {k: v for k, v in result.items() if k != "per_subset"})
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"joint coherence  {joint['joint']:.4f}  ({n_joint} {prior} prior samples)")
    click.echo(f"conditional coherence on {split} ({cond['n_test']} tuples), mean over subsets by number of inputs:")
    for k, v in cond["by_inputs"].items():
        click.echo(f"  {k} input{'s' if k != '1' else ' '}  {v:.4f}")
    if cond["cross_pairs_mean"] is not None:
        click.echo(f"single-source pairs mean (MMVAE+ convention)  {cond['cross_pairs_mean']:.4f}")
