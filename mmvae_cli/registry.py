"""The pieces a model's settings name: fusions, objectives and latent families, one registration each.

Plain data, importable by config.py (the bottom layer, which takes its choices, defaults and checks
from here); a piece's code is imported when first used (`load`). Each registration declares what the
rest of the program asks of the piece, so that nothing else branches on its name:

    fusion     "module:Class" (fusion.Fusion), the model it makes, its paper's objective, and whether it
               has a shared latent, multiplies experts, takes MMVAE+'s private latents, mixes --subsets,
               stratifies the ELBO by batch chunks, has a joint encoder q(z | X) (JMVAE), needs complete tuples
    objective  "module:function" (objectives.py), whether it takes private latents, and for a peer model's
               objective (JMVAE, mmJSD, MVTCAE, DMVAE, CMVAE) the fusions it is defined for, the model it makes
               (its recipes), the ModelSettings it reads, and what it needs of the posteriors and the prior

A model is a composition: `--objective mvtcae` is MVTCAE (PoE fusion, its objective), `--fusion mopoe`
is MoPoE (the MoPoE paper's objective); docs/models.md lists them.

Adding a fusion: its class (fusion.py, or a file of its own) and its line in FUSIONS; adding an
objective: its function and its line in OBJECTIVES. (Datasets, modality kinds and fitted priors
register in their own packages: data/, modalities/, priors/.)
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

from .errors import MMVAEError


@dataclass(frozen=True)
class Fusion:
    """What a fusion declares (fusion.py's classes read it as `Fusion.spec`)."""

    code: str  # "module:Class" under mmvae_cli: the fusion.Fusion subclass
    model: str  # the model it makes: its shipped recipes are recipes/<family>-<model>.toml
    objective: str  # its paper's objective, used when neither the recipe nor --objective names one
    shared_latent: bool = True  # False: z = (z_1, ..., z_M) of latent_dim each, decoder m reads z_m
    products: bool = False  # multiplies experts: a closed form only for Gaussian posteriors and prior
    private_latents: bool = False  # takes MMVAE+'s modality-private latents w_m (--private-dim)
    subsets: bool = False  # its mixture runs over --subsets (so a partial tuple may hold none of them)
    chunked: bool = False  # ELBO: one sample per item, the batch split among the components (MoPoE reference)
    joint_encoder: bool = False  # a joint network q(z | x_1..x_M) beside the unimodal experts (JMVAE)
    complete: bool = False  # its posterior of a whole tuple needs every modality: trains on complete tuples only

    def z_dim(self, latent_dim: int, n_modalities: int) -> int:
        """Size of z: the shared latent, or the M unimodal latents concatenated."""
        return latent_dim * (1 if self.shared_latent else n_modalities)


FUSIONS = {
    "poe": Fusion("fusion:PoE", "mvae", "mvae", products=True),
    "moe": Fusion("fusion:MoE", "mmvae", "iwae", private_latents=True),
    "mopoe": Fusion("fusion:MoPoE", "mopoe", "elbo", products=True, subsets=True, chunked=True),
    "none": Fusion("fusion:Independent", "ebmvae", "elbo", shared_latent=False),
    "joint": Fusion("fusion:Joint", "jmvae", "jmvae", products=True, joint_encoder=True, complete=True),
}


@dataclass(frozen=True)
class Objective:
    """What a training objective declares."""

    code: str  # "module:function" under mmvae_cli: (model, x, present) -> (loss, stats)
    private_latents: bool = False  # handles private latents (MMVAE+'s stratified cross terms; DMVAE's)
    learned_private_prior: bool = False  # learns the scale of p(w_m) (MMVAE+'s cross terms draw from it)
    fusions: tuple[str, ...] = ()  # the fusions it is defined for (() = any); the first when none is named
    model: str = ""  # the model it makes with them ("" = the fusion's): recipes/<family>-<model>.toml
    settings: tuple[str, ...] = ()  # the ModelSettings fields it reads (recorded in ModelConfig.extra)
    gaussian: bool = False  # closed forms only for Gaussian posteriors and prior
    train_prior: bool = True  # takes a prior trained with the VAE (`train --prior ebm`)
    clusters: bool = False  # its p(z) is a mixture of --clusters learned components (CMVAE; model.ClusterPrior)


OBJECTIVES = {
    "elbo": Objective("objectives:elbo"),
    "iwae": Objective("objectives:iwae", private_latents=True, learned_private_prior=True),
    "dreg": Objective("objectives:dreg", private_latents=True, learned_private_prior=True),
    "mvae": Objective("objectives:mvae"),
    "mvtcae": Objective("objectives:mvtcae", fusions=("poe",), model="mvtcae", settings=("mvtcae_alpha",)),
    "jmvae": Objective("objectives:jmvae", fusions=("joint",), model="jmvae", settings=("jmvae_alpha", "joint_hidden")),
    "mmjsd": Objective("objectives:mmjsd", fusions=("moe",), model="mmjsd", gaussian=True, train_prior=False),
    "dmvae": Objective("objectives:dmvae", private_latents=True, fusions=("poe",), model="dmvae", train_prior=False),
    "cmvae": Objective(
        "objectives:cmvae",
        private_latents=True,
        learned_private_prior=True,
        fusions=("moe",),
        model="cmvae",
        settings=("clusters",),
        train_prior=False,
        clusters=True,
    ),
}

FAMILIES = ("gaussian", "laplace")  # of the posteriors q(z | x_m) and the base prior p0(z) (distributions.expert)


def fusion(name: str) -> Fusion:
    """The registration of fusion `name`; one-line error naming the fusions for an unknown one."""
    if name not in FUSIONS:
        raise MMVAEError(f"unknown fusion {name!r}; choose one of {', '.join(FUSIONS)}")
    return FUSIONS[name]


def paper_objective(fusion_name: str) -> str:
    """The objective of fusion `fusion_name`'s paper, used when none is named (elbo for a name that is not
    registered, which the settings' checks then refuse)."""
    return FUSIONS[fusion_name].objective if fusion_name in FUSIONS else "elbo"


def model_name(fusion_name: str, objective_name: str | None) -> str:
    """The model a fusion and objective make (recipes/<family>-<model>.toml): the objective's when it
    declares one, else the fusion's (the name itself for one that is not registered)."""
    o = OBJECTIVES.get(objective_name or "")
    if o is not None and o.model:
        return o.model
    return FUSIONS[fusion_name].model if fusion_name in FUSIONS else fusion_name


def objective(name: str) -> Objective:
    """The registration of objective `name`; one-line error naming the objectives for an unknown one."""
    if name not in OBJECTIVES:
        raise MMVAEError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def declaring(table: dict, prop: str) -> tuple[str, ...]:
    """The names in `table` whose registration declares `prop`."""
    return tuple(n for n, spec in table.items() if getattr(spec, prop))


def load(code: str):
    """The class or function named "module:attr" under mmvae_cli."""
    module, attr = code.split(":")
    return getattr(import_module(f"mmvae_cli.{module}"), attr)
