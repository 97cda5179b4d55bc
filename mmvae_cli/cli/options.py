"""Options shared by several commands."""

import click

data_root = click.option("--data-root", type=click.Path(file_okay=False), default=None,
                         help="Data folder (default: $MMVAE_DATA, else ~/.cache/mmvae).")
device = click.option("--device", default="auto", show_default=True,
                      help="cpu, cuda, cuda:N or auto (cuda when available).")
seed = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
json_flag = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
