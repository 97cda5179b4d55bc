"""base: the model's own prior p0(z) (N(0, I) or Laplace(0, I), scale learned with --learn-prior)."""

from __future__ import annotations

import torch

from .base import LatentPrior


class BasePrior(LatentPrior):
    kind = "base"
    help = "the model's prior p0(z)"
    tractable = True

    def __init__(self, model):
        super().__init__()
        self.__dict__["model"] = model  # a view, not a submodule

    @classmethod
    def from_model(cls, model):
        return cls(model)

    @torch.no_grad()
    def sample(self, n: int, **options) -> torch.Tensor:
        self.check_options(options)
        return self.model.sample_prior(n)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.base_log_prob(z)
