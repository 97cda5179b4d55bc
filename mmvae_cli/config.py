"""The run configuration: every setting's default, valid range and source, in one place.

A run's settings are sections of typed fields (`ModelSettings`, `TrainSettings`, `EnergySettings`,
`JointEnergySettings`, `LangevinSettings`, `FitSettings`, `PriorFitSettings`, `GMMSettings`,
`FlowSettings`, `RuntimeSettings`, `ClassifierSettings`); the evaluation and generation commands'
sample counts are sections too (`EvalSettings`, `GenerateSettings`), and so are the options several
commands share (`CommandSettings`: device, seed, split, prior) and the energy's defaults that depend on
its objective (`EnergyDefaults`: not flags, filled in for settings left unset). Each field is declared with
`setting(default, help, source, ...)`, which records its range and where its default comes from (a
paper, the reference code, or ours with the measurement). Everything else reads these declarations:

  * click options are generated from them (`cli/options.settings_options`), so a new field is a new
    command-line flag with its help and default shown;
  * recipes (TOML, `recipes/`) may set any field of the sections they name and are checked here; they
    state only what differs from these defaults, and shared blocks come from an `include`
    (`recipe.load_recipe`; e.g. recipes/_compare.toml);
  * `check(section)` validates every value, whether it came from a flag, a recipe or a manifest, and
    raises one-line MMVAEErrors naming the flag;
  * manifests record the resolved sections as JSON (`asdict`), and `from_dict` reads them back
    (fields a bundle predates take their defaults).

Resolution of a training run (later wins): field defaults < recipe [model]/[train]/[energy]/... <
the recipe's schedule section ([cpu] is automatic for *-mini datasets) < command-line flags.

Adding a training setting: one field in the right section below (and its test); the flag, the
recipe key, the range check and the manifest entry follow from it.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from . import registry
from .errors import MMVAEError
from .registry import FAMILIES, FUSIONS, OBJECTIVES, declaring

# --- declaring a setting --------------------------------------------------------------------------


def setting(
    default: Any,
    help: str,
    source: str,
    *,
    choices: tuple | None = None,
    min: float | None = None,
    gt: float | None = None,
    max: float | None = None,
    lt: float | None = None,
    optional: bool = False,
    pair: bool = False,
    flag: str | None = None,
    cli: bool = True,
    aliases: dict | None = None,
):
    """A dataclass field with its help text, the source of its default and its valid range.

    choices: allowed values; min/max: inclusive bounds; gt/lt: exclusive bounds; optional: None is
    allowed (meaning "decided elsewhere", said in help); pair: a pair of numbers (Adam betas);
    flag: the command-line flag when it is not --field-name (e.g. "--learn-prior/--fixed-prior");
    cli: False for settings that only recipes and manifests set; aliases: former names of choices
    (old name -> choice), still accepted from flags, recipes and manifests (`canonical`)."""
    meta = dict(
        help=help,
        source=source,
        choices=choices,
        aliases=aliases or {},
        min=min,
        gt=gt,
        max=max,
        lt=lt,
        optional=optional,
        pair=pair,
        flag=flag,
        cli=cli,
    )
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def _number_ok(v: Any, m: dict) -> str | None:
    """Why number v breaks field metadata m (None when it is fine)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        return "must be a finite number"
    if m["min"] is not None and v < m["min"]:
        return f"must be >= {m['min']:g}"
    if m["gt"] is not None and not v > m["gt"]:
        return f"must be > {m['gt']:g}"
    if m["max"] is not None and v > m["max"]:
        return f"must be <= {m['max']:g}"
    if m["lt"] is not None and not v < m["lt"]:
        return f"must be < {m['lt']:g}"
    return None


def canonical(section) -> None:
    """Replace, in place, the values of a frozen section that are a field's `aliases` by their choice
    (called from the section's __post_init__, so flags, recipes, manifests and code all get it)."""
    for f in fields(section):
        v = getattr(section, f.name)
        if isinstance(v, str) and v in f.metadata.get("aliases", {}):
            object.__setattr__(section, f.name, f.metadata["aliases"][v])


def flag_name(f) -> str:
    """The command-line flag of field f, as users type it."""
    flag = f.metadata.get("flag")
    return flag.split("/")[0] if flag else "--" + f.name.replace("_", "-")


def check(section) -> None:
    """Validate every field of a settings section; raise one MMVAEError line naming the flag."""
    for f in fields(section):
        v, m = getattr(section, f.name), f.metadata
        if not m:
            continue
        why = None
        if v is None:
            why = None if m["optional"] else "must be given"
        elif m["choices"] is not None:
            why = None if v in m["choices"] else f"must be one of {', '.join(map(str, m['choices']))}"
        elif m["pair"]:
            if not isinstance(v, (list, tuple)) or len(v) != 2:
                why = "must be a pair of numbers"
            else:
                why = next((w for w in (_number_ok(x, m) for x in v) if w), None)
        elif isinstance(f.default, bool):
            why = None if isinstance(v, bool) else "must be true or false"
        elif isinstance(f.default, int) and not isinstance(f.default, bool):
            why = "must be an integer" if isinstance(v, bool) or not isinstance(v, int) else _number_ok(v, m)
        elif isinstance(f.default, float) or (f.default is None and (m["gt"] is not None or m["min"] is not None)):
            why = _number_ok(v, m)
        elif isinstance(f.default, str):
            why = None if isinstance(v, str) else "must be a string"
        if why:
            raise MMVAEError(f"{flag_name(f)} {why}, got {v!r}")


def from_dict(cls, d: dict | None, where: str = "settings"):
    """A section from a JSON/TOML dict: unknown keys refused, missing ones take their defaults."""
    d = dict(d or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise MMVAEError(f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
    for f in fields(cls):
        if f.metadata.get("pair") and isinstance(d.get(f.name), list):
            d[f.name] = tuple(d[f.name])
    return cls(**d)


def overridden(section, overrides: dict):
    """A copy of `section` with the non-None values of `overrides` whose keys are its fields."""
    names = {f.name for f in fields(section)}
    return replace(section, **{k: v for k, v in overrides.items() if k in names and v is not None})


def to_dict(section) -> dict:
    """JSON-ready: tuples become lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(section).items()}


def default_of(cls, name: str):
    f = next(f for f in fields(cls) if f.name == name)
    return f.default_factory() if f.default is MISSING else f.default


# --- the sections ---------------------------------------------------------------------------------

# (the fusions, objectives and latent families the fields below name, and what each declares: registry.py)
PRIVATE_PRIORS = ("reference", "learned")  # MMVAE+'s p(w_m) (ModelSettings.private_prior; model.py reads it)


@dataclass(frozen=True)
class ModelSettings:
    """What is trained: modalities' experts x fusion x objective x prior (model.ModelConfig is built
    from these and the data's modalities)."""

    fusion: str = setting(
        "mopoe",
        "poe = MVAE (product of experts with the prior expert), moe = MMVAE (mixture of "
        "experts), mopoe = MoPoE (mixture over all subsets' products), none = EB-MVAE's "
        "independent unimodal VAEs (couple them with `mmvae fit-ebm`), joint = JMVAE (a joint "
        "encoder q(z | X); a subset: the product of its unimodal experts)",
        "ours: MoPoE, the model of the quick start",
        choices=tuple(FUSIONS),
    )
    objective: str | None = setting(
        None,
        "elbo: generalised multimodal ELBO; iwae/dreg: stratified IWAE of MMVAE "
        "(dreg: doubly-reparameterised gradients); mvae: MVAE's sub-sampled sum of "
        "ELBOs (not a bound); the peer models, each with its fusion (filled in when none is named): "
        "jmvae (JMVAE-KL, fusion joint), mmjsd (mmJSD, moe), mvtcae (MVTCAE, poe), dmvae (DMVAE, poe), "
        "cmvae (CMVAE: MMVAE+ with a clustering prior, moe). "
        "Default: each fusion's paper (mvae for poe, iwae for moe, jmvae for joint, elbo otherwise)",
        "the papers",
        choices=(*OBJECTIVES, None),
        optional=True,
    )
    k: int = setting(1, "importance samples for iwae/dreg", "MMVAE/MMVAE+ recipes set their papers' K", min=1)
    mvae_subsets: int = setting(
        0,
        "MVAE: also add the ELBOs of this many random subsets of 2..M-1 modalities "
        "per step (Wu & Goodman's sub-sampling)",
        "Wu & Goodman 2018 (0 = joint + unimodal)",
        min=0,
    )
    mvtcae_alpha: float = setting(
        5 / 6,
        "MVTCAE (--objective mvtcae): alpha, the weight of the conditional VIB terms against the joint VIB term",
        "MultiVae's PolyMNIST case study (alpha 5/6, beta 2.5), following the MVTCAE reference code",
        min=0.0,
        max=1.0,
    )
    jmvae_alpha: float = setting(
        0.1,
        "JMVAE (--objective jmvae): alpha, the weight of sum_m KL(q(z | X) || q(z | x_m))",
        "JMVAE-KL (Suzuki et al. 2016); MultiVae's default and PolyMNIST case study",
        min=0.0,
    )
    joint_hidden: int = setting(
        512,
        "JMVAE (--fusion joint): hidden units of the two layers joining the M embeddings in q(z | X)",
        "MultiVae's default joint encoder",
        min=1,
    )
    clusters: int = setting(
        10,
        "CMVAE (--objective cmvae): K, the components of the clustering prior p(z) = sum_k pi_k p(z | c = k), "
        "an over-estimate that `mmvae eval clusters` prunes after training",
        "MultiVae 1.0.3's default (its PolyMNIST reproduction of Palumbo et al. 2024 starts from 40: the recipe)",
        min=2,
        max=1024,
    )
    private_dim: int = setting(
        0,
        "size of each modality's private latent w_m: MMVAE+ (--fusion moe, --objective iwae|dreg), "
        "DMVAE (--objective dmvae) or CMVAE (--objective cmvae)",
        "Palumbo et al. 2023 (0 = no private latents)",
        min=0,
    )
    private_prior: str = setting(
        "reference",
        "MMVAE+: p(w_m) in log p(w_r) and at generation. reference: a fixed "
        "Laplace(0, 1) (N(0, 1) for a Gaussian prior), the learned p(w_m) only in the "
        "training cross terms, as the reference code; learned: the learned p(w_m) everywhere",
        "MMVAE+ reference code (epalu/mmvaeplus)",
        choices=PRIVATE_PRIORS,
    )
    subsets: str = setting(
        "all", 'MoPoE mixture subsets: "all", "unimodal+full", or "m0,m1;m2;..."', "MoPoE paper: all 2^M - 1 subsets"
    )
    latent_dim: int = setting(
        512, "size of the shared latent (per modality for fusion none)", "MoPoE PolyMNIST reference run", min=1
    )
    beta: float = setting(
        2.5, "weight of the KL (or log prior - log posterior) terms", "MoPoE PolyMNIST reference run", min=0.0
    )
    posterior: str = setting(
        "gaussian", "family of the unimodal posteriors q(z | x_m)", "MoPoE reference", choices=FAMILIES
    )
    prior: str = setting(
        "gaussian",
        "family of the base prior p0(z) (--prior ebm tilts it by an energy)",
        "MoPoE reference",
        choices=FAMILIES,
        cli=False,
    )
    learn_prior: bool = setting(
        False,
        "learn the base prior's scale (CMVAE: its clusters' scales; their means and weights are always learned)",
        "MMVAE MNIST-SVHN reference learns it; CMVAE's reference code fixes the clusters' scales at 1",
        flag="--learn-prior/--fixed-prior",
    )
    likelihood: str = setting(
        "laplace",
        "laplace, gaussian, bernoulli or categorical: one for every modality, or "
        "NAME=KIND,... (unnamed modalities: laplace)",
        "MoPoE PolyMNIST reference run",
    )
    likelihood_scale: float = setting(
        0.75, "scale of Laplace/Gaussian likelihoods", "MoPoE PolyMNIST reference run", gt=0.0
    )
    rescale: bool = setting(
        False,
        "weight log p(x_m | z) by (largest modality size) / (size of m)",
        "MMVAE MNIST-SVHN reference",
        flag="--rescale/--no-rescale",
    )
    rec_weight: str = setting(
        "",
        "weight of log p(x_m | z) per modality: NAME=WEIGHT,... (others: 1, or --rescale's weight)",
        "ours: a short string's few nats need more weight next to an image's thousands (docs/results/text.md)",
    )
    hidden: int = setting(
        400,
        "hidden units of the mlp encoders and decoders (vectors, 1x28x28 images)",
        "MMVAE MNIST reference: 400",
        min=1,
    )
    arch: str = setting(
        "",
        "networks: conv28, conv32, conv (any C,H,W), mlp; one for all or NAME=ARCH,... (default by shape)",
        "ours: by shape",
    )


@dataclass(frozen=True)
class TrainSettings:
    """How the VAE is optimised."""

    epochs: int = setting(30, "passes over the training set", "ours (recipes set each paper's)", min=1)
    batch_size: int = setting(64, "global batch size", "ours (recipes set each paper's)", min=1)
    lr: float = setting(5e-4, "Adam learning rate", "MoPoE reference", gt=0.0)
    adam_betas: tuple = setting(
        (0.9, 0.999), "Adam betas", "torch default; MoPoE reference", pair=True, min=0.0, lt=1.0, cli=False
    )
    amsgrad: bool = setting(False, "AMSGrad variant of Adam", "MMVAE reference uses it", cli=False)
    beta_warmup_epochs: float = setting(
        0.0,
        "KL annealing: beta rises linearly from 0 to --beta over this many epochs' steps (0: no warm-up)",
        "ours (the papers train at a constant beta); KL annealing as Bowman et al. 2016",
        min=0.0,
    )
    lr_decay: str = setting(
        "none",
        "learning-rate decay at the end of the run's --epochs (train.lr_factor): none, linear or cosine "
        "to 0 over the last --lr-decay-fraction of the steps; every optimizer group is scaled alike",
        "ours (the papers train at a constant rate)",
        choices=("none", "linear", "cosine"),
    )
    lr_decay_fraction: float = setting(
        1.0,
        "fraction of the run's steps, at its end, over which --lr-decay falls to 0 (1: the whole run)",
        "ours",
        gt=0.0,
        max=1.0,
    )
    seed: int = setting(0, "random seed (initial weights, batches, noise)", "ours", min=0)
    missing_ratio: float = setting(
        0.0,
        "drop each modality of each training tuple independently with this probability (a tuple left "
        "with none keeps one at random), seeded by --seed; the model trains on what each tuple has",
        "ours (0 = the data as it is); the peers' robustness studies on PolyMNIST",
        min=0.0,
        lt=1.0,
    )


ENERGY_ACTIVATIONS = ("gelu", "silu", "softplus", "leaky_relu", "elu")  # priors/ebm/net.py's ACTIVATIONS


@dataclass(frozen=True)
class EnergyDefaults:
    """What an energy's setting left unset becomes, by how the energy learns: ml (maximum likelihood:
    `fit-ebm --objective ml`, `train --prior ebm`) or sm (score matching: exact, sliced, denoising, ncsn).
    Not flags: `FitSettings.resolved` and `EnergySettings.activation` fill them in (ENERGY_DEFAULTS), and
    the flags' help texts name them."""

    objective: str = setting(
        "nce",
        "fit-ebm's objective for a shared latent",
        "ours, measured (docs/results/priors.md): nce over the bundle's gmm, sampled by importance resampling, "
        "beat ml over p0 (0.3's default) and ml over the gmm",
        choices=("ml", "nce"),
    )
    ml_activation: str = setting(
        "gelu", "energy MLP activation for maximum likelihood", "LEBM uses GELU", choices=ENERGY_ACTIVATIONS
    )
    sm_activation: str = setting(
        "softplus",
        "energy MLP activation for score matching (which needs a twice-differentiable energy)",
        "ours",
        choices=ENERGY_ACTIVATIONS,
    )
    epochs: int = setting(
        20,
        "fit-ebm: passes over the training set",
        "ours, measured (docs/results/priors.md: the nce budget curve; docs/results/ebm-post-hoc.md)",
        min=1,
    )
    ensemble: int = setting(
        5,
        "fit-ebm --objective nce: energies fitted side by side, the tilt by their mean",
        "ours, measured (docs/results/priors.md, 0.4.3): over five fit seeds per family the same mean "
        "gain over the mixture as one energy, with half its spread and less class entropy lost",
        min=1,
    )
    ml_lr: float = setting(1e-4, "fit-ebm: Adam learning rate of the energy for ml", "ours", gt=0.0)
    sm_lr: float = setting(1e-3, "fit-ebm: Adam learning rate of the energy for score matching", "ours", gt=0.0)
    ml_betas: tuple = setting((0.5, 0.999), "fit-ebm: Adam betas for ml", "LEBM", pair=True, min=0.0, lt=1.0)
    sm_betas: tuple = setting(
        (0.9, 0.999), "fit-ebm: Adam betas for score matching", "torch's default", pair=True, min=0.0, lt=1.0
    )


ENERGY_DEFAULTS = EnergyDefaults()
TILTED_OBJECTIVES = ("ml", "nce")  # fit a tilt exp(-E) of a base prior (the others: a Gibbs energy)


@dataclass(frozen=True)
class EnergySettings:
    """The energy MLP E(z) (priors/ebm/net.EnergyNet): dim -> hidden x (layers - 1) -> 1."""

    energy_hidden: int = setting(
        400, "hidden units per layer of the energy MLP", "Yuan et al. Table 3 (best: 400)", min=1
    )
    energy_layers: int = setting(4, "Linear layers of the energy MLP", "Yuan et al. Table 3 (best: 4)", min=1)
    energy_activation: str | None = setting(
        None,
        f"energy MLP activation (default: {ENERGY_DEFAULTS.ml_activation} for maximum likelihood, "
        f"{ENERGY_DEFAULTS.sm_activation} for score matching)",
        "LEBM uses GELU; softplus is ours",
        choices=(*ENERGY_ACTIVATIONS, None),
        optional=True,
    )

    def activation(self, objective: str) -> str:
        """The activation given, else the default of the objective's kind (ENERGY_DEFAULTS)."""
        d = ENERGY_DEFAULTS
        return self.energy_activation or (d.ml_activation if objective in TILTED_OBJECTIVES else d.sm_activation)


@dataclass(frozen=True)
class JointEnergySettings:
    """--prior ebm: how the energy trained jointly with the VAE (Yuan et al. Algorithm 1) learns.

    Two measured problems of Algorithm 1 as written, and the defaults that answer them
    (docs/results/ebm-joint.md; benchmarks/joint_ebm_toy.py):
    - eq. 10's loss, mean E(z_pos) - mean E(z_neg), is blind to an additive constant of E, and the
      energies' level sinks step after step (PolyMNIST, epoch 6: E = -151 at posterior samples, -149 at the
      negatives, -0.4 at p0 samples). p_alpha (normalised), the Langevin chains (gradients) and the VAE's
      gradients never see that constant: fixing it is a gauge, not a stabiliser. `reg_on` "gauge" (formerly
      "level"; reg ((mean E_pos + mean E_neg) / 2)^2, the default) fixes it near 0, which keeps the reported
      energies readable and leaves the gap and so the tilt free; "energies" (reg (mean E_pos^2 + mean
      E_neg^2)) also bounds the gap at 1/reg and with it the tilt (joint coherence 0.052 on MoPoE, 0.067 on
      MMVAE+). `ebm.DivergenceTest` reads only what the constant leaves unchanged (gaps, KL, the tilt).
    - a well-fitted energy cancels p0's pull on the encoders exactly (E ≈ -log(q_agg / p0) + c makes
      E_q[-log p0 + E] ≈ E_q[-log q_agg]): nothing anchors where the aggregate posterior sits, and the
      encoders follow the energy away from p0 (the drift: KL(q || p0) 54 -> 123 in 6 epochs). The stabiliser
      is `feedback` f < 1, which keeps part of the anchor: the VAE's prior is p_f ∝ p0 exp(-f E). f = 0.5
      with the gauge fixed: MoPoE 0.104, MMVAE+ 0.218 joint coherence, conditional coherence as the base
      prior's. A learnable p0 needs f = 1 (log Z's gradient for it comes from samples of p_alpha = p_1)."""

    ebm_lr: float = setting(
        2e-5, "Adam learning rate of the jointly trained energy", "LEBM (Yuan et al. give none)", gt=0.0
    )
    ebm_betas: tuple = setting(
        (0.5, 0.999), "Adam betas of the jointly trained energy", "LEBM", pair=True, min=0.0, lt=1.0, flag="--ebm-betas"
    )
    reg: float = setting(
        1.0,
        "weight of the L2 term added to eq. 10 (0 = off; what it penalises: --ebm-reg-on)",
        "ours, measured: without it the energies' level sinks (docs/results/ebm-joint.md); IGEBM "
        "(Du & Mordatch 2019) uses an L2 term on the energies, LEBM none",
        min=0.0,
        flag="--ebm-reg",
    )
    reg_on: str = setting(
        "gauge",
        "what the L2 term penalises: gauge, reg ((mean E_pos + mean E_neg) / 2)^2, fixes the additive constant "
        "of E, which p_alpha, the Langevin chains and the VAE's gradients never see: a gauge that keeps the "
        "energies near 0, not a stabiliser (--ebm-feedback below 1 is; `level` is its former name); "
        "energies, reg (mean E_pos^2 + mean E_neg^2), also bounds the gap E_neg - E_q and with it the tilt",
        "ours, measured: the energies bound the tilt, the gauge does not (docs/results/ebm-joint.md)",
        choices=("energies", "gauge"),
        aliases={"level": "gauge"},
        flag="--ebm-reg-on",
    )
    neg_start: str = setting(
        "prior",
        "where the negatives' Langevin chains start: prior (z0 ~ p0), posterior (the "
        "batch's posterior samples), persistent (last step's chains, a fraction "
        "--ebm-persistent-reset restarted from p0)",
        "Yuan et al. Algorithm 1 and LEBM: prior (the others: docs/results/ebm-joint.md)",
        choices=("prior", "posterior", "persistent"),
        flag="--ebm-neg-start",
    )
    persistent_reset: float = setting(
        0.05,
        "persistent chains: fraction restarted from p0 each step",
        "ours (replay-buffer convention of Du & Mordatch 2019), not measured",
        min=0.0,
        max=1.0,
        flag="--ebm-persistent-reset",
    )
    feedback: float = setting(
        0.5,
        "weight f of the energy in the VAE's prior term: the encoders and decoders see KL(q || p_f), "
        "p_f(z) ∝ p0(z) exp(-f E(z)) (1 = Algorithm 1; 0 = the energy learns beside a VAE that "
        "ignores it); samples always come from p_alpha = p_1",
        "Algorithm 1: 1; ours, measured with the gauge fixed (docs/results/ebm-joint.md)",
        min=0.0,
        max=1.0,
        flag="--ebm-feedback",
    )
    warmup_steps: int = setting(
        0,
        "training steps during which the VAE's prior term ignores the energy (plain p0; "
        "the energy learns from the start)",
        "Algorithm 1 has none (a warm-up measured: docs/results/ebm-joint.md)",
        min=0,
        flag="--ebm-warmup-steps",
    )

    def __post_init__(self):
        canonical(self)  # reg_on "level" (bundles and recipes before issue 25) is "gauge"


@dataclass(frozen=True)
class LangevinSettings:
    """Short-run Langevin z <- z + s^2/2 grad log p(z) + noise_scale * s * eps (Yuan et al. eq. 11)."""

    steps: int = setting(50, "Langevin steps per chain", "Yuan et al. Table 3 (best: 50)", min=0)
    step_size: float = setting(0.4, "Langevin step size s", "LEBM's 0.4 (the paper gives none)", gt=0.0)
    noise_scale: float = setting(
        1.0, "Langevin noise multiplier (1 = proper Langevin, 0 = gradient ascent)", "ours", min=0.0
    )
    clip_grad: float | None = setting(
        None, "clip each chain's gradient norm to this value (default: no clipping)", "ours", gt=0.0, optional=True
    )
    sampler: str = setting(
        "langevin",
        "langevin: chains start at the base prior's samples (or a Gibbs energy's stored Gaussian); sir: they "
        "start at importance-resampled ones, --proposals draws per sample weighted by exp(-E) (NCP-VAE); "
        "then --steps Langevin steps either way (0 with sir: importance resampling alone)",
        "Yuan et al. eq. 11; Aneja et al. 2021 (NCP-VAE) for sir",
        choices=("langevin", "sir"),
    )
    proposals: int = setting(
        100, "sir: proposals drawn per sample", "ours (NCP-VAE resamples from a few thousand)", min=1
    )
    denoise: float = setting(
        0.0,
        "noise level sigma of a last, noise-free Tweedie step z <- z + sigma^2 grad log p(z) on the chains' "
        "free coordinates (E[z | z + N(0, sigma^2)] for an energy fitted to data smoothed by that noise; "
        "0 = off; noise-conditional energies: 0 or their smallest noise level, in their standardised coordinates)",
        "Tweedie's formula; the denoising last step of Jolicoeur-Martineau et al. 2021 and Song & Ermon 2020",
        min=0.0,
    )


# fit-ebm --objective ncsn: the Langevin settings stored with the energy when none are given (annealed
# Langevin: steps in all over the levels, step size as the ratio s_i / sigma_i). Ours, measured on
# polymnist-mini (docs/results/ebmvae.md: benchmarks/ebmvae_diagnosis.py): 300 steps of ratio 0.8 beat
# 50/100 steps and ratios 0.2/0.4; plain Langevin's 50 x 0.4 barely moves the chains.
NCSN_LANGEVIN = {"steps": 300, "step_size": 0.8}
# fit-ebm --objective nce (the default for a shared latent): the sampler stored when none is given. Ours,
# measured on polymnist-mini's MoPoE and polymnist-text-mini's MMVAE+ (docs/results/priors.md): importance
# resampling of 100 base draws beat Langevin from the base (MMVAE+ over its 50-component mixture: 0.633 against
# 0.604 joint coherence) and more proposals or Langevin steps after it did not pay.
NCE_SAMPLER = {"sampler": "sir", "proposals": 100, "steps": 0}
# fit-ebm on EB-MVAE bundles (--fusion none) by exact/sliced/denoising score matching: plain Langevin
# settings stored when none are given. Ours, measured there: 300 steps of 0.3 beat 100 steps and 0.03/0.1
# (0.205 -> 0.347 conditional coherence with 1 -> 4 observed; 50 x 0.4, the shared latents', was not run).
EBMVAE_LANGEVIN = {"steps": 300, "step_size": 0.3}
# ... and for EB-MVAE's default denoising energy (EBMVAE_FIT), with a last Tweedie step at its sigma:
# 100 steps of 0.3 measured best there (0.396 -> 0.683 with 1 -> 4 observed, joint 0.143; 300 steps:
# 0.368 -> 0.699, joint 0.067; without the Tweedie step 0.357 -> 0.603).
EBMVAE_DENOISING_LANGEVIN = {"steps": 100, "step_size": 0.3}


# fit-ebm on EB-MVAE bundles (--fusion none) when no objective, epochs or energy width is given. Ours,
# measured on polymnist-mini's 80 latents (docs/results/ebmvae.md): denoising score matching at
# sigma 0.25 with 4 x 1024 units, 1,000 epochs (0.396 -> 0.683 conditional coherence with 1 -> 4 observed,
# joint 0.143) beat 300 epochs (0.351 -> 0.621) and the paper's exact score matching (20 epochs, 4 x 400:
# 0.205 -> 0.347; exact costs one backward pass per latent dimension, 10 s an epoch there against 1.6 s).
EBMVAE_FIT = {"objective": "denoising", "epochs": 1000, "energy_hidden": 1024}


def unimodal_latents(fusion: str) -> bool:
    """Whether fusion `fusion` has no shared latent (registry.FUSIONS): z is the M unimodal latents, as
    EB-MVAE's (--fusion none), and the EBMVAE_* defaults above and below apply to its energy."""
    return fusion in FUSIONS and not FUSIONS[fusion].shared_latent


def fit_energy_defaults(objective: str, fusion: str) -> dict:
    """EnergySettings fit-ebm uses when none are given: EBMVAE_FIT's width for EB-MVAE's denoising
    energy, otherwise EnergySettings' own defaults ({})."""
    if unimodal_latents(fusion) and objective == EBMVAE_FIT["objective"]:
        return {"energy_hidden": EBMVAE_FIT["energy_hidden"]}
    return {}


def fit_langevin_defaults(objective: str, fusion: str, sigma: float = 0.0) -> dict:
    """The Langevin settings fit-ebm stores when none are given: NCSN_LANGEVIN for ncsn, EBMVAE_LANGEVIN
    for score matching on EB-MVAE bundles (denoising: EBMVAE_DENOISING_LANGEVIN with a last Tweedie step at
    its noise level `sigma`; measured on polymnist-mini, docs/results/ebmvae.md: +0.02 to +0.07
    conditional coherence at every number observed, both energy widths and both step sizes tried),
    NCE_SAMPLER for nce, otherwise LangevinSettings' own defaults ({})."""
    if objective == "ncsn":
        return dict(NCSN_LANGEVIN)
    if unimodal_latents(fusion) and objective == "denoising":
        return {**EBMVAE_DENOISING_LANGEVIN, "denoise": sigma}
    if unimodal_latents(fusion) and objective not in TILTED_OBJECTIVES:
        return dict(EBMVAE_LANGEVIN)
    if objective == "nce":
        return dict(NCE_SAMPLER)
    return {}


@dataclass(frozen=True)
class FitSettings:
    """`mmvae fit-ebm` (`fit-prior --kind ebm`): an energy fitted post hoc to a frozen VAE's aggregate posterior
    (its seed: PriorFitSettings')."""

    objective: str | None = setting(
        None,
        "ml: maximum likelihood with Langevin negatives (Yuan et al. eq. 10); nce: noise-contrastive estimation, "
        "aggregate-posterior samples against the base prior's, optimum E = -log(q / p_b) (Gutmann & Hyvarinen "
        "2010, NCP-VAE); exact|sliced|denoising: score matching (EB-MVAE eq. 1); ncsn: a noise-conditional energy "
        "by multi-scale denoising score matching, sampled by annealed Langevin (Song & Ermon 2019). "
        f"Default: {ENERGY_DEFAULTS.objective} for a shared latent; denoising for --fusion none (EB-MVAE)",
        "the papers; ours for EB-MVAE, measured (docs/results/ebmvae.md)",
        choices=("ml", "nce", "exact", "sliced", "denoising", "ncsn", None),
        optional=True,
    )
    base: str | None = setting(
        None,
        "the prior the energy tilts, p(z) ∝ exp(-E(z)) p_b(z) (ml, nce): base (the VAE's p0), gmm or flow (the "
        "bundle's, from fit-prior); default: the bundle's gmm, fitted here with fit-prior's defaults when it has "
        "none, for a shared latent; base for --fusion none",
        "ours, measured (docs/results/priors.md); NCP-VAE (Aneja et al. 2021) tilts its VAE's prior",
        choices=("base", "gmm", "flow", None),
        optional=True,
    )
    epochs: int | None = setting(
        None,
        f"passes over the training set (default: {ENERGY_DEFAULTS.epochs}; {EBMVAE_FIT['epochs']} for denoising "
        "score matching on EB-MVAE bundles)",
        "ours, measured (docs/results/priors.md, docs/results/ebm-post-hoc.md, docs/results/ebmvae.md)",
        min=1,
        optional=True,
    )
    batch_size: int = setting(256, "batch size", "ours", min=1)
    lr: float | None = setting(
        None,
        f"Adam learning rate of the energy (default: {ENERGY_DEFAULTS.ml_lr:g} for ml, "
        f"{ENERGY_DEFAULTS.sm_lr:g} for nce and score matching)",
        "ours",
        gt=0.0,
        optional=True,
    )
    betas: tuple | None = setting(
        None,
        "Adam betas (default: {} for ml as LEBM, {} for nce and score matching)".format(
            *(" ".join(f"{b:g}" for b in betas) for betas in (ENERGY_DEFAULTS.ml_betas, ENERGY_DEFAULTS.sm_betas))
        ),
        "LEBM / torch",
        pair=True,
        min=0.0,
        lt=1.0,
        optional=True,
    )
    reg: float = setting(0.0, "ml: weight of an L2 penalty on the energies", "ours (0 = off)", min=0.0)
    ensemble: int | None = setting(
        None,
        "nce: fit K energies side by side (each its own initialisation, posterior and noise draws; the same "
        "batches) and tilt by their mean, E = (1/K) sum_k E_k: a lower-variance estimate of -log(q / p_b) "
        f"(default: {ENERGY_DEFAULTS.ensemble} for nce, 1 otherwise)",
        "ours, measured (docs/results/priors.md); deep ensembles (Lakshminarayanan et al. 2017)",
        min=1,
        optional=True,
    )
    noise_ratio: int = setting(
        1,
        "nce: base samples per aggregate-posterior sample (nu); the logit is -E(z) - log nu, whose optimum "
        "E = -log(q / p_b) is the same for every nu",
        "Gutmann & Hyvarinen 2010 (NCP-VAE uses 1)",
        min=1,
    )
    persistent: bool = setting(
        False,
        "ml over --base base: continue each batch's negative chains from the previous batch's",
        "ours",
        flag="--persistent",
    )
    sigma: float = setting(
        0.25, "denoising: noise level", "ours, measured on EB-MVAE latents (docs/results/ebmvae.md)", gt=0.0
    )
    projections: int = setting(1, "sliced/denoising: draws per sample", "Song et al. 2019", min=1)
    noise_levels: int = setting(
        10,
        "ncsn: number of noise levels (geometric from --sigma-max down to --sigma-min)",
        "Song & Ermon 2019 use 10 (CIFAR-10)",
        min=1,
    )
    sigma_max: float | None = setting(
        None,
        "ncsn: largest noise level, in the energy's coordinates (default: the largest per-dimension "
        "standard deviation of the aggregate posterior, 1 when standardised)",
        "Song & Ermon 2019 (about the data's spread)",
        gt=0.0,
        optional=True,
    )
    sigma_min: float | None = setting(
        None,
        "ncsn: smallest noise level, in the energy's coordinates (default: the median posterior standard deviation)",
        "Song & Ermon 2019 (about the data's own resolution)",
        gt=0.0,
        optional=True,
    )
    standardise: bool | None = setting(
        None,
        "let the energy see the latents standardised by the aggregate posterior's per-dimension mean and "
        "std (default: on for ncsn, off otherwise)",
        "ours",
        optional=True,
        flag="--standardise/--no-standardise",
    )

    def resolved(self, fusion: str) -> FitSettings:
        """The objective-dependent defaults filled in (ENERGY_DEFAULTS; fusion none: EBMVAE_FIT's objective
        and epochs)."""
        obj = self.objective or (EBMVAE_FIT["objective"] if unimodal_latents(fusion) else ENERGY_DEFAULTS.objective)
        d, ml = ENERGY_DEFAULTS, obj == "ml"
        if obj not in TILTED_OBJECTIVES and self.base not in (None, "base"):
            raise MMVAEError(
                f"--base {self.base}: score matching fits a Gibbs energy, which tilts no prior; "
                f"use --objective {' or '.join(TILTED_OBJECTIVES)}"
            )
        base = self.base or ("gmm" if obj in TILTED_OBJECTIVES and not unimodal_latents(fusion) else "base")
        if self.ensemble not in (None, 1) and obj != "nce":
            raise MMVAEError(f"--ensemble is nce's; --objective {obj} fits one energy")
        if self.noise_ratio != 1 and obj != "nce":
            raise MMVAEError(f"--noise-ratio is nce's; --objective {obj} draws no noise samples")
        if self.persistent and obj != "ml":
            raise MMVAEError(f"--persistent keeps ml's negative chains; --objective {obj} has none")
        if self.persistent and base != "base":
            raise MMVAEError(
                f"--persistent chains need --base base (over the {base} prior they run in its noise coordinates)"
            )
        ebmvae = unimodal_latents(fusion) and obj == EBMVAE_FIT["objective"]
        if self.sigma_max is not None and self.sigma_min is not None and self.sigma_min > self.sigma_max:
            raise MMVAEError(f"--sigma-min {self.sigma_min:g} must not exceed --sigma-max {self.sigma_max:g}")
        return replace(
            self,
            objective=obj,
            base=base,
            epochs=self.epochs if self.epochs is not None else (EBMVAE_FIT["epochs"] if ebmvae else d.epochs),
            standardise=self.standardise if self.standardise is not None else obj == "ncsn",
            ensemble=self.ensemble if self.ensemble is not None else (d.ensemble if obj == "nce" else 1),
            lr=self.lr if self.lr is not None else (d.ml_lr if ml else d.sm_lr),
            betas=tuple(self.betas if self.betas is not None else (d.ml_betas if ml else d.sm_betas)),
        )


@dataclass(frozen=True)
class PriorFitSettings:
    """`mmvae fit-prior`: what every fitted prior (priors/) learns from: samples of the frozen VAE's
    aggregate posterior q(z) = 1/N sum_i q(z | X_i) over the training set."""

    draws: int = setting(
        1,
        "gmm: posterior samples z ~ q(z | X_i) per training tuple (the mixture is fitted to "
        "N x draws points); flow, ebm: fresh draws every batch regardless",
        "ours",
        min=1,
    )
    seed: int = setting(0, "random seed (posterior draws, initialisation, batches, Langevin noise)", "ours", min=0)


@dataclass(frozen=True)
class GMMSettings:
    """`mmvae fit-prior --kind gmm`: scikit-learn's GaussianMixture (EM) on aggregate-posterior samples
    (pythae's GaussianMixtureSampler; the ex-post density estimation of Ghosh et al. 2020)."""

    components: int = setting(10, "mixture components", "pythae's GaussianMixtureSamplerConfig default (10)", min=1)
    covariance: str = setting(
        "full",
        "covariance of each component (full, diag, tied, spherical)",
        "scikit-learn's default",
        choices=("full", "diag", "tied", "spherical"),
    )
    max_iter: int = setting(100, "EM iterations at most", "scikit-learn's default", min=1)
    reg_covar: float = setting(1e-6, "added to the covariances' diagonal", "scikit-learn's default", gt=0.0)
    n_init: int = setting(
        5,
        "EM runs from as many k-means initialisations; the one with the highest lower bound on the "
        "training log-likelihood is kept",
        "ours, measured (docs/results/priors.md): on MoPoE's 512-d latent the 10-component mixture's joint "
        "coherence ranks with that bound over seeds, and the best of 5 gained 0.03-0.15 over one run, "
        "level or better on MMVAE and MMVAE+ (scikit-learn's default: 1)",
        min=1,
    )


@dataclass(frozen=True)
class FlowSettings:
    """`mmvae fit-prior --kind flow`: a normalising flow (zuko) trained by maximum likelihood on fresh
    aggregate-posterior samples every batch, with Adam."""

    flow: str = setting(
        "maf",
        "maf: masked autoregressive flow (affine); nsf: neural spline flow",
        "zuko; the peer library's MAF sampler",
        choices=("maf", "nsf"),
    )
    transforms: int = setting(3, "autoregressive transforms", "zuko's default", min=1)
    flow_hidden: int = setting(
        128, "hidden units per layer of each transform's MADE", "ours (a 512-d latent fits in memory on a CPU)", min=1
    )
    flow_layers: int = setting(2, "hidden layers of each transform's MADE", "zuko's default (64, 64): 2", min=1)
    epochs: int = setting(20, "passes over the training set", "ours", min=1)
    batch_size: int = setting(256, "batch size", "ours (as fit-ebm)", min=1)
    lr: float = setting(
        1e-3, "Adam learning rate", "ours (not tuned; the tests' 2-d toy and polymnist-mini fit with it)", gt=0.0
    )


@dataclass(frozen=True)
class RuntimeSettings:
    """How a run executes (not what it computes): recorded in the manifest, reused by --resume."""

    precision: str = setting(
        "fp32",
        "fp32, bf16 (autocast; CPU or recent GPUs) or fp16 (autocast + gradient "
        "scaler; CUDA only); the probabilistic math stays fp32",
        "ours, measured (docs/results/speed.md)",
        choices=("fp32", "bf16", "fp16"),
    )
    compile: bool = setting(False, "torch.compile the encoders and decoders", "ours", flag="--compile/--no-compile")
    channels_last: bool = setting(
        False, "channels-last convolutions", "ours", flag="--channels-last/--no-channels-last"
    )
    grouped_nets: bool = setting(
        False,
        "run identical image encoders (decoders) as one grouped convolution net: same parameters and "
        "bundles, equal up to float rounding",
        "ours: off, measured slower on a CPU (docs/results/speed.md); meant for launch-bound GPUs",
        flag="--grouped-nets/--no-grouped-nets",
    )
    cpu_chunk: int = setting(
        320,
        "on the CPU, every encoder and decoder call runs on at most this many items at a time (the MoE "
        "models decode M x batch items per decoder); 0: whole calls",
        "ours, measured on a CPU thread (docs/results/speed.md)",
        min=0,
    )


@dataclass(frozen=True)
class ClassifierSettings:
    """`mmvae classifier train`: the digit classifiers that judge coherence."""

    epochs: int = setting(40, "passes over the training set", "ours (accuracy: docs/results/quick-start.md)", min=1)
    batch_size: int = setting(128, "batch size", "ours", min=1)
    lr: float = setting(1e-3, "Adam learning rate", "ours", gt=0.0)
    seed: int = setting(0, "random seed", "ours", min=0)


@dataclass(frozen=True)
class CommandSettings:
    """Options several commands share, not part of a run's settings: the device of every command; the
    seed, the data split and the prior of those that read a bundle (eval, sample, cross-generate)."""

    device: str = setting("auto", "cpu, cuda, cuda:N or auto (cuda when available)", "ours: a GPU when there is one")
    seed: int = setting(0, "random seed", "ours", min=0)
    split: str = setting(
        "test",
        "split of the data the command reads (test: the tuples no run trained on)",
        "the papers' protocol (REFERENCE.md): evaluated on the test split",
    )
    prior: str = setting("base", "prior of the latents", "ours: the prior the model was trained with")


@dataclass(frozen=True)
class EvalSettings:
    """`mmvae eval`: how many samples each metric uses (the flags' defaults; not part of a run's settings).

    `eval coherence`, `likelihood`, `latent` and `fid` follow the papers' protocol (REFERENCE.md,
    evaluation protocol); `eval all` runs every metric at once with lighter defaults (the all_* fields)
    so that it finishes on a CPU in minutes. Every result records the counts it used."""

    n_joint: int = setting(
        10000,
        "prior samples for joint coherence",
        "the papers' protocol (REFERENCE.md): 10,000 prior samples",
        min=1,
    )
    k: int = setting(
        15,
        "importance samples per tuple and subset",
        "MoPoE paper: 12-15 importance samples per subset posterior (the upper end)",
        min=1,
    )
    n_train: int = setting(
        500,
        "encoded training tuples the logistic regression is fitted on",
        "the papers' protocol (REFERENCE.md): logistic regression on 500 encoded training samples",
        min=1,
    )
    n_fid: int = setting(
        10000,
        "generated and real images per modality (capped at the split size)",
        "the papers' protocol (REFERENCE.md): 10,000 generated vs 10,000 real test images",
        min=1,
    )
    fid_features: str = setting(
        "inception",
        "feature space of the Frechet distance: inception (pytorch-fid's Inception, the FID; image modalities) "
        "or classifier (the digit classifiers' penultimate layer, --classifiers; every modality, no downloaded "
        "weights)",
        "the papers' protocol (REFERENCE.md): the FID",
        choices=("inception", "classifier"),
    )
    n_prior: int = setting(
        1000,
        "prior samples for the memorisation check (distance to the nearest training posterior mean)",
        "ours (issue 25): the mean distance's standard error is a few percent of it at 1,000",
        min=1,
    )
    fit_n_joint: int = setting(
        1000,
        "fit-ebm, fit-prior --classifiers: prior samples for the joint coherence with the base prior and "
        "with the fitted one",
        "ours: a quick check next to the fit (eval coherence uses the papers' 10,000)",
        min=1,
    )
    all_n_joint: int = setting(
        2000,
        "eval all: prior samples for joint coherence",
        "ours: eval all, a quicker pass than the papers' 10,000",
        min=1,
    )
    all_k: int = setting(
        12,
        "eval all: importance samples for the likelihoods",
        "MoPoE paper's lower end (12-15); eval all, a quicker pass",
        min=1,
    )
    all_ll_limit: int = setting(
        200,
        "eval all: likelihood on N evaluation tuples only, evenly spaced",
        "ours: eval all, a quicker pass",
        min=1,
    )


@dataclass(frozen=True)
class GenerateSettings:
    """`mmvae sample` and `mmvae cross-generate`: how many samples they draw by default."""

    sample_n: int = setting(64, "sample: number of joint samples", "ours: an 8 x 8 grid", min=1)
    cross_generate_n: int = setting(
        16, "cross-generate: number of input tuples", "ours: a grid that stays legible", min=1
    )


SECTIONS = {
    "model": ModelSettings,
    "train": TrainSettings,
    "energy": EnergySettings,
    "joint": JointEnergySettings,
    "langevin": LangevinSettings,
}


# A learnable p0 (--learn-prior) under a jointly trained energy: refused here and by priors.ebm.joint.learn.
LEARNED_P0_NEEDS_FEEDBACK_1 = (
    "--learn-prior needs --ebm-feedback 1: log Z's gradient for p0 comes from samples of "
    "p_alpha, the VAE's prior only with feedback 1"
)


def check_model(m: ModelSettings, joint: JointEnergySettings | None = None) -> None:
    """Combinations of model settings (and, for --prior ebm, the joint energy's settings `joint`) that
    cannot work, refused with one line before anything runs."""
    joint_ebm = joint is not None
    fusion, objective = registry.fusion(m.fusion), registry.objective(m.objective)
    if objective.fusions and m.fusion not in objective.fusions:
        raise MMVAEError(
            f"--objective {m.objective} is defined for --fusion {' or '.join(objective.fusions)}, not {m.fusion}"
        )
    if fusion.joint_encoder and m.fusion not in objective.fusions:
        raise MMVAEError(
            f"--fusion {m.fusion} trains its unimodal encoders only with --objective "
            f"{' or '.join(n for n, o in OBJECTIVES.items() if m.fusion in o.fusions)}"
        )
    if m.private_dim and not (objective.private_latents and (fusion.private_latents or objective.fusions)):
        raise MMVAEError(
            f"--private-dim (MMVAE+) needs --fusion {' or '.join(declaring(FUSIONS, 'private_latents'))} and "
            f"--objective {' or '.join(declaring(OBJECTIVES, 'private_latents'))}"
        )
    if (fusion.products or objective.gaussian) and (m.posterior != "gaussian" or m.prior != "gaussian"):
        what = f"fusion {m.fusion}" if fusion.products else f"--objective {m.objective}"
        raise MMVAEError(
            f"{what} needs Gaussian posteriors and prior (a product with Laplace experts "
            "has no closed form); use --posterior gaussian"
            + (" or --fusion moe" if fusion.products and not objective.fusions else "")
        )
    if joint_ebm and not objective.train_prior:
        raise MMVAEError(
            f"--prior ebm: --objective {m.objective} has no term for a prior trained with the VAE; "
            "fit one after training (`mmvae fit-ebm RUN`)"
        )
    if joint_ebm and not fusion.shared_latent:
        raise MMVAEError(
            "--prior ebm learns a prior over a shared latent; EB-MVAE (--fusion none) gets its "
            "energy after training: `mmvae fit-ebm RUN`"
        )
    if m.mvae_subsets and m.objective != "mvae":
        raise MMVAEError("--mvae-subsets needs --objective mvae")
    if joint_ebm and m.learn_prior and joint.feedback != 1.0:
        raise MMVAEError(LEARNED_P0_NEEDS_FEEDBACK_1)


def check_partial(m: ModelSettings, why: str) -> None:
    """Refuse partially observed training tuples (`why`: where they come from) for a model whose fusion
    needs every modality of a tuple (JMVAE's joint encoder)."""
    if registry.fusion(m.fusion).complete:
        raise MMVAEError(
            f"{why}: {registry.model_name(m.fusion, m.objective)} (--fusion {m.fusion}) trains on complete "
            "tuples only (its joint encoder q(z | X) reads every modality)"
        )


def resolve(cls, overrides: dict, base=None):
    """A checked section of `cls` from its defaults (or `base`) and the non-None overrides."""
    s = overridden(base if base is not None else cls(), overrides)
    check(s)
    return s
