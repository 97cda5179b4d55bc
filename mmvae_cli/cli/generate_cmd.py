"""`mmvae sample` and `mmvae cross-generate`."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from ..bundle import atomic_save_tensors
from ..data import load_dataset
from ..errors import MMVAEError
from ..images import grid, load_image, save_png
from ..train import load_model, log, pick_device
from . import options


def _write(out: str, fmt: str, rows: dict[str, torch.Tensor]) -> None:
    if fmt == "safetensors":
        atomic_save_tensors(Path(out), {k: v.float().cpu() for k, v in rows.items()})
    else:
        save_png(out, grid(list(rows.values())))
    log(f"wrote {out}")


@click.command()
@click.argument("run", type=click.Path())
@click.option("-n", "--n", "n", type=int, default=64, show_default=True, help="Number of joint samples.")
@click.option("--out", required=True, help="Output file (.png grid, one row per modality, or .safetensors).")
@click.option("--format", "fmt", type=click.Choice(["png", "safetensors"]), default=None,
              help="Default: from the --out extension.")
@options.seed
@options.device
def sample(run, n, out, fmt, seed, device):
    """Joint generation: z ~ p(z), decoded to every modality's mean."""
    fmt = fmt or ("safetensors" if out.endswith(".safetensors") else "png")
    dev = pick_device(device)
    model, _ = load_model(Path(run), dev)
    torch.manual_seed(seed)
    z = model.sample_prior(n)
    _write(out, fmt, model.generate(z))


@click.command("cross-generate")
@click.argument("run", type=click.Path())
@click.option("--given", default=None, help="Comma-separated input modalities taken from --split, e.g. m1,m2.")
@click.option("--image", "images", multiple=True, metavar="MOD=FILE",
              help="An input image file for a modality (repeatable); used instead of --split data.")
@click.option("--targets", default=None, help="Modalities to generate (default: all others).")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("-n", "--n", "n", type=int, default=16, show_default=True, help="Number of input tuples.")
@click.option("--out", required=True, help="Output file (.png grid or .safetensors).")
@click.option("--format", "fmt", type=click.Choice(["png", "safetensors"]), default=None)
@options.seed
@options.device
@options.data_root
def cross_generate(run, given, images, targets, split, n, out, fmt, seed, device, data_root):
    """Generate the missing modalities from a subset of given ones.

    The PNG shows the inputs in the first rows, then one row per generated modality.
    """
    fmt = fmt or ("safetensors" if out.endswith(".safetensors") else "png")
    dev = pick_device(device)
    model, manifest = load_model(Path(run), dev)
    shapes = {m["name"]: tuple(m["shape"]) for m in manifest["modalities"]}
    x: dict[str, torch.Tensor] = {}
    if images:
        for item in images:
            if "=" not in item:
                raise MMVAEError(f"--image expects MOD=FILE, got {item!r}")
            name, path = item.split("=", 1)
            if name not in shapes:
                raise MMVAEError(f"unknown modality {name!r}; this model has {', '.join(shapes)}")
            x[name] = load_image(path, shapes[name])[None]
        x = {k: v.to(dev) for k, v in x.items()}
    else:
        if not given:
            raise MMVAEError("give input modalities with --given (from --split) or --image MOD=FILE")
        names = [g.strip() for g in given.split(",") if g.strip()]
        unknown = [g for g in names if g not in shapes]
        if unknown:
            raise MMVAEError(f"unknown modality {unknown[0]!r}; this model has {', '.join(shapes)}")
        data = load_dataset(manifest["dataset"]["name_or_path"], split, data_root)
        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]  # a seeded spread
        batch = data.batch(idx, dev)
        x = {g: batch[g] for g in names}
    target_names = [t.strip() for t in targets.split(",")] if targets else [m for m in shapes if m not in x]
    unknown = [t for t in target_names if t not in shapes]
    if unknown:
        raise MMVAEError(f"unknown modality {unknown[0]!r}; this model has {', '.join(shapes)}")
    if not target_names:
        raise MMVAEError("nothing to generate: every modality is given (use --targets to reconstruct)")
    torch.manual_seed(seed)
    gen = model.cross_generate(x, target_names)
    rows = {f"input.{k}": v for k, v in x.items()}
    rows.update({f"generated.{k}": v for k, v in gen.items()})
    _write(out, fmt, rows)
