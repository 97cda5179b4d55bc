"""`mmvae fit-prior`: fit a prior kind (priors/: ebm, gmm, flow) to a trained (frozen) VAE's aggregate
posterior; `fit_options` and `run_fit` are also `mmvae fit-ebm`'s (ebm_cmd.py), the same job."""

from __future__ import annotations

import json
from dataclasses import fields

import click

from .. import config, priors
from . import options


def _kind_settings(kinds: tuple[str, ...]):
    """The settings flags of these kinds (their config.py sections, flags renamed as the kind says), each
    field once (the first kind's help); flags of another kind are refused by the job."""
    decos, seen = [], set()
    for kind in kinds:
        cls = priors.get(kind)
        for sec in cls.settings_sections:
            names = tuple(f.name for f in fields(sec) if f.name not in seen)
            seen.update(names)
            decos.append(options.settings_options(sec, only=names, rename=cls.flag_rename))

    def deco(f):
        for d in reversed(decos):
            f = d(f)
        return f

    return deco


def fit_options(kinds: tuple[str, ...], common: tuple[str, ...] | None, out_help: str, overwrite_help: str):
    """A post-hoc fit's flags: --out, the common settings (PriorFitSettings' fields, or those named in
    `common`), the kinds' settings, --classifiers and --n-joint, and every post-hoc fit's options."""

    def deco(f):
        for d in reversed(
            [
                click.option("--out", type=click.Path(file_okay=False), default=None, help=out_help),
                options.settings_options(config.PriorFitSettings, only=common),
                _kind_settings(kinds),
                click.option(
                    "--classifiers",
                    type=click.Path(),
                    default=None,
                    help="Classifier bundle: report joint coherence with the base prior and with the fitted one.",
                ),
                options.setting_option(
                    config.EvalSettings,
                    "fit_n_joint",
                    "--n-joint",
                    "n_joint",
                    help="Samples for those joint coherences.",
                ),
                options.post_hoc_fit(
                    overwrite_help,
                    "Continue a fit stopped by SIGTERM/SIGUSR1 (exit code 75) from its checkpoint, with the "
                    "settings it was started with (same RUN, --out and kind; flags given must be the same); a fit "
                    "killed before its first checkpoint starts again. `--resume auto` also starts the fit when "
                    "there is none and exits 0 when it already finished: one command a requeued batch job can "
                    "always rerun. Default: off.",
                ),
            ]
        ):
            f = d(f)
        return f

    return deco


def run_fit(kind: str, as_json: bool, **kw) -> None:
    """Build the request from the flags (by keyword), run the job, print its result."""
    from ..commands.fit_prior import FitPriorRequest, prepare_fit_prior
    from ..console import invocation

    own = {f.name for f in fields(FitPriorRequest)}
    flags = {k: None if v == () else v for k, v in kw.items() if k not in own}  # settings by field name
    common = options.given(flags, config.PriorFitSettings)
    request = FitPriorRequest(
        kind=kind,
        common=common,
        settings={k: v for k, v in flags.items() if k not in common},
        command=invocation(),
        **{k: v for k, v in kw.items() if k in own},
    )
    result = prepare_fit_prior(request).run()
    if as_json:
        click.echo(json.dumps(result))
        return
    if result.get("already_finished"):
        return
    if "loss_curve" in result:  # fitted epoch by epoch to a loss
        lc = result["loss_curve"]
        click.echo(
            f"{result['objective']} loss: first {lc['first']:.4g}  last {lc['last']:.4g}  min {lc['min']:.4g} "
            f"(epoch {lc['min_epoch']} of {lc['epochs']})"
        )
    else:
        click.echo(
            f"{kind} prior fitted in {result['seconds']:.2f} s: mean log-density of {result['eval_samples']} "
            f"aggregate-posterior samples {result['log_lik']:.4g} (base prior p0: {result['base_log_lik']:.4g})"
        )
    coherence = result.get("joint_coherence")
    if coherence:
        click.echo(
            f"joint coherence: base prior {coherence['base']:.4f}  ->  {priors.get(kind).name()} "
            f"{coherence[kind]:.4f}  ({coherence['n_joint']} samples)"
        )


@click.command("fit-prior")
@click.argument("run", type=click.Path())
@click.option(
    "--kind",
    required=True,
    type=click.Choice(list(priors.fittable())),
    help="; ".join(f"{k}: {priors.get(k).help}" for k in priors.fittable()) + ".",
)
@fit_options(
    priors.fittable(),
    None,
    "Write a new prior-only bundle that refers to RUN by path and weight fingerprint, "
    "instead of adding the prior to RUN.",
    "Replace a prior of this kind already fitted to RUN.",
)
def fit_prior(kind, as_json, **kw):
    """Fit a prior over the latent of the trained model RUN to its aggregate posterior, VAE frozen.

    \b
    The aggregate posterior q(z) = 1/N sum_i q(z | X_i) over the training set (all modalities given)
    is what a VAE's decoders were trained on; a prior fitted to it replaces p0(z) at generation:
    `mmvae sample RUN --prior KIND`, `mmvae eval coherence|fid|all RUN --prior KIND`, and, for a
    tractable density (gmm, flow), `mmvae eval likelihood RUN --prior KIND`.

    Writes prior-KIND.safetensors and `priors: {KIND: ...}` in RUN's manifest (or --out NEW_RUN),
    with the fit's statistics and seconds, and prints the mean log-density of fresh aggregate-posterior
    samples under the fitted prior and under p0 (ebm: its loss curve, as `mmvae fit-ebm`). Epoch-wise
    fits (flow, ebm) checkpoint every epoch; SIGTERM/SIGUSR1 write a checkpoint and exit with code 75,
    --resume continues it.
    """
    run_fit(kind, as_json, **kw)
