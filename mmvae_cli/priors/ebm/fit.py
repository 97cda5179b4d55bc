"""Post-hoc energies for a frozen multimodal VAE (`mmvae fit-ebm`, `mmvae fit-prior --kind ebm`).

Positives are samples of the aggregate posterior over the training set (priors/bank.ExpertBank),
    z ~ q(z) = 1/N sum_i q(z | X_i)        (q the model's fused posterior given all modalities;
                                            for fusion none the concatenated unimodal posteriors),
and the energy is fitted to them by one of

  ml         maximum likelihood for the tilted prior p_alpha(z) ∝ exp(-E(z)) p_b(z) (Yuan et al. eq. 10):
             loss = mean E(z_pos) - mean E(z_neg), z_neg by short-run Langevin from p_b (eq. 11), or
             continued from the previous batch's chains (persistent); p_b the prior it tilts (`base`:
             p0, or the bundle's gmm or flow);
  nce        noise-contrastive estimation of the same tilt (losses.nce_loss): z_pos against noise_ratio
             times as many fresh p_b samples, optimum E = -log(q / p_b); no chains while fitting (NCP-VAE);
  exact | sliced | denoising
             score matching for the Gibbs density p(z) ∝ exp(-E(z)) (EB-MVAE eq. 1), see
             losses.score_matching_loss;
  ncsn       a noise-conditional energy E(u, sigma) by multi-scale denoising score matching over
             geometric levels sigma_max..sigma_min (Song & Ermon 2019, losses.ncsn_loss), sampled by
             annealed Langevin (langevin.annealed_langevin). Defaults: sigma_max the largest
             per-dimension spread of the aggregate posterior, sigma_min the median posterior std
             (both in the energy's coordinates: standardised by default, see net.EnergyNet).

Settings (`EnergyFit`): FitSettings with the objective's defaults filled in (config.ENERGY_DEFAULTS,
EBMVAE_FIT), the EnergyConfig of the net, the Langevin settings stored with the energy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ... import config
from ...config import FitSettings
from ...errors import MMVAEError
from ...loop import FitLoop
from .langevin import check_tweedie_level, geometric_sigmas
from .losses import maximum_likelihood_loss, nce_loss_of_energies, ncsn_loss, score_matching_loss
from .net import EnergyConfig

OBJECTIVES = ("ml", "nce", "exact", "sliced", "denoising", "ncsn")
EXACT_MAX_DIM = 128  # exact score matching costs one backward pass per latent dimension


@dataclass(frozen=True)
class EnergyFit:
    """A post-hoc energy fit's settings: `fit` resolved (FitSettings.resolved), the net, the Langevin
    settings stored with the energy (LangevinSettings' fields)."""

    fit: FitSettings
    energy: EnergyConfig
    langevin: dict

    def to_json(self) -> dict:
        return {"fit": config.to_dict(self.fit), "energy": self.energy.to_dict(), "langevin": dict(self.langevin)}

    @classmethod
    def from_json(cls, d: dict) -> EnergyFit:
        try:
            return cls(
                config.from_dict(FitSettings, d["fit"], "checkpoint [fit]"),
                EnergyConfig.from_dict(d["energy"]),
                dict(d["langevin"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise MMVAEError(f"invalid energy fit settings ({e})") from None


SECTIONS = (config.FitSettings, config.EnergySettings, config.LangevinSettings)


def resolve(given: dict, fusion: str, z_dim: int) -> EnergyFit:
    """The settings of a fit to a model with this fusion and latent size: the flags given win over the
    objective's measured defaults (config.fit_energy_defaults, fit_langevin_defaults), which win over the
    sections' own."""
    s = config.resolve(FitSettings, given).resolved(fusion)
    config.check(s)
    lg = config.resolve(
        config.LangevinSettings,
        given,
        base=config.LangevinSettings(**config.fit_langevin_defaults(s.objective, fusion, s.sigma)),
    )
    es = config.resolve(
        config.EnergySettings, given, base=config.EnergySettings(**config.fit_energy_defaults(s.objective, fusion))
    )
    energy = EnergyConfig(
        dim=z_dim,
        hidden=es.energy_hidden,
        layers=es.energy_layers,
        activation=es.activation(s.objective),
        noise_levels=s.noise_levels if s.objective == "ncsn" else 0,
        standardise=bool(s.standardise),
        members=s.ensemble,
    )
    if s.objective not in config.TILTED_OBJECTIVES and energy.activation == "leaky_relu":
        raise MMVAEError(
            "score matching needs a twice-differentiable energy: choose --energy-activation gelu, silu, softplus or elu"
        )
    check_objective(s.objective, z_dim)
    if s.objective == "ncsn":
        check_tweedie_level(lg.denoise, s.sigma_min)
    return EnergyFit(s, energy, config.to_dict(lg))


def check_objective(objective: str, dim: int) -> None:
    if objective not in OBJECTIVES:
        raise MMVAEError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if objective == "exact" and dim > EXACT_MAX_DIM:
        raise MMVAEError(
            f"--objective exact takes one backward pass per latent dimension and this latent has "
            f"{dim} (limit {EXACT_MAX_DIM}); use --objective sliced or denoising"
        )


def fit_energy(cls, bank, seed: int, spec: EnergyFit, run=None, resume: bool = False, step_delay: float = 0.0):
    """Fit an energy prior (class `cls`) to the aggregate posterior of `bank.model` (frozen);
    (prior, stats) with stats["history"] one row per epoch: mean loss, and for ml the mean energies of
    positives and negatives. Raises NumericalError on a non-finite loss or a diverging chain.
    With `run` (the run lifecycle): a checkpoint after every epoch and, on SIGTERM/SIGUSR1, after
    the current step before exit code 75; `resume` continues from that checkpoint with the same
    result as an uninterrupted fit; each epoch is logged (stderr, jsonl, TensorBoard)."""
    s = spec.fit
    check_objective(s.objective, bank.dim)
    torch.manual_seed(seed)
    density = "tilted" if s.objective in config.TILTED_OBJECTIVES else "gibbs"
    base = bank.model.priors.get(s.base) if s.base != "base" else None
    if s.base != "base" and base is None:
        raise MMVAEError(f"the model has no {s.base} prior to tilt")
    fp = base.fingerprint() if base is not None else None
    prior = cls(spec.energy, density, langevin=spec.langevin, base=s.base, base_sha256=fp).to(bank.device)
    prior.attach(bank.model)
    if density == "gibbs" and not resume:  # Gibbs chains start at the latents' moment-matched Gaussian
        z = bank.sample(torch.arange(bank.n))
        prior.init_loc.copy_(z.mean(0))
        prior.init_scale.copy_(z.std(0).clamp_min(1e-3))
        net = prior.energy
        if net.config.standardise:
            net.shift.copy_(prior.init_loc)
            net.scale.copy_(prior.init_scale)
        if net.noise_conditional:
            net.sigmas.copy_(noise_levels(bank, prior, s).to(net.sigmas))
    loop = _EnergyFit(run, prior, bank, s, seed, step_delay)
    if resume:
        loop.resume()
    loop.fit()
    history = loop.history
    prior.eval()
    for p in prior.parameters():
        p.requires_grad_(False)
    stats = {
        "objective": s.objective,
        "density": density,
        "loss_curve": summarise(history),
        "history": history,
        "seconds": round(sum(h.get("seconds", 0.0) for h in history), 2),
    }
    if prior.energy.noise_conditional:
        stats["sigmas"] = prior.energy.sigmas.tolist()
    return prior, stats


class _EnergyFit(FitLoop):
    """fit_energy's step on the batch's aggregate-posterior draws z_pos ~ q(z | X_i): eq. 10 against
    short-run Langevin negatives (ml; persistent chains are checkpointed), denoising / sliced score
    matching, or NCSN's noise-conditional loss. A batch of fewer than 2 tuples takes no step."""

    def __init__(self, run, prior, bank, s: FitSettings, seed: int, step_delay: float):
        opt = torch.optim.Adam(prior.energy.parameters(), lr=s.lr, betas=tuple(s.betas))
        super().__init__(run, prior, opt, bank, s, seed=seed, what="fit-ebm epoch", step_delay=step_delay)
        self.s, self.chains = s, None

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {"fit.chains": self.chains} if self.chains is not None else {}

    def restore_extra(self, tensors: dict[str, torch.Tensor]) -> None:
        self.chains = tensors["fit.chains"].to(self.bank.device) if "fit.chains" in tensors else None

    def forward(self, epoch: int, step: int, idx: torch.Tensor):
        if len(idx) < 2:
            return None
        s, prior = self.s, self.module
        z_pos = self.bank.sample(idx.to(self.bank.device))
        if s.objective == "ml":
            chains = self.chains
            reuse = s.persistent and chains is not None and len(chains) >= len(idx)
            if s.base != "base":  # short-run chains in the base's noise coordinates (never persistent)
                z_neg = prior.chain(len(idx), sampler="langevin", denoise=0.0).z
            else:
                z_neg = prior.langevin(chains[: len(idx)] if reuse else prior.start(len(idx)), denoise=0.0).z
            if s.persistent:  # eq. 10's negatives are the chains' states, never Tweedie-denoised
                self.chains = z_neg
            loss = maximum_likelihood_loss(prior.energy, z_pos, z_neg, s.reg)
            with torch.no_grad():
                e_pos, e_neg = prior.energy(z_pos).mean().item(), prior.energy(z_neg).mean().item()
            return loss, {"loss": loss.item(), "e_pos": e_pos, "e_neg": e_neg}, 1
        if s.objective == "nce":  # each ensemble member by its own loss, on its own posterior and noise draws
            loss, logged = 0.0, torch.zeros(3)
            for k in range(s.ensemble):
                zp = z_pos if k == 0 else self.bank.sample(idx.to(self.bank.device))
                with torch.no_grad():
                    zn = prior.start(s.noise_ratio * len(idx))
                member = prior.energy.member(k)
                e_pos, e_neg = member(zp), member(zn)
                loss = loss + nce_loss_of_energies(e_pos, e_neg, s.noise_ratio)
                with torch.no_grad():  # logged: the members' mean of their energies and accuracies
                    acc = 0.5 * ((e_pos < 0).float().mean() + (e_neg > 0).float().mean())
                    logged += torch.stack([e_pos.mean(), e_neg.mean(), acc]).cpu() / s.ensemble
            e_pos, e_neg, acc = logged.tolist()
            return loss, {"loss": loss.item() / s.ensemble, "e_pos": e_pos, "e_neg": e_neg, "acc": acc}, 1
        if s.objective == "ncsn":
            net = prior.energy
            loss = ncsn_loss(net.energy_u, net.to_u(z_pos).repeat(s.projections, 1), net.sigmas)
        else:
            loss = score_matching_loss(prior.energy, z_pos, s.objective, s.sigma, s.projections)
        return loss, {"loss": loss.item()}, 1

    def diverged(self, loss, epoch: int, step: int) -> str:
        s = self.s
        return f"fit-ebm loss became {loss.item()} at epoch {epoch + 1}; try a smaller --lr (now {s.lr:g})" + (
            " or --step-size" if s.objective == "ml" else ""
        )


def noise_levels(bank, prior, s: FitSettings) -> torch.Tensor:
    """ncsn's levels in the energy's coordinates: geometric from sigma_max (default: the largest
    per-dimension std of the aggregate posterior) to sigma_min (default: the median std of the unimodal
    posteriors, i.e. their scale parameter; for a shared latent the experts', not the fused one's)."""
    net = prior.energy
    unit = net.scale if net.config.standardise else torch.ones_like(prior.init_scale)
    spread = prior.init_scale / unit
    M, N, d = bank.scale.shape
    post = bank.scale.permute(1, 0, 2).reshape(N, M * d) if M * d == bank.dim else bank.scale.reshape(-1, d)
    smax = s.sigma_max if s.sigma_max is not None else float(spread.max())
    smin = s.sigma_min if s.sigma_min is not None else float((post / unit).median())
    if s.sigma_min is None and smin > smax:  # posteriors wider than the aggregate: an untrained VAE
        from ...console import log

        log(f"ncsn: the median posterior std {smin:.4g} exceeds sigma_max {smax:.4g}; using sigma_min = sigma_max / 10")
        smin = smax / 10
    if smin > smax:
        raise MMVAEError(
            f"ncsn: sigma_min {smin:.4g} exceeds sigma_max {smax:.4g}; give --sigma-min/--sigma-max explicitly"
        )
    return geometric_sigmas(smax, smin, net.config.noise_levels)


def summarise(history: list[dict]) -> dict:
    """The loss curve in a few numbers: first, last, min (and the epoch of the min)."""
    losses = [h["loss"] for h in history]
    if not losses:
        return {}
    i = min(range(len(losses)), key=losses.__getitem__)
    return {"first": losses[0], "last": losses[-1], "min": losses[i], "min_epoch": i + 1, "epochs": len(losses)}
