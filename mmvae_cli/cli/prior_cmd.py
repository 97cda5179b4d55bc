"""`mmvae fit-prior`: fit a prior kind (priors/: gmm, flow) to a trained (frozen) VAE's aggregate posterior."""

from __future__ import annotations

import json

import click

from .. import config, priors
from . import options


def _kind_settings(f):
    """Every fittable kind's settings flags (config.py sections); flags of another kind are refused."""
    seen = set()
    for kind in reversed(priors.fittable()):
        cls = priors.get(kind).settings_cls
        names = tuple(x.name for x in config.fields(cls) if x.name not in seen)
        seen.update(names)
        f = options.settings_options(cls, only=names)(f)
    return f


@click.command("fit-prior")
@click.argument("run", type=click.Path())
@click.option(
    "--kind",
    required=True,
    type=click.Choice(list(priors.fittable())),
    help="gmm: Gaussian mixture (scikit-learn's EM); flow: normalising flow (zuko MAF/NSF, Adam).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Write a new prior-only bundle that refers to RUN by path and weight fingerprint, "
    "instead of adding the prior to RUN.",
)
@options.settings_options(config.PriorFitSettings)
@_kind_settings
@options.post_hoc_fit(
    "Replace a prior of this kind already fitted to RUN.",
    "Continue a flow fit stopped by SIGTERM/SIGUSR1 (exit code 75) from its checkpoint, with the "
    "settings it was started with (same RUN, --kind and --out).",
)
def fit_prior(
    run, kind, out, overwrite, resume, step_delay, log_jsonl, tensorboard, device, data_root, as_json, **settings
):
    """Fit a prior over the latent of the trained model RUN to its aggregate posterior, VAE frozen.

    \b
    The aggregate posterior q(z) = 1/N sum_i q(z | X_i) over the training set (all modalities given)
    is what a VAE's decoders were trained on; a prior fitted to it replaces p0(z) at generation:
    `mmvae sample RUN --prior KIND`, `mmvae eval coherence|fid|all RUN --prior KIND`, and, the
    density being tractable, `mmvae eval likelihood RUN --prior KIND`.

    Writes prior-KIND.safetensors and `priors: {KIND: ...}` in RUN's manifest (or --out NEW_RUN),
    with the fit's statistics and seconds, and prints the mean log-density of fresh aggregate-posterior
    samples under the fitted prior and under p0. The flow's Adam loop checkpoints every epoch;
    SIGTERM/SIGUSR1 write a checkpoint and exit with code 75, --resume continues it.
    Energy-based priors keep their command: `mmvae fit-ebm`.
    """
    from ..jobs import PriorFitRequest, prepare_prior_fit

    request = PriorFitRequest(
        run,
        kind,
        out,
        options.given(settings, config.PriorFitSettings),
        {k: v for k, v in settings.items() if k not in {f.name for f in config.fields(config.PriorFitSettings)}},
        overwrite,
        resume,
        log_jsonl,
        tensorboard,
        step_delay,
        device,
        data_root,
    )
    result = prepare_prior_fit(request).run()
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"{kind} prior fitted in {result['seconds']:.2f} s: mean log-density of {result['eval_samples']} "
        f"aggregate-posterior samples {result['log_lik']:.4g} (base prior p0: {result['base_log_lik']:.4g})"
    )
