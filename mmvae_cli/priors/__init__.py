"""Priors over a model's latent z, as pieces: one module per kind, one registration line each.

    kind   module    density                                       fitted by
    base   p0.py     the VAE's own prior p0(z)                     training
    ebm    ebm/      p_alpha(z) ∝ exp(-E(z)) p0(z) (unnormalised)  `mmvae fit-ebm` (= fit-prior --kind ebm)
                                                                   or `train --prior ebm`
    gmm    gmm.py    a Gaussian mixture of q(z)                    `mmvae fit-prior --kind gmm`
    flow   flow.py   a normalising flow of q(z)                    `mmvae fit-prior --kind flow`

Every kind is a `base.LatentPrior`: `sample(n)`, `log_prob(z)` (None where the density is not
normalised), its tensors (stored as prior-KIND.safetensors) and its JSON settings (the manifest's
`priors: {KIND: ...}`). Fitted kinds learn from the aggregate posterior (bank.ExpertBank) in one job
(commands/fit_prior.py). Nothing outside this package branches on a kind's name: the model asks
`model.latent_prior(NAME)`, the CLI takes its --prior and --kind choices from `names()` and `fittable()`.

Adding a kind: a module here with a LatentPrior subclass, and its line in KINDS below (plus, if it is
fitted by `fit-prior`, its settings section in config.py).
"""

from __future__ import annotations

from importlib import import_module

from ..errors import MMVAEError
from .base import LatentPrior, prior_file

KINDS = {  # kind -> "module:Class" (imported when first used)
    "base": "p0:BasePrior",
    "ebm": "ebm:EnergyPrior",
    "gmm": "gmm:GMMPrior",
    "flow": "flow:FlowPrior",
}


def names() -> tuple[str, ...]:
    """Every registered kind (the --prior choices)."""
    return tuple(KINDS)


def get(kind: str) -> type[LatentPrior]:
    """The class of a registered kind; one-line error naming the kinds for an unknown one."""
    if kind not in KINDS:
        raise MMVAEError(f"unknown prior {kind!r}; choose one of {', '.join(KINDS)}")
    module, cls = KINDS[kind].split(":")
    return getattr(import_module(f".{module}", __name__), cls)


def fittable() -> tuple[str, ...]:
    """The kinds `mmvae fit-prior --kind` fits (those with settings sections and a `fit`)."""
    return tuple(k for k in KINDS if get(k).fit_prior)


__all__ = ["KINDS", "LatentPrior", "fittable", "get", "names", "prior_file"]
