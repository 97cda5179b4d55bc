"""The multimodal VAE: experts x fusion x objective x prior x decoders.

    q(z | X_A) = fusion({q(z | x_m)}_{m in A})          (fusion.py)
    p(X, z)    = p(z) prod_m p(x_m | z)                   (distributions.py, nets/)
    loss       = objective(model, X)                      (objectives.py)

`ModelConfig` is the JSON-serialisable description stored in a bundle's manifest;
`MultimodalVAE(config)` rebuilds the same network from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
from torch import distributions as td
from torch import nn

from . import distributions as D
from . import nets
from .errors import MMVAEError
from .fusion import Mixture, make_fusion, parse_subsets


@dataclass
class ModalitySpec:
    name: str
    shape: list[int]
    likelihood: str = "laplace"   # laplace | gaussian | bernoulli | categorical
    scale: float = 0.75           # likelihood scale (Laplace/Gaussian)
    rescale: float = 1.0          # weight of log p(x_m | z) in the objective
    arch: str = ""                # conv28 | conv32 | mlp ("" = by shape)


@dataclass
class ModelConfig:
    modalities: list[ModalitySpec]
    latent_dim: int = 512
    fusion: str = "mopoe"         # poe | moe | mopoe
    subsets: str = "all"          # MoPoE mixture subsets
    objective: str = "elbo"       # elbo | iwae | dreg | mvae
    k: int = 1                    # importance samples (iwae, dreg)
    beta: float = 2.5
    posterior: str = "gaussian"   # gaussian | laplace
    prior: str = "gaussian"       # gaussian | laplace
    learn_prior: bool = False
    hidden: int | None = None     # MLP width (None = 400)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise MMVAEError(f"model config has unknown fields {sorted(unknown)} (made by a newer mmvae?)")
        d = dict(d)
        d["modalities"] = [ModalitySpec(**m) for m in d["modalities"]]
        return cls(**d)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.modalities]


class Prior(nn.Module):
    """p(z): N(0, I) or Laplace(0, I); with learn_prior the scale is learned
    (raw scale parameterised as the posterior's: exp(raw/2) or softmax(raw) * D)."""

    def __init__(self, kind: str, dim: int, learn: bool = False):
        super().__init__()
        if kind not in D.POSTERIORS:
            raise MMVAEError(f"unknown prior {kind!r}; choose gaussian or laplace")
        self.kind = kind
        self.register_buffer("loc", torch.zeros(dim))
        raw = torch.zeros(dim)
        if learn:
            self.raw = nn.Parameter(raw)
        else:
            self.register_buffer("raw", raw)

    def dist(self) -> td.Distribution:
        return D.expert(self.kind, self.loc, self.raw)


class MultimodalVAE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        if c.posterior not in D.POSTERIORS:
            raise MMVAEError(f"unknown posterior {c.posterior!r}; choose gaussian or laplace")
        self.names = c.names
        self.encoders = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        for m in c.modalities:
            if m.likelihood not in D.LIKELIHOODS:
                raise MMVAEError(f"unknown likelihood {m.likelihood!r} for {m.name}; choose {', '.join(D.LIKELIHOODS)}")
            arch = m.arch or nets.default_arch(tuple(m.shape))
            self.encoders[m.name], self.decoders[m.name] = nets.build(arch, tuple(m.shape), c.latent_dim, c.hidden)
        self.fusion = make_fusion(c.fusion, len(self.names), parse_subsets(c.subsets, self.names))
        self.prior = Prior(c.prior, c.latent_dim, c.learn_prior)
        from .objectives import get_objective  # objectives import model types: import late
        self.objective = get_objective(c.objective)
        self.fusion.combine  # noqa: B018  (fail early on bad combinations in combine())

    # Runtime settings (not part of the bundle), set by training: with `amp_dtype` the networks run under
    # autocast and their outputs return to fp32, so products of experts, KLs and likelihoods stay in fp32;
    # with `channels_last` image inputs enter the encoders in channels-last layout.
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def device(self) -> torch.device:
        return self.prior.loc.device

    def run_net(self, net: nn.Module, x: torch.Tensor):
        """net(x) under the runtime settings above."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is None:
            return net(x)
        with torch.autocast(x.device.type, dtype=self.amp_dtype):
            out = net(x)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()

    # --- inference -------------------------------------------------------------------------------
    def given_mask(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        unknown = [k for k in x if k not in self.names]
        if unknown:
            raise MMVAEError(f"unknown modality {unknown[0]!r}; this model has {', '.join(self.names)}")
        return torch.tensor([n in x for n in self.names], dtype=torch.bool)

    def experts(self, x: dict[str, torch.Tensor]) -> td.Distribution:
        """Unimodal posteriors q(z | x_m) stacked to batch shape (M, B, D); absent modalities get
        placeholder N(0, I) rows that the fusion's masks never select."""
        some = next(iter(x.values()))
        B, Dz = some.shape[0], self.config.latent_dim
        locs, raws = [], []
        for n in self.names:
            if n in x:
                loc, raw = self.run_net(self.encoders[n], x[n])
            else:
                loc = raw = some.new_zeros(B, Dz)
            locs.append(loc)
            raws.append(raw)
        return D.expert(self.config.posterior, torch.stack(locs), torch.stack(raws))

    def posterior(self, x: dict[str, torch.Tensor]) -> Mixture:
        """q(z | X_A) for the modalities present in x."""
        if not x:
            raise MMVAEError("no input modality given")
        return self.fusion.combine(self.experts(x), self.given_mask(x), self.prior.dist())

    # --- generation ------------------------------------------------------------------------------
    def decode(self, z: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Decoder outputs (likelihood parameters) for latents z of shape (..., D)."""
        return {n: nets.apply_flat(lambda t, net=self.decoders[n]: self.run_net(net, t), z, z.shape[-1])
                for n in (names or self.names)}

    def log_likelihoods(self, outs: dict[str, torch.Tensor], x: dict[str, torch.Tensor]) -> torch.Tensor:
        """sum_m rescale_m * log p(x_m | z) over the modalities in both outs and x: (..., B)."""
        total = 0.0
        for spec in self.config.modalities:
            if spec.name in outs and spec.name in x:
                total = total + spec.rescale * D.log_likelihood(spec.likelihood, outs[spec.name], x[spec.name], spec.scale)
        return total

    def means(self, outs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        kinds = {m.name: m.likelihood for m in self.config.modalities}
        return {n: D.mean(kinds[n], o) for n, o in outs.items()}

    @torch.no_grad()
    def sample_prior(self, n: int) -> torch.Tensor:
        """n latents from the base prior p(z). (n, D)"""
        return self.prior.dist().sample((n,))

    def sample_latents(self, n: int, prior: str = "base", **langevin) -> torch.Tensor:
        """n latents from the base prior ("base") or the energy-based prior ("ebm"). (n, D)"""
        if prior == "base":
            return self.sample_prior(n)
        if prior == "ebm":
            raise MMVAEError("this bundle has no energy-based prior; fit one with `mmvae fit-ebm RUN`")
        raise MMVAEError(f"unknown prior {prior!r}; choose base or ebm")

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decoded means of every modality for latents z (B, D)."""
        return self.means(self.decode(z))

    @torch.no_grad()
    def cross_generate(self, x: dict[str, torch.Tensor], names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """One sample z ~ q(z | X_given), decoded to the means of `names` (default: all)."""
        z = self.posterior(x).sample()
        return self.means(self.decode(z, names))

    def forward(self, x: dict[str, torch.Tensor]):
        """(loss, stats) of the configured objective on a batch (so DDP can wrap the model)."""
        return self.objective(self, x)
