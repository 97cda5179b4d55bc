"""Options shared by several commands; the settings' flags are generated from config.py."""

from __future__ import annotations

import functools
from dataclasses import MISSING, fields

import click

from .. import config

data_root = click.option(
    "--data-root",
    type=click.Path(file_okay=False),
    default=None,
    help="Data folder (default: $MMVAE_DATA, else ~/.cache/mmvae).",
)
json_flag = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
log_jsonl = click.option(
    "--log-jsonl", type=click.Path(dir_okay=False), default=None, help="Append one JSON line per epoch to this file."
)
tensorboard = click.option(
    "--tensorboard",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="Write TensorBoard scalars (loss terms, lr, seconds per epoch) to DIR "
    "(needs the extra: pip install 'mmvae-cli[tb]').",
)


def _default_text(f) -> str:
    d = f.default_factory() if f.default is MISSING else f.default
    if d is None:
        return ""
    if isinstance(d, tuple):
        return " ".join(f"{x:g}" for x in d)
    if isinstance(d, bool):
        return "on" if d else "off"
    return f"{d:g}" if isinstance(d, float) else str(d)


class _Choice(click.Choice):
    """click.Choice that also takes a setting's former names (`config.setting(aliases=...)`), unlisted."""

    def __init__(self, choices, aliases: dict):
        super().__init__(choices)
        self.aliases = aliases

    def convert(self, value, param, ctx):
        return super().convert(self.aliases.get(value, value), param, ctx)


def settings_options(
    cls,
    only: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
    rename: dict[str, str] | None = None,
    show_defaults: bool = True,
):
    """Click options for the fields of a config section: default None (= not given, the recipe or the
    field's default applies), the field's help, default and source in the help text. Ranges are
    checked by config.check after resolution, so flags, recipes and manifests share one check."""
    rename = rename or {}

    def deco(f):
        for fld in reversed(fields(cls)):
            m = fld.metadata
            if not m.get("cli", True) or fld.name in skip or (only is not None and fld.name not in only):
                continue
            name = rename.get(fld.name)
            flag = f"--{name}" if name else (m.get("flag") or "--" + fld.name.replace("_", "-"))
            d = _default_text(fld) if show_defaults else "as stored with the energy"
            help_ = m["help"] + (f" [default: {d}]" if d else "") + f" (source: {m['source']})"
            kw: dict = {"default": None, "help": help_}
            if "/" in flag:
                pass  # --x/--no-x boolean
            elif isinstance(fld.default, bool):
                kw["is_flag"] = True
            elif m.get("pair"):
                kw.update(type=(float, float), metavar="B1 B2")
            elif m.get("choices") is not None:
                kw["type"] = _Choice([c for c in m["choices"] if c is not None], m.get("aliases") or {})
            elif isinstance(fld.default, int) or str(fld.type).startswith("int"):  # also `int | None = None`
                kw["type"] = int
            elif isinstance(fld.default, float) or m.get("gt") is not None or m.get("min") is not None:
                kw["type"] = float
            f = click.option(flag, fld.name, **kw)(f)
        return f

    return deco


def setting_option(cls, name: str, *decls: str, help: str | None = None, type=None):
    """A click option whose default (shown by --help), range or choices and source are field `name` of
    config section `cls` (e.g. config.EvalSettings.n_joint). decls: click's parameter declarations
    (default: --field-name); help: this command's sentence (default: the field's help); type: a click type
    where the choices are a registry's, not the field's."""
    fld = next(f for f in fields(cls) if f.name == name)
    m = fld.metadata
    if type is None and m["choices"] is not None:
        type = click.Choice([c for c in m["choices"] if c is not None])
    elif type is None and isinstance(fld.default, int) and not isinstance(fld.default, bool):
        type = click.IntRange(min=None if m["min"] is None else int(m["min"]))
    text = help or m["help"][0].upper() + m["help"][1:] + "."
    return click.option(
        *(decls or ("--" + name.replace("_", "-"),)),
        type=type,
        default=config.default_of(cls, name),
        show_default=True,
        help=f"{text} (source: {m['source']})",
    )


device = setting_option(config.CommandSettings, "device", help="cpu, cuda, cuda:N or auto (cuda when available).")
seed = setting_option(config.CommandSettings, "seed", help="Random seed.")


def split(help: str | None = None):
    """--split: a data split (data.SPLITS), default config.CommandSettings.split."""
    from ..data import SPLITS

    return setting_option(config.CommandSettings, "split", type=click.Choice(SPLITS), help=help)


def given(kwargs: dict, cls, rename: dict[str, str] | None = None) -> dict:
    """The flag values of a command's kwargs that belong to section `cls` (None = not given)."""
    names = {f.name for f in fields(cls)}
    out = {k: v for k, v in kwargs.items() if k in names}
    for k, v in out.items():
        if isinstance(v, tuple) and not v:
            out[k] = None
    return out


def _prior_option():
    from .. import priors

    kinds = {k: priors.get(k) for k in priors.names()}
    return setting_option(
        config.CommandSettings,
        "prior",
        type=click.Choice(list(kinds)),
        help="Prior of the latents: "
        + "; ".join(
            f"{k}: {c.help} (`{c.how_to_get()}`)" if k != "base" else f"{k}: {c.help}" for k, c in kinds.items()
        )
        + ".",
    )


prior = _prior_option()


def _langevin_train():
    """train --prior ebm: the energy's Langevin flags as fit-ebm names them (EnergyPrior.flag_rename), but
    --denoise: the negatives of eq. 10 are the chains' states themselves (no Tweedie step)."""
    from ..priors.ebm import EnergyPrior

    return settings_options(
        config.LangevinSettings, rename=EnergyPrior.flag_rename, skip=("denoise", "sampler", "proposals")
    )


energy_net = settings_options(config.EnergySettings)
langevin_train = _langevin_train()
_langevin_options = settings_options(config.LangevinSettings, show_defaults=False)


def langevin_sample(f):
    """A sampling command's Langevin options (LangevinSettings' fields), passed to it as one argument
    `langevin`: the values given on the command line, range-checked; the bundle's stored settings fill
    the rest."""
    names = [fld.name for fld in fields(config.LangevinSettings)]

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        given = {k: kwargs.pop(k) for k in names}
        config.check(config.overridden(config.LangevinSettings(), given))
        return f(*args, langevin={k: v for k, v in given.items() if v is not None}, **kwargs)

    return _langevin_options(wrapper)


def output_file(help: str):
    """--out FILE and --format, the format named by the extension (images.output_format checks both)."""

    def deco(f):
        f = click.option(
            "--format",
            "fmt",
            type=click.Choice(["png", "jpeg", "safetensors"]),
            default=None,
            help="Default: from the --out extension (which must agree).",
        )(f)
        return click.option("--out", required=True, help=help)(f)

    return deco


def resume(help: str):
    """--resume [last|auto] (run.plan_run's modes; plain --resume is `last`)."""
    from ..run import RESUME_MODES

    return click.option(
        "--resume",
        type=click.Choice(RESUME_MODES),
        is_flag=False,
        flag_value="last",
        default=None,
        help=help,
    )


def post_hoc_fit(overwrite_help: str, resume_help: str):
    """The options every post-hoc fit shares: --overwrite, --resume, logs, device, data root, --json."""

    def deco(f):
        for opt in reversed(
            [
                click.option("--overwrite", is_flag=True, help=overwrite_help),
                resume(resume_help),
                click.option(
                    "--step-delay", type=float, default=0.0, hidden=True, help="Sleep after every step (tests)."
                ),
                log_jsonl,
                tensorboard,
                device,
                data_root,
                json_flag,
            ]
        ):
            f = opt(f)
        return f

    return deco
