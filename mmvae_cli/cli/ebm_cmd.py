"""`mmvae fit-ebm`: fit an energy-based prior to a trained (frozen) multimodal VAE; the job of
`mmvae fit-prior --kind ebm`, with the same flags (prior_cmd.fit_options)."""

from __future__ import annotations

import click

from .prior_cmd import fit_options, run_fit


@click.command("fit-ebm")
@click.argument("run", type=click.Path())
@fit_options(
    ("ebm",),
    ("seed",),
    "Write a new energy-only bundle that refers to RUN by path and weight fingerprint, "
    "instead of adding the energy to RUN.",
    "Replace an energy already fitted post hoc to RUN.",
)
def fit_ebm(as_json, **kw):
    """Fit an energy over the latent of the trained model RUN, keeping the VAE frozen.

    \b
    Shared latent (poe, moe, mopoe): the energy-based prior p(z) ∝ exp(-E(z)) p_b(z), a tilt of
    the base prior p_b (--base: by default the bundle's Gaussian mixture, fitted first with
    fit-prior's defaults when it has none), fitted to the aggregate posterior by noise-contrastive
    estimation against p_b's samples (optimum E = -log(q / p_b) + c; NCP-VAE; E the mean of an
    ensemble of such fits, --ensemble) and sampled by importance resampling of p_b's draws;
    --objective ml is Yuan et al.'s maximum likelihood
    (eq. 10) with short-run Langevin negatives (eq. 11). `mmvae sample RUN --prior ebm` samples it.
    EB-MVAE (--fusion none bundles): a joint density exp(-E(z_1, ..., z_M)) over the unimodal
    latents, fitted by score matching (eq. 1); cross-generate and eval coherence then sample the
    unobserved latents by Langevin with the observed ones clamped (eq. 2-3).

    Writes prior-ebm.safetensors and `priors: {ebm: ...}` into RUN's manifest (or into --out NEW_RUN).
    Prints the loss curve summary (and with --classifiers the joint coherence before and after);
    a diverging chain stops with exit code 3 and writes nothing. SIGTERM/SIGUSR1 write a checkpoint
    after the current step and exit with code 75; --resume continues it with the same result.
    Same job as `mmvae fit-prior RUN --kind ebm`.
    """
    run_fit("ebm", as_json, **kw)
