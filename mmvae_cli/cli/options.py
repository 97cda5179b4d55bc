"""Options shared by several commands."""

import click

data_root = click.option("--data-root", type=click.Path(file_okay=False), default=None,
                         help="Data folder (default: $MMVAE_DATA, else ~/.cache/mmvae).")
device = click.option("--device", default="auto", show_default=True,
                      help="cpu, cuda, cuda:N or auto (cuda when available).")
seed = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
json_flag = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")


# --- energy-based priors ------------------------------------------------------------------------
def energy_net(f):
    """--energy-hidden/--energy-layers/--energy-activation: the energy MLP (ebm.EnergyNet)."""
    from ..ebm import ACTIVATIONS
    f = click.option("--energy-activation", type=click.Choice(list(ACTIVATIONS)), default=None,
                     help="Energy MLP activation (default: gelu for ml, softplus for score matching).")(f)
    f = click.option("--energy-layers", type=int, default=4, show_default=True,
                     help="Linear layers of the energy MLP (Yuan et al.'s best: 4).")(f)
    f = click.option("--energy-hidden", type=int, default=400, show_default=True,
                     help="Hidden units per layer of the energy MLP (Yuan et al.'s best: 400).")(f)
    return f


def langevin_fit(f):
    """Langevin settings used while fitting (ml negatives) and stored as the bundle's sampling defaults."""
    f = click.option("--clip-grad", type=float, default=None,
                     help="Clip each chain's gradient norm to this value (default: no clipping).")(f)
    f = click.option("--noise-scale", type=float, default=1.0, show_default=True,
                     help="Langevin noise multiplier (1 = proper Langevin).")(f)
    f = click.option("--step-size", type=float, default=0.4, show_default=True,
                     help="Langevin step size s in z <- z + s^2/2 grad log p(z) + s eps (LEBM's 0.4; the "
                          "paper gives none).")(f)
    f = click.option("--langevin-steps", type=int, default=50, show_default=True,
                     help="Langevin steps per chain (Yuan et al.'s best: 50).")(f)
    return f


def langevin_sample(f):
    """--steps/--step-size/--noise-scale/--clip-grad overriding a bundle's stored Langevin settings."""
    f = click.option("--clip-grad", type=float, default=None, help="Clip each chain's gradient norm.")(f)
    f = click.option("--noise-scale", type=float, default=None, help="Langevin noise multiplier (default: the bundle's).")(f)
    f = click.option("--step-size", type=float, default=None, help="Langevin step size (default: the bundle's).")(f)
    f = click.option("--steps", type=int, default=None, help="Langevin steps (default: the bundle's).")(f)
    return f
