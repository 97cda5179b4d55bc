"""The interface every prior over the latent implements (pythae's BaseSampler, as one object).

    prior = Kind.fit(bank, common, settings, run)    # fitted kinds: from aggregate-posterior samples
    prior.sample(n)          -> (n, D) latents
    prior.log_prob(z)        -> (...,) log density over the last axis, or None when not tractable
    prior.tensors()          -> what prior-KIND.safetensors stores (never pickled)
    prior.to_json()          -> the constructor settings the manifest's `priors: {KIND: ...}` stores
    Kind.from_stored(json, tensors) rebuilds it.

Built-in kinds (base, ebm) are views of the model (`from_model`), stored with it; fitted kinds
(gmm, flow) are stored per kind next to it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..errors import MMVAEError


class SampleBank:
    """A fixed set of latents as a bank (`n`, `dim`, `device`, `sample(idx)`): toys and tests. The
    aggregate posterior of a VAE is fit_ebm.ExpertBank, which draws fresh z ~ q(z | X_i)."""

    def __init__(self, z: torch.Tensor):
        self.z, (self.n, self.dim), self.device = z, z.shape, z.device

    def sample(self, idx: torch.Tensor) -> torch.Tensor:
        return self.z[idx]


def prior_file(kind: str) -> str:
    """The bundle file of a fitted prior kind."""
    return f"prior-{kind}.safetensors"


class LatentPrior(nn.Module):
    kind: ClassVar[str] = ""
    help: ClassVar[str] = ""  # one line for --prior's help
    title: ClassVar[str] = ""  # its name in messages (default "KIND prior")
    tractable: ClassVar[bool] = False  # log_prob is a normalised density
    fit_prior: ClassVar[bool] = False  # fitted by `mmvae fit-prior --kind KIND`
    settings_cls: ClassVar[type | None] = None  # its config.py section (fit-prior flags)
    sampler_options: ClassVar[tuple[str, ...]] = ()  # keyword options of sample() (ebm: Langevin)

    @classmethod
    def name(cls) -> str:
        return cls.title or f"{cls.kind} prior"

    @classmethod
    def how_to_get(cls, run: str = "RUN") -> str:
        """The command that gives a bundle this prior."""
        return f"mmvae fit-prior {run} --kind {cls.kind}"

    @classmethod
    def from_model(cls, model) -> LatentPrior | None:
        """A prior the model itself carries (base, ebm), or None."""
        return None

    @classmethod
    def from_stored(cls, settings: dict, tensors: dict[str, torch.Tensor]) -> LatentPrior:
        raise NotImplementedError

    @classmethod
    def fit(cls, bank, common, settings, run=None, resume: bool = False, step_delay: float = 0.0):
        """(prior, stats) fitted to samples of the aggregate posterior (`bank.sample(idx)`, `bank.n`)."""
        raise NotImplementedError

    def check_options(self, options: dict) -> None:
        given = sorted(k for k, v in options.items() if v is not None and k not in self.sampler_options)
        if given:
            raise MMVAEError(
                f"--{given[0].replace('_', '-')} does not apply to the {self.kind} prior"
                + (" (Langevin options need --prior ebm)" if self.kind != "ebm" else "")
            )

    def sample(self, n: int, **options) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor | None:
        return None

    def to_json(self) -> dict:
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
