"""Modality kinds: `KINDS` maps a name to its class (one file each). A new kind is one file plus its
registration here (the import and the KINDS entry); the networks and likelihoods its class names
(`archs`, `likelihoods`) become choices of --arch and --likelihood (`archs()`, `likelihoods()`). A kind
instance = class + JSON params; `make`, `infer` build them. `Modality` is one modality of a model:
name, kind, shape, nets, likelihood."""

from __future__ import annotations

import torch
from torch import nn

from ..distributions import Likelihood
from ..errors import MMVAEError
from .base import ModalityKind, NetBuilder
from .image import ImageKind
from .text import TextKind
from .vector import VectorKind
from .words import WordTextKind

KINDS: dict[str, type[ModalityKind]] = {
    "image": ImageKind,
    "vector": VectorKind,
    "text": TextKind,
    "words": WordTextKind,
}


def _union(attr: str) -> dict:
    """Every kind's `attr` (archs or likelihoods) by name, in registration order; a name means one thing."""
    out: dict = {}
    for kind in KINDS.values():
        for name, v in getattr(kind, attr).items():
            have = out.setdefault(name, v)
            if have is not v and not (isinstance(v, Likelihood) and type(have) is type(v)):
                raise MMVAEError(f"{kind.__name__}.{attr}: {name!r} names something else in another kind")
    return out


def archs() -> dict[str, NetBuilder]:
    """The --arch choices: every kind's nets (a modality may use any; the builder checks the shape)."""
    return _union("archs")


def likelihoods() -> dict[str, Likelihood]:
    """The --likelihood choices: every kind's likelihoods (a modality's kind says which apply to it)."""
    return _union("likelihoods")


def make(name: str, params: dict | None = None) -> ModalityKind:
    cls = KINDS.get(name)
    if cls is None:
        raise MMVAEError(f"unknown modality kind {name!r}; known kinds are {', '.join(KINDS)}")
    return cls(**(params or {}))


def infer(t: torch.Tensor) -> ModalityKind:
    """The kind of a stored tensor (N, ...) that does not say (old data, user files): 4-D images, else vectors."""
    return ImageKind() if ImageKind.claims(t) else VectorKind()


def from_model_shape(shape) -> ModalityKind:
    """The kind of a bundle's modality recorded before kinds were (shape (C, H, W) -> image, else vector)."""
    return ImageKind() if len(shape) == 3 else VectorKind()


class Modality:
    """One modality of a model (the MoPoE reference's `Modality`): its kind, its networks and its likelihood.

        x_m --encoder--> (loc, raw) heads of q(z | x_m)     z (or [z, w_m]) --decoder--> out
        log p(x_m | z) = sum over x_m's dimensions of likelihood.log_prob(out, x_m; scale)
        the objective weighs it by `rescale`; people and classifiers see likelihood.mean(out)

    `nets` builds the encoder and decoder of architecture `arch` (the kind's default for the shape
    when ""); the model keeps them in its `encoders` / `decoders` (the bundle's parameter names)."""

    def __init__(
        self, name: str, kind: ModalityKind, shape, likelihood: str, scale: float, rescale: float = 1.0, arch: str = ""
    ):
        self.name, self.kind, self.shape = name, kind, tuple(shape)
        self.likelihood = kind.likelihood(likelihood, name)
        self.scale, self.rescale = float(scale), float(rescale)
        self.arch = arch or kind.default_arch(self.shape)

    def __repr__(self) -> str:
        return f"Modality({self.name!r}, {self.kind.name}, {self.shape}, {self.likelihood.name}, {self.arch})"

    def nets(self, latent: int, hidden: int) -> tuple[nn.Module, nn.Module]:
        """(encoder, decoder) for a latent of size `latent` (`hidden`: the mlp nets' units)."""
        build = archs().get(self.arch)
        if build is None:
            raise MMVAEError(f"unknown --arch {self.arch!r}; choose one of {', '.join(archs())}")
        return build(self.shape, latent, hidden)

    def log_likelihood(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x_m | z), unweighted: out (..., B, *shape), x (B, *shape) -> (..., B)."""
        return self.likelihood.log_likelihood(out, x, self.scale)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(out)


__all__ = [
    "KINDS",
    "archs",
    "likelihoods",
    "ModalityKind",
    "Modality",
    "ImageKind",
    "VectorKind",
    "TextKind",
    "WordTextKind",
    "make",
    "infer",
    "from_model_shape",
]
