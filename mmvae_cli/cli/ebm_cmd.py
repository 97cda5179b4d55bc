"""`mmvae fit-ebm`: fit an energy-based prior to a trained (frozen) multimodal VAE."""

from __future__ import annotations

import json

import click

from .. import config
from . import options


@click.command("fit-ebm")
@click.argument("run", type=click.Path())
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Write a new energy-only bundle that refers to RUN by path and weight fingerprint, "
    "instead of adding the energy to RUN.",
)
@options.settings_options(config.FitSettings)
@options.energy_net
@options.langevin_fit
@click.option(
    "--classifiers",
    "clf_run",
    type=click.Path(),
    default=None,
    help="Classifier bundle: report joint coherence with the base prior and with the fitted energy.",
)
@click.option("--n-joint", type=int, default=1000, show_default=True, help="Samples for those joint coherences.")
@options.post_hoc_fit(
    "Replace an energy already fitted post hoc to RUN.",
    "Continue a fit stopped by SIGTERM/SIGUSR1 (exit code 75) from its checkpoint, with the "
    "settings it was started with (same RUN and --out).",
)
def fit_ebm(
    run,
    out,
    clf_run,
    n_joint,
    overwrite,
    resume,
    step_delay,
    log_jsonl,
    tensorboard,
    device,
    data_root,
    as_json,
    **settings,
):
    """Fit an energy over the latent of the trained model RUN, keeping the VAE frozen.

    \b
    Shared latent (poe, moe, mopoe): the energy-based prior p_alpha(z) ∝ exp(-E(z)) p0(z) of
    Yuan et al., fitted to the aggregate posterior by maximum likelihood (eq. 10) with negatives
    from short-run Langevin started at p0 (eq. 11). `mmvae sample RUN --prior ebm` then samples it.
    EB-MVAE (--fusion none bundles): a joint density exp(-E(z_1, ..., z_M)) over the unimodal
    latents, fitted by score matching (eq. 1); cross-generate and eval coherence then sample the
    unobserved latents by Langevin with the observed ones clamped (eq. 2-3).

    Writes ebm.safetensors and an `ebm` section into RUN's manifest (or into --out NEW_RUN).
    Prints the loss curve summary (and with --classifiers the joint coherence before and after);
    a diverging chain stops with exit code 3 and writes nothing. SIGTERM/SIGUSR1 write a checkpoint
    after the current step and exit with code 75; --resume continues it with the same result.
    """
    from ..jobs import FitRequest, prepare_energy_fit

    request = FitRequest(
        run,
        out,
        options.given(settings, config.FitSettings),
        options.given(settings, config.EnergySettings),
        options.given(settings, config.LangevinSettings),
        clf_run,
        n_joint,
        overwrite,
        resume,
        log_jsonl,
        tensorboard,
        step_delay,
        device,
        data_root,
    )
    result = prepare_energy_fit(request).run()
    if as_json:
        click.echo(json.dumps(result))
        return
    lc = result["loss_curve"]
    click.echo(
        f"{result['objective']} loss: first {lc['first']:.4g}  last {lc['last']:.4g}  min {lc['min']:.4g} "
        f"(epoch {lc['min_epoch']} of {lc['epochs']})"
    )
    coherence = result.get("joint_coherence")
    if coherence:
        click.echo(
            f"joint coherence: base prior {coherence['base']:.4f}  ->  energy-based prior "
            f"{coherence['ebm']:.4f}  ({coherence['n_joint']} samples)"
        )
