"""`mmvae sample` and `mmvae cross-generate`."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from .. import config
from ..bundle import atomic_save_tensors
from ..console import log
from ..data import load_dataset
from ..errors import MMVAEError
from ..images import grid, output_format, save_image
from ..model_io import load_model
from ..runtime import pick_device
from . import options


def _write(out: str, rows: dict[str, torch.Tensor], kinds: dict) -> None:
    """rows "<role>.<modality>" -> tensors; a PNG draws each row with its modality's kind."""
    if output_format(out) == "safetensors":
        atomic_save_tensors(Path(out), {k: v.float().cpu() for k, v in rows.items()})
    else:
        save_image(out, grid([kinds[k.split(".", 1)[1]].render(v) for k, v in rows.items()]))
    log(f"wrote {out}")


def _print_json(rows: dict[str, torch.Tensor], kinds: dict) -> None:
    """One JSON object per tuple on stdout: {"index", "<role>": {modality: value}} for the modalities whose
    kind has a JSON form (text: the decoded string)."""
    forms: dict[str, dict[str, list]] = {}
    n = 0
    for key, v in rows.items():
        role, m = key.split(".", 1)
        values = kinds[m].to_json(v)
        n = max(n, v.shape[0])
        if values is not None:
            forms.setdefault(role, {})[m] = values
    for i in range(n):
        obj = {
            "index": i,
            **{
                role: {m: vals[i] if i < len(vals) else vals[0] for m, vals in by_mod.items()}
                for role, by_mod in forms.items()
            },
        }
        click.echo(json.dumps(obj, ensure_ascii=False))


def _check_format(out: str, fmt: str | None) -> None:
    """--out's extension names the format; --format, when given, must agree with it."""
    got = output_format(out)
    if fmt is not None and fmt != got:
        raise MMVAEError(f"--format {fmt} does not match --out {out} (a {got} file name)")


@click.command()
@click.argument("run", type=click.Path())
@options.setting_option(config.GenerateSettings, "sample_n", "-n", "--n", "n", help="Number of joint samples.")
@options.output_file("Output file: .png or .jpg grid (one row per modality), or .safetensors.")
@options.prior
@options.langevin_sample
@click.option(
    "--save-chain",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE.png",
    help="--prior ebm: also draw the chains' transitions (the first 8 chains, one row per chain and "
    "modality, columns every --chain-every steps from the start state to the last).",
)
@click.option(
    "--chain-every",
    type=click.IntRange(min=1),
    default=None,
    help="Steps between the columns of --save-chain (default: steps/10).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Also print one JSON object per sample on stdout (text modalities as strings).",
)
@options.seed
@options.device
def sample(run, n, out, fmt, prior, langevin, save_chain, chain_every, as_json, seed, device):
    """Joint generation: z ~ p(z) (base prior, energy-based prior or a fitted prior), decoded to every
    modality's mean.

    With --prior ebm a diverging chain stops with exit code 3 and nothing is written.
    """
    _check_format(out, fmt)
    if save_chain and output_format(save_chain, "--save-chain") == "safetensors":
        raise MMVAEError("--save-chain draws a figure: name a .png or .jpg file")
    dev = pick_device(device)
    model, _ = load_model(Path(run), dev)
    p = model.latent_prior(prior, run)
    p.check_options(langevin)  # Langevin flags: one line naming the flag unless the prior is ebm
    if save_chain and not p.sampler_options:
        raise MMVAEError("--save-chain draws Langevin chains: it needs --prior ebm")
    torch.manual_seed(seed)
    if not save_chain:
        z = p.sample(n, **langevin)
    else:
        lsteps = int(p.sampler_settings(**langevin)["steps"])
        every = max(1, chain_every or lsteps // 10)
        res = p.chain(n, every=every, **langevin)
        z = res.z
        k = min(n, 8)
        frames = [model.generate(c[:k]) for c in res.chain]  # per snapshot: {modality: (k, ...)}
        if lsteps % every:
            frames.append(model.generate(z[:k]))
        rows = [torch.stack([f[m][i] for f in frames]) for i in range(k) for m in model.names]
        save_image(
            save_chain, grid([model.kinds[model.names[j % len(model.names)]].render(r) for j, r in enumerate(rows)])
        )
        log(f"wrote {save_chain} ({k} chains x {len(model.names)} modalities, {len(frames)} columns)")
    gen = {f"generated.{m}": v for m, v in model.generate(z).items()}
    _write(out, gen, model.kinds)
    if as_json:
        _print_json(gen, model.kinds)


@click.command("cross-generate")
@click.argument("run", type=click.Path())
@click.option("--given", default=None, help="Comma-separated input modalities taken from --split, e.g. m1,m2.")
@click.option(
    "--input",
    "--image",
    "inputs",
    multiple=True,
    metavar="MOD=FILE",
    help="An input file for a modality (repeatable): an image file, or a UTF-8 text file for a text "
    "modality; used instead of --split data.",
)
@click.option(
    "--text",
    "texts",
    multiple=True,
    metavar='MOD="..."',
    help="An input string for a text modality (repeatable); used instead of --split data.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Also print one JSON object per tuple on stdout (text inputs and outputs as strings).",
)
@click.option("--targets", default=None, help="Modalities to generate (default: all others).")
@options.split()
@options.setting_option(config.GenerateSettings, "cross_generate_n", "-n", "--n", "n", help="Number of input tuples.")
@options.output_file("Output file: .png or .jpg grid, or .safetensors.")
@options.langevin_sample
@options.seed
@options.device
@options.data_root
def cross_generate(
    run,
    given,
    inputs,
    texts,
    as_json,
    targets,
    split,
    n,
    out,
    fmt,
    langevin,
    seed,
    device,
    data_root,
):
    """Generate the missing modalities from a subset of given ones.

    The PNG shows the inputs in the first rows, then one row per generated modality. For EB-MVAE
    bundles (--fusion none with an energy) the missing latents are sampled by Langevin with the
    given ones clamped; --steps/--step-size/--noise-scale/--clip-grad/--denoise override its settings.
    """
    _check_format(out, fmt)
    dev = pick_device(device)
    model, manifest = load_model(Path(run), dev)
    shapes = {m.name: tuple(m.shape) for m in model.config.modalities}
    kinds = model.kinds
    x: dict[str, torch.Tensor] = {}
    if inputs or texts:
        if given:
            raise MMVAEError("--given takes inputs from --split: drop it with --input/--text")
        for option, items in (("--input", inputs), ("--text", texts)):
            for item in items:
                if "=" not in item:
                    raise MMVAEError(
                        f"{option} expects {'MOD=FILE' if option == '--input' else 'MOD=STRING'}, got {item!r}"
                    )
                name, value = item.split("=", 1)
                if name not in shapes:
                    raise MMVAEError(f"unknown modality {name!r}; this model has {', '.join(shapes)}")
                if name in x:
                    raise MMVAEError(f"{option} {name}: modality {name!r} is given twice")
                x[name] = (
                    kinds[name].read_file(value, shapes[name])
                    if option == "--input"
                    else kinds[name].from_string(value, shapes[name])
                )
        x = {k: v.to(dev) for k, v in x.items()}
    else:
        if not given:
            raise MMVAEError("give input modalities with --given (from --split), --input MOD=FILE or --text MOD=STRING")
        names = [g.strip() for g in given.split(",") if g.strip()]
        if not names:
            raise MMVAEError(f"--given {given!r} names no modality; this model has {', '.join(shapes)}")
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
    gen = model.cross_generate(x, target_names, **langevin)
    rows = {f"input.{k}": v for k, v in x.items()}
    rows.update({f"generated.{k}": v for k, v in gen.items()})
    _write(out, rows, kinds)
    if as_json:
        _print_json(rows, kinds)
