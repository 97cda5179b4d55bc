"""ebm: the energy-based prior p_alpha(z) ∝ exp(-E(z)) p0(z) (Yuan et al.), or EB-MVAE's Gibbs density
exp(-E(z)), sampled by short-run Langevin (model.run_langevin).

The energy itself (ebm.LatentEBM) stays the model's `ebm` (joint training uses it in the objective,
EB-MVAE's cross-generation in conditional Langevin) and keeps its storage: ebm.safetensors and the
manifest's `ebm` section. Its normaliser is unknown, so log_prob is None.
"""

from __future__ import annotations

from dataclasses import fields

from ..config import LangevinSettings
from .base import LatentPrior


class EnergyPrior(LatentPrior):
    kind = "ebm"
    title = "energy-based prior"
    help = "short-run Langevin on the bundle's energy (fit-ebm or train --prior ebm)"
    sampler_options = tuple(f.name for f in fields(LangevinSettings))  # every Langevin setting

    def __init__(self, model):
        super().__init__()
        self.__dict__["model"] = model

    @classmethod
    def how_to_get(cls, run: str = "RUN") -> str:
        return f"mmvae fit-ebm {run}"

    @classmethod
    def from_model(cls, model):
        return cls(model) if model.ebm is not None else None

    def sample(self, n: int, **langevin):
        return self.chain(n, **langevin).z

    def chain(self, n: int, every: int = 0, **langevin):
        """The Langevin run from the chains' start (ebm.LangevinResult; snapshots every `every` steps)."""
        self.check_options(langevin)
        m = self.model
        return m.run_langevin(m.ebm_start(n), every=every, **langevin)
