"""The multimodal VAE: experts x fusion x objective x prior x decoders.

    q(z | X_A) = fusion({q(z | x_m)}_{m in A})          (fusion.py)
    p(X, z)    = p(z) prod_m p(x_m | z)                   (distributions.py, nets/)
    loss       = objective(model, X)                      (objectives.py)

With `private_dim` D_w > 0 (MMVAE+, Palumbo et al. 2023) every modality also has a private latent
w_m: encoders output [z, w_m] heads, q(z, w_m | x_m) = q(z | x_m) q(w_m | x_m), decoders read
[z, w_m], and each w_m has a prior of the prior's family:

    p(X, z, w) = p(z) prod_m p(w_m) p(x_m | z, w_m).

As in the reference code (epalu/mmvaeplus), there are two priors on w_m. `private_priors[m]`
has a learned scale and gives the cross terms of the training objective: w^(d) ~ p_learned(w_d)
whenever modality d is decoded from another modality's z. With `private_prior` "reference"
(the default) the bound's log p(w_r) and every w drawn at generation time (joint sampling,
cross-generation of a missing modality) use the fixed p(w_m) = Laplace(0, I) (N(0, I) for a
Gaussian prior). With "learned" (bundles made before the option) the learned prior is used
everywhere. See `MultimodalVAE.w_prior`.

An objective may declare a prior of its own: CMVAE's (--objective cmvae) p(z) is a learned mixture
of --clusters components (`ClusterPrior`), which every use of the base prior then takes (its log p(z),
sampling, `mmvae eval clusters`).

`ModelConfig` is the JSON-serialisable description stored in a bundle's manifest (its defaults are
config.ModelSettings'); `MultimodalVAE(config)` rebuilds the same network from it, one
`modalities.Modality` per modality (kind, nets, likelihood).

Priors over the latent (priors/: an energy, a Gaussian mixture, a flow) are attached by kind
(`attach_prior`), and `sample_latents(n, prior=NAME)` asks `latent_prior(NAME)`, whatever the kind.
An energy turns p0 into the energy-based prior p_alpha(z) ∝ exp(-E(z)) p0(z) of Yuan et al. (any
fusion), or, for fusion "none" (EB-MVAE), into a joint model p(z_1..z_M) ∝ exp(-E(z)) of the unimodal
latents, which `cross_generate` samples given the observed ones (a `conditional` prior). A prior
trained with the VAE (`train --prior ebm`) is also `train_prior`, whose terms the objectives use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
from torch import distributions as td
from torch import nn

from . import distributions as D
from . import modalities, nets
from .config import PRIVATE_PRIORS, ModelSettings, RuntimeSettings, check_model, default_of
from .errors import MMVAEError
from .fusion import Mixture, make_fusion, parse_subsets
from .nets import grouped
from .nets.joint import JointEncoder
from .objectives import get_objective
from .registry import FAMILIES, paper_objective
from .registry import fusion as fusion_spec
from .registry import objective as objective_spec


def _default(name: str):
    """ModelSettings' default of field `name` (config.py holds every default)."""
    return default_of(ModelSettings, name)


@dataclass
class ModalitySpec:
    """One modality as a manifest records it; `modalities.Modality` is what the model builds from it."""

    name: str
    shape: list[int]
    likelihood: str = ""  # a name in the kind's likelihoods ("" = the kind's default)
    scale: float = _default("likelihood_scale")  # likelihood scale (Laplace/Gaussian)
    rescale: float = 1.0  # weight of log p(x_m | z) in the objective
    arch: str = ""  # a name in modalities.archs() ("" = the kind's default for the shape)
    kind: str = ""  # a name in modalities.KINDS ("" in manifests made before kinds: by shape)
    params: dict = field(default_factory=dict)  # the kind's parameters (text: alphabet, pad)

    def __post_init__(self):
        if not self.kind:
            self.kind = modalities.from_model_shape(self.shape).name
        if not self.likelihood:
            self.likelihood = modalities.make(self.kind, self.params).default_likelihood

    def modality(self) -> modalities.Modality:
        kind = modalities.make(self.kind, self.params)
        return modalities.Modality(self.name, kind, self.shape, self.likelihood, self.scale, self.rescale, self.arch)


@dataclass
class ModelConfig:
    """The model as a manifest records it; the defaults are config.ModelSettings' (objective None: the
    fusion's own, registry.paper_objective)."""

    modalities: list[ModalitySpec]
    latent_dim: int = _default("latent_dim")  # per modality for fusion none (EB-MVAE)
    fusion: str = _default("fusion")
    subsets: str = _default("subsets")
    objective: str | None = _default("objective")
    k: int = _default("k")
    beta: float = _default("beta")
    posterior: str = _default("posterior")
    prior: str = _default("prior")
    learn_prior: bool = _default("learn_prior")
    hidden: int = _default("hidden")
    extra: dict = field(default_factory=dict)  # mvae_k (ModelSettings.mvae_subsets); a peer objective's settings
    private_dim: int = _default("private_dim")
    private_prior: str = _default("private_prior")

    def __post_init__(self):
        if self.objective is None:
            self.objective = paper_objective(self.fusion)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise MMVAEError(f"model config has unknown fields {sorted(unknown)} (made by a newer mmvae?)")
        d = dict(d)
        if d.get("hidden") is None:
            d["hidden"] = 400  # bundles before config.py recorded None for the mlp nets' 400 units
        d.setdefault("private_prior", "learned")  # manifests from before the field: the behaviour they had
        d["modalities"] = [ModalitySpec(**m) for m in d["modalities"]]
        return cls(**d)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.modalities]


def named(spec: str, names: list[str], option: str) -> dict[str, str]:
    """Parse "NAME=VALUE,..." into {NAME: VALUE}; a NAME that is not a modality, or an item without "=", is refused."""
    pairs = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        name, sep, value = (t.strip() for t in item.partition("="))
        if not sep or name not in names:
            raise MMVAEError(
                f"{option} {spec!r}: {name!r} is not a modality of this data "
                f"({', '.join(names)}); use VALUE or NAME=VALUE,..."
            )
        pairs[name] = value
    return pairs


def per_modality(spec: str | None, names: list[str], option: str, choices: tuple[str, ...], default: str) -> dict:
    """Parse a per-modality setting: one value for all ("laplace") or "name=value,..." pairs, where
    unnamed modalities keep `default`. Returns {modality: value}."""
    spec = (spec or "").strip()
    if not spec:
        return {n: default for n in names}
    pairs = (
        {n: spec for n in names} if "=" not in spec else {**{n: default for n in names}, **named(spec, names, option)}
    )
    for n, v in pairs.items():
        if v not in choices and v != default:
            raise MMVAEError(f"{option}: unknown value {v!r} for {n}; choose one of {', '.join(choices)}")
    return pairs


def rec_weights(spec: str | None, names: list[str]) -> dict[str, float]:
    """`--rec-weight` "NAME=WEIGHT,...": {modality: weight > 0} for the named modalities."""
    out = {}
    for name, value in named(spec or "", names, "--rec-weight").items():
        try:
            w = float(value)
        except ValueError:
            w = float("nan")
        if not (0 < w < float("inf")):
            raise MMVAEError(f"--rec-weight {spec!r}: the weight of {name} must be a positive number, not {value!r}")
        out[name] = w
    return out


def build_config(m: ModelSettings, data) -> ModelConfig:
    """ModelConfig for `data` from checked model settings. `likelihood` and `arch` take one value
    for all modalities or NAME=VALUE pairs; one value for all applies to the modalities whose kind
    accepts it (text keeps its categorical likelihood and char nets), the others keep their kind's
    default; with `rescale`, log p(x_m | z) is weighted by (largest modality size) / (size of m), as
    the MMVAE reference does (MNIST x 3072/784; a string counts L positions); `rec_weight` names a
    weight for some modalities, which wins over `rescale`'s."""
    names = list(data.modalities)
    kinds = {n: data.kind(n) for n in names}
    shapes = {n: data.input_shape(n) for n in names}
    sizes = {n: int(torch.tensor(data.shape(n)).prod()) for n in names}
    largest = max(sizes.values())
    named = "=" in (m.likelihood or "")
    lik = per_modality(m.likelihood, names, "--likelihood", tuple(modalities.likelihoods()), "")
    weight = rec_weights(m.rec_weight, names)
    arch_named = "=" in (m.arch or "")
    arch = per_modality(m.arch, names, "--arch", tuple(modalities.archs()), "")
    for n, k in kinds.items():
        if k.own_defaults and not named and lik[n] not in k.likelihoods:
            lik[n] = ""  # a value for all modalities does not reach text
        lik[n] = lik[n] or k.default_likelihood
        k.likelihood(lik[n], n)
        if k.own_defaults and arch[n] not in k.archs:
            if arch_named and arch[n]:
                raise MMVAEError(
                    f"--arch {arch[n]} does not apply to {k.name} modality {n!r}; choose {', '.join(k.archs)}"
                )
            arch[n] = ""
    specs = [
        ModalitySpec(
            n,
            list(shapes[n]),
            lik[n],
            float(m.likelihood_scale),
            weight.get(n, float(largest / sizes[n]) if m.rescale else 1.0),
            arch[n] or kinds[n].default_arch(shapes[n]),
            kinds[n].name,
            dict(kinds[n].params),
        )
        for n in names
    ]
    extra = {"mvae_k": m.mvae_subsets} if m.mvae_subsets else {}
    extra.update({k: getattr(m, k) for k in objective_spec(m.objective or paper_objective(m.fusion)).settings})
    return ModelConfig(
        specs,
        m.latent_dim,
        m.fusion,
        m.subsets,
        m.objective,
        m.k,
        float(m.beta),
        m.posterior,
        m.prior,
        m.learn_prior,
        m.hidden,
        extra,
        private_dim=m.private_dim,
        private_prior=m.private_prior,
    )


def _family_and_scale(prior: nn.Module, kind: str, raw: torch.Tensor, learn: bool) -> None:
    """A prior's family (checked) and raw scale: a parameter when learned, else a buffer."""
    if kind not in FAMILIES:
        raise MMVAEError(f"unknown prior {kind!r}; choose gaussian or laplace")
    prior.kind = kind
    if learn:
        prior.raw = nn.Parameter(raw)
    else:
        prior.register_buffer("raw", raw)


class Prior(nn.Module):
    """p(z): N(0, I) or Laplace(0, I); with learn_prior the scale is learned
    (raw scale parameterised as the posterior's: exp(raw/2) or softmax(raw) * D)."""

    def __init__(self, kind: str, dim: int, learn: bool = False):
        super().__init__()
        self.register_buffer("loc", torch.zeros(dim))
        _family_and_scale(self, kind, torch.zeros(dim), learn)

    def dist(self) -> td.Distribution:
        return D.expert(self.kind, self.loc, self.raw)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) summed over the latent: (...,)."""
        return self.dist().log_prob(z).sum(-1)

    def sample(self, n: int) -> torch.Tensor:
        return self.dist().sample((n,))


class ClusterPrior(nn.Module):
    """CMVAE's clustering prior (Palumbo et al. 2024) on the shared latent:

        p(z) = sum_k pi_k p(z | c = k),   p(z | c = k) = prod_d F(z_d; mu_kd, s_kd),   pi = softmax(logits),

    F the prior's family (Gaussian or Laplace, `distributions.expert`). The weights and the means are
    learned, mu_k ~ U(-1, 1)^D at initialisation and pi uniform, as the reference code and MultiVae 1.0.3;
    the scales are fixed at 1 as there (raw 0), learned with `learn` (--learn-prior). A cluster removed
    after training (`mmvae eval clusters --apply`) has logit -inf: pi_k = 0. The cluster posterior is
    q(c | z) = p(c | z) = pi_c p(z | c) / p(z) (`responsibilities`)."""

    def __init__(self, kind: str, dim: int, k: int, learn: bool = False):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(k))
        self.loc = nn.Parameter(2 * torch.rand(k, dim) - 1)
        _family_and_scale(self, kind, torch.zeros(k, dim), learn)

    def components(self) -> td.Distribution:
        """p(z | c = k) for every k: batch shape (K, D)."""
        return D.expert(self.kind, self.loc, self.raw)

    def log_joint(self, z: torch.Tensor) -> torch.Tensor:
        """log pi_k + log p(z | c = k): (..., K) for z (..., D)."""
        return torch.log_softmax(self.logits, -1) + self.components().log_prob(z.unsqueeze(-2)).sum(-1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) = logsumexp_k (log pi_k + log p(z | c = k)): (...,)."""
        return torch.logsumexp(self.log_joint(z), -1)

    def responsibilities(self, z: torch.Tensor) -> torch.Tensor:
        """q(c = k | z) = p(c = k | z): (..., K)."""
        return torch.softmax(self.log_joint(z), -1)

    def sample(self, n: int) -> torch.Tensor:
        """n latents: c ~ Categorical(pi), then z ~ p(z | c). (n, D)"""
        c = td.Categorical(logits=self.logits).sample((n,))
        comp = self.components()
        return type(comp)(comp.loc[c], comp.scale[c], validate_args=False).sample()

    def dist(self) -> td.Distribution:
        """p(z) as a torch distribution (its log_prob is over the whole latent, not per dimension)."""
        comp = td.Independent(self.components(), 1)
        return td.MixtureSameFamily(td.Categorical(logits=self.logits), comp, validate_args=False)


def make_prior(c: ModelConfig, dim: int) -> nn.Module:
    """The model's p(z): the base prior, or the clustering prior of an objective that declares one (CMVAE)."""
    if objective_spec(c.objective).clusters:
        return ClusterPrior(c.prior, dim, int(c.extra.get("clusters", _default("clusters"))), c.learn_prior)
    return Prior(c.prior, dim, c.learn_prior)


class MultimodalVAE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        if c.posterior not in FAMILIES:
            raise MMVAEError(f"unknown posterior {c.posterior!r}; choose gaussian or laplace")
        self.names = c.names
        self.z_dim = fusion_spec(c.fusion).z_dim(c.latent_dim, len(c.modalities))  # size of z
        check_model(
            ModelSettings(
                fusion=c.fusion,
                objective=c.objective,
                k=c.k,
                private_dim=c.private_dim,
                posterior=c.posterior,
                prior=c.prior,
            )
        )
        if c.private_prior not in PRIVATE_PRIORS:
            raise MMVAEError(f"unknown private prior {c.private_prior!r}; choose {' or '.join(PRIVATE_PRIORS)}")
        self.modalities = {m.name: m.modality() for m in c.modalities}  # kind, likelihood, arch
        # the nets live here, not in the Modality objects: the bundle's parameter names (encoders.NAME.*,
        # decoders.NAME.*) and order (the optimizer state's) stay those of every bundle made so far
        self.encoders = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        for n, mod in self.modalities.items():
            self.encoders[n], self.decoders[n] = mod.nets(c.latent_dim + c.private_dim, c.hidden)
        self.fusion = make_fusion(c.fusion, len(self.names), parse_subsets(c.subsets, self.names))
        self.joint_encoder = None  # JMVAE's q(z | X) (nets/joint.py), for a fusion that declares one
        if self.fusion.spec.joint_encoder:
            embed = {n: mod.nets(c.latent_dim, c.hidden)[0] for n, mod in self.modalities.items()}
            self.joint_encoder = JointEncoder(embed, c.latent_dim, int(self.setting("joint_hidden")))
        encs, decs = list(self.encoders.values()), list(self.decoders.values())
        self.groupable = (grouped.groupable(encs, nets.ConvEncoder), grouped.groupable(decs, nets.ConvDecoder))
        self.prior = make_prior(c, self.z_dim)  # p(z): Prior, or CMVAE's ClusterPrior
        # private latents: p(w_m) of the prior's family, one per modality, with a learned scale for MMVAE+'s
        # objectives (a fixed one for DMVAE's, which would leave the scale without a gradient)
        learn_w = objective_spec(c.objective).learned_private_prior
        self.private_priors = nn.ModuleDict(
            {n: Prior(c.prior, c.private_dim, learn=learn_w) for n in self.names} if c.private_dim else {}
        )
        self.priors: dict = {}  # attached priors by kind (priors.LatentPrior; not submodules), attach_prior
        self.train_prior = None  # the one trained with the VAE (a submodule once attached), attach_prior
        self._register_load_state_dict_pre_hook(_legacy_energy_keys)
        self.objective = get_objective(c.objective)

    # Runtime settings (not part of the bundle), set by training: with `amp_dtype` the networks run under
    # autocast and their outputs return to fp32, so products of experts, KLs and likelihoods stay in fp32;
    # with `channels_last` image inputs enter the encoders in channels-last layout; with `grouped_nets` the
    # M encoders (decoders) run as one grouped computation when they are identical conv nets and all M
    # modalities are encoded (decoded) together (nets/grouped.py; same parameters, float-rounding equal).
    # `beta_scale` multiplies the KL weight during a --beta-warmup-epochs warm-up (1 otherwise).
    # On the CPU, `cpu_chunk` caps the items per encoder/decoder call (run_net), 0 for none.
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    grouped_nets: bool = False
    cpu_chunk: int = default_of(RuntimeSettings, "cpu_chunk")
    beta_scale: float = 1.0

    def setting(self, name: str):
        """A peer objective's setting as the bundle records it (ModelConfig.extra), else its default."""
        return self.config.extra.get(name, _default(name))

    @property
    def kinds(self) -> dict[str, modalities.ModalityKind]:
        return {n: m.kind for n, m in self.modalities.items()}

    @property
    def beta(self) -> float:
        """The objectives' KL weight: config.beta x beta_scale (the warm-up's ramp while training)."""
        return self.config.beta * self.beta_scale

    def _apply(self, fn, *args, **kwargs):
        """.to()/.cuda() also move the attached priors (kept outside the state dict but train_prior)."""
        super()._apply(fn, *args, **kwargs)
        for p in getattr(self, "priors", {}).values():
            if p is not getattr(self, "train_prior", None):
                p._apply(fn, *args, **kwargs)
        return self

    @property
    def device(self) -> torch.device:
        return self.prior.loc.device

    def run_net(self, net: nn.Module, x: torch.Tensor):
        """net(x) under the runtime settings above."""
        n = self.cpu_chunk
        if n and x.device.type == "cpu" and x.shape[0] > n:  # cache-sized calls, then one result
            outs = [self.run_net(net, c) for c in x.split(n)]
            if isinstance(outs[0], tuple):
                return tuple(torch.cat(o) for o in zip(*outs))
            return torch.cat(outs)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is None:
            return net(x)
        with torch.autocast(x.device.type, dtype=self.amp_dtype):
            out = net(x)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()

    def run_grouped(self, fn, device: torch.device):
        """fn() (a grouped.encode/decode call, returning a list) under the runtime settings above."""
        if self.amp_dtype is None:
            return fn()
        with torch.autocast(device.type, dtype=self.amp_dtype):
            out = fn()
        return [tuple(o.float() for o in t) if isinstance(t, tuple) else t.float() for t in out]

    # --- inference -------------------------------------------------------------------------------
    def given_mask(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        unknown = [k for k in x if k not in self.names]
        if unknown:
            raise MMVAEError(f"unknown modality {unknown[0]!r}; this model has {', '.join(self.names)}")
        return torch.tensor([n in x for n in self.names], dtype=torch.bool)

    def observed(self, x: dict[str, torch.Tensor], present: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """x with the rows of absent modalities (present[b, m] false) replaced by zeros, by torch.where:
        whatever they held (NaN included) reaches neither a value nor a gradient. present: (B, M) bool
        in `names` order, None = complete tuples (x returned as is)."""
        if present is None:
            return x
        out = {}
        for n, t in x.items():
            keep = present[:, self.names.index(n)].to(t.device).reshape((-1,) + (1,) * (t.dim() - 1))
            out[n] = torch.where(keep, t, torch.zeros((), dtype=t.dtype, device=t.device))
        return out

    def encode(
        self, x: dict[str, torch.Tensor], present: torch.Tensor | None = None
    ) -> tuple[td.Distribution, dict[str, td.Distribution]]:
        """Unimodal posteriors q(z | x_m) stacked to batch shape (M, B, D) (absent modalities get
        placeholder rows that the fusion's masks never select; with a joint encoder and every modality
        given, q(z | X) as row M: (M + 1, B, D)), and the private posteriors
        q(w_m | x_m) (B, D_w) of the given modalities (empty without private latents). With `present`
        (B, M), absent rows are encoded from zeros (see `observed`) and never selected either."""
        x = self.observed(x, present)
        some = next(iter(x.values()))
        B, Dz, Dw = some.shape[0], self.config.latent_dim, self.config.private_dim
        locs, raws, private = [], [], {}
        heads = {}
        if self.grouped_nets and self.groupable[0] and all(n in x for n in self.names):
            encs = [self.encoders[n] for n in self.names]
            out = self.run_grouped(lambda: grouped.encode(encs, [x[n] for n in self.names]), some.device)
            heads = dict(zip(self.names, out))
        for n in self.names:
            if n in x:
                loc, raw = heads[n] if n in heads else self.run_net(self.encoders[n], x[n])
                if Dw:
                    private[n] = D.expert(self.config.posterior, loc[:, Dz:], raw[:, Dz:])
                    loc, raw = loc[:, :Dz], raw[:, :Dz]
            else:
                loc = raw = some.new_zeros(B, Dz)
            locs.append(loc)
            raws.append(raw)
        if self.joint_encoder is not None and all(n in x for n in self.names):  # row M: q(z | X) (fusion joint)
            je = self.joint_encoder
            e = torch.cat([self.run_net(je.encoders[n], x[n])[0] for n in self.names], dim=-1)
            loc, raw = self.run_net(je.head, e)
            locs.append(loc)
            raws.append(raw)
        return D.expert(self.config.posterior, torch.stack(locs), torch.stack(raws)), private

    def experts(self, x: dict[str, torch.Tensor], present: torch.Tensor | None = None) -> td.Distribution:
        """Unimodal posteriors q(z | x_m) of the shared latent, batch shape (M, B, D)."""
        return self.encode(x, present)[0]

    def fuse(
        self, experts: td.Distribution, x: dict[str, torch.Tensor], present: torch.Tensor | None = None
    ) -> Mixture:
        return self.fusion.combine(experts, self.given_mask(x), self.prior.dist(), present)

    def posterior(self, x: dict[str, torch.Tensor], present: torch.Tensor | None = None) -> Mixture:
        """q(z | X_A) for the modalities in x; with `present` (B, M), each tuple's over what it observes."""
        if not x:
            raise MMVAEError("no input modality given")
        return self.fuse(self.experts(x, present), x, present)

    # --- generation ------------------------------------------------------------------------------
    def block(self, z: torch.Tensor, name: str) -> torch.Tensor:
        """The part of z that modality `name` decodes: all of it, or its own block for fusion none."""
        if self.fusion.spec.shared_latent:
            return z
        i, d = self.names.index(name), self.config.latent_dim
        return z[..., i * d : (i + 1) * d]

    def decode(
        self, z: torch.Tensor, names: list[str] | None = None, w: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Decoder outputs (likelihood parameters) for latents z of shape (..., D).

        Decoder d reads its block of z (all of z unless fusion none). With private latents, it reads
        [z, w_d]: w_d from `w` when given (same leading shape as z), otherwise a reparameterised draw
        w_d ~ p(w_d) = `w_prior(d)` (generation: the fixed prior unless private_prior is "learned").
        The training objective passes every w_d itself (see objectives._stratified_log_weights)."""
        out, inputs = {}, {}
        for n in names or self.names:
            h = self.block(z, n)
            if self.config.private_dim:
                wd = w.get(n) if w else None
                if wd is None:
                    wd = self.w_prior(n).rsample(z.shape[:-1])
                h = torch.cat([h, wd], dim=-1)
            inputs[n] = h
        if self.grouped_nets and self.groupable[1] and set(inputs) == set(self.names):
            return self._decode_grouped(z, inputs)
        for n, h in inputs.items():
            out[n] = nets.apply_flat(lambda t, net=self.decoders[n]: self.run_net(net, t), h, h.shape[-1])
        return out

    def _decode_grouped(self, z: torch.Tensor, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`decode` with the M decoders as one grouped computation (one shared input unless private
        latents or fusion none give each decoder its own)."""
        lead = z.shape[:-1]
        shared = not self.config.private_dim and self.fusion.spec.shared_latent
        flat = (
            z.reshape(-1, z.shape[-1]) if shared else [inputs[n].reshape(-1, inputs[n].shape[-1]) for n in self.names]
        )
        decs = [self.decoders[n] for n in self.names]
        outs = self.run_grouped(lambda: grouped.decode(decs, flat), z.device)
        res = {n: o.reshape(*lead, *o.shape[1:]) for n, o in zip(self.names, outs)}
        return {n: res[n] for n in inputs}

    def w_prior(self, name: str) -> td.Distribution:
        """p(w_name) of the generative model: the density of log p(w_r) in the MMVAE+ bound and the
        distribution generation draws w_name from (batch shape (D_w,)).

            private_prior "reference":  p(w_m) = Laplace(0, I), or N(0, I) for a Gaussian prior: fixed,
                                        as the reference code's `pu` (scale logits frozen at 0, so
                                        softmax(0) * D_w = 1);
            private_prior "learned":    p(w_m) = private_priors[m].dist(), the learned scale.

        Either way the learned private_priors[m] give the objective's cross terms w^(d) ~ p(w_d), d != r."""
        learned = self.private_priors[name]
        if self.config.private_prior == "learned":
            return learned.dist()
        ones = torch.ones_like(learned.loc)
        if learned.kind == "laplace":
            return td.Laplace(learned.loc, ones, validate_args=False)
        return td.Normal(learned.loc, ones, validate_args=False)

    def log_likelihoods(
        self, outs: dict[str, torch.Tensor], x: dict[str, torch.Tensor], present: torch.Tensor | None = None
    ) -> torch.Tensor:
        """sum_m rescale_m * log p(x_m | z) over the modalities in both outs and x: (..., B); with
        `present` (B, M) only over each tuple's observed modalities (x's absent rows must be finite,
        see `observed`)."""
        total = 0.0
        for n, mod in self.modalities.items():
            if n in outs and n in x:
                lp = mod.log_likelihood(outs[n], x[n])
                if present is not None:
                    keep = present[:, self.names.index(n)].to(lp.device)
                    lp = torch.where(keep, lp, torch.zeros((), dtype=lp.dtype, device=lp.device))
                total = total + mod.rescale * lp
        return total

    def means(self, outs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The likelihoods' means E[x_m | out_m] (for people and classifiers)."""
        return {n: self.modalities[n].mean(o) for n, o in outs.items()}

    @torch.no_grad()
    def sample_prior(self, n: int) -> torch.Tensor:
        """n latents from the base prior p(z) (CMVAE: its clustering prior). (n, D)"""
        return self.prior.sample(n)

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p0(z) summed over the latent: (...,) for z (..., D)."""
        return self.prior.log_prob(z)

    # --- priors (priors/: base, ebm, gmm, flow, ...) ---------------------------------------------------
    def attach_prior(self, prior) -> None:
        """Attach a prior (priors.LatentPrior: ebm, gmm, flow, ...) under its kind, replacing one of that kind.
        One trained with the VAE (`trained_with_vae`: a jointly trained energy) is also `train_prior`, a
        submodule: the objectives ask it for its terms, the optimizer and the checkpoints hold it."""
        dim = prior.dim
        if dim is not None and dim != self.z_dim:
            raise MMVAEError(
                f"{prior.name()} over {dim} latent dimensions does not fit a model whose latent has {self.z_dim}"
            )
        self.detach_prior(prior.kind)
        prior.attach(self)
        prior = prior.to(self.device)
        if prior.trained_with_vae:
            self.train_prior = prior
        else:
            prior.eval()
        self.priors[prior.kind] = prior

    def detach_prior(self, kind: str) -> None:
        """Remove the prior of this kind (and train_prior if it is that one)."""
        p = self.priors.pop(kind, None)
        if p is not None and p is self.train_prior:
            self.train_prior = None

    def latent_prior(self, name: str, run: str = "RUN"):
        """The prior `name` of this model: an attached fitted one, or one the model carries (base, ebm).
        One-line errors for an unknown kind or one this bundle does not have (naming the command that
        gives it one)."""
        from . import priors

        cls = priors.get(name)
        p = self.priors.get(name) or cls.from_model(self)
        if p is None:
            raise MMVAEError(f"{run} has no {cls.name()}; fit one with `{cls.how_to_get(run)}`")
        return p

    def available_priors(self) -> list[str]:
        from . import priors

        return [k for k in priors.names() if k in self.priors or priors.get(k).from_model(self) is not None]

    def sample_latents(self, n: int, prior: str = "base", **options) -> torch.Tensor:
        """n latents from the prior named `prior` (a registered kind this model has: base, ebm, gmm, flow;
        keyword options are the prior's sampler options, e.g. Langevin's for ebm). (n, D)"""
        return self.latent_prior(prior, "this bundle").sample(n, **options)

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decoded means of every modality for latents z (B, D) (private latents from their priors)."""
        return self.means(self.decode(z))

    @torch.no_grad()
    def cross_generate(
        self, x: dict[str, torch.Tensor], names: list[str] | None = None, **langevin
    ) -> dict[str, torch.Tensor]:
        """One sample z ~ q(z | X_given), decoded to the means of `names` (default: all).

        With private latents, a given modality reuses w_d ~ q(w_d | x_d) (reconstruction) and a
        missing one draws w_d ~ p(w_d) = `w_prior(d)` (MMVAE+'s cross-generation rule).
        Fusion none with a conditional prior (an energy; EB-MVAE eq. 2-3): z_o ~ prod_{m in o} q(z_m | x_m)
        for the given modalities, then z_u ~ p(z_u | z_o) (`sample_given`: Langevin on the unobserved
        blocks with z_o clamped); `langevin`: its sampler options."""
        experts, private = self.encode(x)
        z = self.fuse(experts, x).sample()
        coupling = next((p for p in self.priors.values() if p.conditional), None)
        if not self.fusion.spec.shared_latent and coupling is not None:
            d = self.config.latent_dim
            free = (~self.given_mask(x)).repeat_interleave(d).to(z.device)  # (M * d,)
            z = coupling.sample_given(z, free, **langevin)
        w = {n: q.sample() for n, q in private.items()}
        return self.means(self.decode(z, names, w))

    def forward(self, x: dict[str, torch.Tensor], present: torch.Tensor | None = None):
        """(loss, stats) of the configured objective on a batch (so DDP can wrap the model); `present`
        (B, M) bool marks each tuple's observed modalities (None = complete tuples)."""
        if present is None:
            return self.objective(self, x)
        return self.objective(self, self.observed(x, present), present)


def _legacy_energy_keys(state: dict, prefix: str, *args) -> None:
    """Training checkpoints before issue 24 held a jointly trained energy under `ebm.`: now `train_prior.`."""
    for k in [k for k in state if k.startswith(prefix + "ebm.")]:
        state[prefix + "train_prior." + k[len(prefix) + 4 :]] = state.pop(k)
