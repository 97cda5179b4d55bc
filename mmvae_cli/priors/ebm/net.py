"""The energy network E(z) of an energy-based prior: an MLP over the latent, optionally over standardised
coordinates and noise-conditional (NCSN).

Sign convention (used everywhere in the project): an energy network returns the energy E(z) of each
sample, shape (B,), and LOWER energy means MORE likely. Its defaults (width, depth, activation) are
config.py's (EnergySettings, ENERGY_DEFAULTS).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from ...config import ENERGY_DEFAULTS, EnergySettings, default_of
from ...errors import BundleError, MMVAEError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "elu": nn.ELU,
}
HIDDEN = default_of(EnergySettings, "energy_hidden")
LAYERS = default_of(EnergySettings, "energy_layers")
ACTIVATION = ENERGY_DEFAULTS.ml_activation


@dataclass(frozen=True)
class EnergyConfig:
    """Architecture of an `EnergyNet`, JSON-serialisable so a bundle can rebuild it.

    dim: latent size; hidden: units per hidden layer; layers: number of Linear
    layers (>= 1; the paper's best, the default, is 4 layers of 400 units:
    dim-400-400-400-1); activation: one of gelu | silu | softplus | leaky_relu
    (slope 0.2) | elu. Score matching needs a twice-differentiable energy: use a
    smooth activation (gelu, silu, softplus, elu) there, not leaky_relu.
    """

    dim: int
    hidden: int = HIDDEN
    layers: int = LAYERS
    activation: str = ACTIVATION
    noise_levels: int = 0  # > 0: noise-conditional energy E(z, sigma) over that many levels (ncsn)
    standardise: bool = False  # the energy sees u = (z - shift) / scale (aggregate mean and std)
    members: int = 1  # > 1: an ensemble, E = mean of that many MLPs' energies (fitted each by its own loss)

    def __post_init__(self):
        for name in ("dim", "hidden", "layers", "members"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise MMVAEError(f"energy {name} must be a positive integer, got {v!r}")
        v = self.noise_levels
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise MMVAEError(f"energy noise_levels must be a non-negative integer, got {v!r}")
        if not isinstance(self.standardise, bool):
            raise MMVAEError(f"energy standardise must be true or false, got {self.standardise!r}")
        if self.members > 1 and self.noise_levels:
            raise MMVAEError("an ensemble energy cannot be noise-conditional")
        if self.activation not in ACTIVATIONS:
            raise MMVAEError(f"unknown energy activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")

    def to_dict(self) -> dict:
        """JSON form; the ncsn fields only when set, so plain energies' manifests are as before."""
        d = asdict(self)
        if not d["noise_levels"]:
            del d["noise_levels"]
        if not d["standardise"]:
            del d["standardise"]
        if d["members"] == 1:
            del d["members"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EnergyConfig:
        """Inverse of `to_dict`; a malformed dict raises BundleError."""
        if not isinstance(d, dict):
            raise BundleError(f"energy config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise BundleError(f"energy config has unknown keys: {', '.join(sorted(unknown))}")
        if "dim" not in d:
            raise BundleError("energy config lacks 'dim'")
        try:
            return cls(**d)
        except MMVAEError as e:
            raise BundleError(f"bad energy config: {e}") from None


class EnergyNet(nn.Module):
    """MLP energy E(z): dim -> hidden -> ... -> hidden -> 1 with `layers` Linear layers.

    forward(z) with z of shape (..., dim) returns E(z) of shape (...), i.e. (B,)
    for a batch. Lower energy = more likely (log p = -E + const).

    standardise: the MLP sees u = (z - shift) / scale (buffers, set by the fit to the aggregate
    posterior's per-dimension mean and std), so dimensions of very different spread are
    conditioned alike; p(z) ∝ exp(-E) is unchanged in meaning (a constant Jacobian).
    noise_levels L > 0 (Song & Ermon 2019, NCSN): a noise-conditional energy
        E(u, sigma) = MLP([u, log sigma]) / sigma
    over the L levels of the buffer `sigmas` (geometric, largest first, in u units), the energy of
    the data smoothed by N(0, sigma^2 I). forward(z) without sigma is the smallest level's energy,
    so every plain use (log densities, plain Langevin) sees the least smoothed density.
    members K > 1 (nce): an ensemble of K MLPs, E(z) = (1/K) sum_k E_k(z), each member fitted by its own
    loss (`member`): the mean of K estimates of the same log-ratio, of lower variance.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = HIDDEN,
        layers: int = LAYERS,
        activation: str = ACTIVATION,
        noise_levels: int = 0,
        standardise: bool = False,
        members: int = 1,
    ):
        super().__init__()
        self.config = EnergyConfig(
            dim=dim,
            hidden=hidden,
            layers=layers,
            activation=activation,
            noise_levels=noise_levels,
            standardise=standardise,
            members=members,
        )
        sizes = [dim + (1 if noise_levels else 0)] + [hidden] * (layers - 1) + [1]

        def mlp() -> nn.Sequential:
            mods: list[nn.Module] = []
            for i in range(layers):
                mods.append(nn.Linear(sizes[i], sizes[i + 1]))
                if i < layers - 1:
                    mods.append(ACTIVATIONS[activation]())
            return nn.Sequential(*mods)

        if members == 1:
            self.net = mlp()
        else:  # each member its own initialisation (drawn in turn from the global generator)
            self.nets = nn.ModuleList(mlp() for _ in range(members))
        if standardise:
            self.register_buffer("shift", torch.zeros(dim))
            self.register_buffer("scale", torch.ones(dim))
        if noise_levels:
            self.register_buffer("sigmas", torch.ones(noise_levels))

    @property
    def noise_conditional(self) -> bool:
        return self.config.noise_levels > 0

    def to_u(self, z: torch.Tensor) -> torch.Tensor:
        """z -> u, the MLP's coordinates (identity without standardise)."""
        return (z - self.shift) / self.scale if self.config.standardise else z

    def from_u(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.scale + self.shift if self.config.standardise else u

    def energy_u(self, u: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        """E in u coordinates: (B, dim) -> (B,); sigma: a float or (B,) tensor of noise levels
        (noise-conditional energies; None = the smallest level)."""
        if u.shape[-1] != self.config.dim:
            raise ValueError(f"EnergyNet expects latents of size {self.config.dim}, got shape {tuple(u.shape)}")
        if self.config.members > 1:
            return torch.stack([net(u).squeeze(-1) for net in self.nets]).mean(0)
        if not self.noise_conditional:
            return self.net(u).squeeze(-1)
        if sigma is None:
            sigma = self.sigmas[-1]
        sig = torch.as_tensor(sigma, dtype=u.dtype, device=u.device)
        sig = torch.broadcast_to(sig, u.shape[:-1]).unsqueeze(-1)
        return (self.net(torch.cat([u, sig.log()], -1)) / sig).squeeze(-1)

    def member(self, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """z -> E_k(z), the k-th member's energy (a plain energy is its own only member)."""
        if self.config.members == 1:
            return self
        return lambda z: self.nets[k](self.to_u(z)).squeeze(-1)

    @classmethod
    def from_config(cls, config: EnergyConfig | dict) -> EnergyNet:
        if isinstance(config, dict):
            config = EnergyConfig.from_dict(config)
        return cls(**config.to_dict())

    def forward(self, z: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        if z.shape[-1] != self.config.dim:
            raise ValueError(f"EnergyNet expects latents of size {self.config.dim}, got shape {tuple(z.shape)}")
        return self.energy_u(self.to_u(z), sigma)
