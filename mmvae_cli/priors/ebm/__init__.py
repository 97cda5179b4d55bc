"""ebm: an energy E(z) over the latent and the density it defines, a prior kind like gmm and flow.

    tilted (Yuan et al. eq. 3; fitted by maximum likelihood, eq. 10, or by noise-contrastive estimation):
        log p_alpha(z) = -E(z) + log p_b(z) - log Z,   chains start at z0 ~ p_b,
        p_b the prior it tilts (`base`): the VAE's p0, or the bundle's fitted gmm or flow (then
        E only learns the residual -log(q_agg / p_b) + c; the energy records its base's fingerprint and
        is refused once that prior is refitted or removed);
    gibbs (EB-MVAE eq. 1-3; fitted by score matching):
        log p(z) = -E(z) - log Z,   chains start at z0 ~ N(init_loc, diag(init_scale^2)),
        the diagonal Gaussian moment-matched to the latents the energy was fitted on (score
        matching learns the density only where the data are, so chains start there).

Sampled by short-run Langevin (langevin.py; annealed over the levels of a noise-conditional energy,
with an optional last Tweedie step), from the chains' start or from sampling-importance-resampled
starts (`sampler` sir, NCP-VAE; `steps` 0: resampling alone); its normaliser is unknown, so log_prob is None. For fusion none
(EB-MVAE) it also samples unobserved latents given observed ones (`sample_given`, cross-generation).

Fitted post hoc (`mmvae fit-ebm RUN` = `mmvae fit-prior RUN --kind ebm`; fit.py) or trained jointly
with the VAE (`train --prior ebm`; joint.py: the objectives ask `model.train_prior` for its terms).
Stored as prior-ebm.safetensors (energy weights, init_loc, init_scale) with its settings in the
manifest's `priors: {ebm: {"prior": {energy, density, training, langevin}, ...}}`; bundles written
before issue 24 (ebm.safetensors and a top-level `ebm` section) are read by model_io.upgrade.

    net.py       EnergyConfig, EnergyNet        langevin.py  Langevin, annealed Langevin, Tweedie
    losses.py    eq. 10, score matching, NCSN   fit.py       the post-hoc fit and its settings
    joint.py     joint training: eq. 10 in the objective, the divergence test
"""

from __future__ import annotations

from dataclasses import fields

import torch

from ... import config
from ...config import JointEnergySettings, LangevinSettings
from ...errors import BundleError, MMVAEError
from ..base import LatentPrior
from . import fit as _fit
from . import joint as _joint
from .langevin import (
    LangevinResult,
    annealed_langevin,
    check_tweedie_level,
    ebm_log_prob,
    ebm_prior_log_prob,
    tweedie_denoise,
)
from .langevin import langevin as plain_langevin
from .net import EnergyConfig, EnergyNet

DENSITIES = ("tilted", "gibbs")


@torch.no_grad()
def importance_resample(draw, log_weight, n: int, proposals: int):
    """Sampling-importance-resampling (NCP-VAE, Aneja et al. 2021): for each of n samples, K = `proposals`
    draws (x_k, c_k) = draw(K) and one of them kept with probability w_k / sum_j w_j, log w = log_weight(x, c)
    = log p~(x) - log r(x) for draws from r. As K grows the kept draws' law tends to p ∝ p~; at K = 1 it is
    r itself. draw(m) -> (x (m, D), c (m,) or None); returns (x, c) of n kept draws, in chunks of 65,536."""
    if proposals == 1:
        return draw(n)
    xs, cs, chunk = [], [], max(1, 65536 // proposals)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        x, c = draw(m * proposals)
        logw = log_weight(x, c).view(m, proposals)
        k = torch.multinomial(torch.softmax(logw.double(), 1), 1).squeeze(1)
        rows = torch.arange(m, device=x.device)
        xs.append(x.view(m, proposals, -1)[rows, k])
        cs.append(None if c is None else c.view(m, proposals)[rows, k])
    return torch.cat(xs), (None if cs[0] is None else torch.cat(cs))


class EnergyPrior(LatentPrior):
    kind = "ebm"
    title = "energy-based prior"
    help = "short-run Langevin on the bundle's energy (fit-ebm or train --prior ebm)"
    fit_prior = True
    settings_sections = _fit.SECTIONS
    flag_rename = {"steps": "langevin-steps"}
    command = "fit-ebm"
    sampler_options = tuple(f.name for f in fields(LangevinSettings))  # every Langevin setting
    conditional = True

    def __init__(
        self,
        energy: EnergyConfig | dict,
        density: str = "tilted",
        joint: bool = False,
        joint_settings: JointEnergySettings | None = None,
        langevin: dict | None = None,
        base: str = "base",
        base_sha256: str | None = None,
    ):
        super().__init__()
        if density not in DENSITIES:
            raise BundleError(f"unknown energy density {density!r}; expected one of {', '.join(DENSITIES)}")
        self.energy = EnergyNet.from_config(energy)
        self.density = density
        self.trained_with_vae = joint  # trained jointly with the VAE (Algorithm 1): the model's train_prior
        self.joint_settings = joint_settings or JointEnergySettings()
        self.joint_step = 0  # training steps taken (warm-up; not saved)
        self.chains: torch.Tensor | None = None  # persistent negatives (not saved)
        self.langevin_settings = dict(langevin or {})  # the Langevin settings stored with it (defaults of `langevin`)
        if base != "base" and density != "tilted":
            raise BundleError(f"a {density} energy tilts no prior (base {base!r})")
        self.base, self.base_sha256 = base, base_sha256  # the prior kind it tilts, and that prior's fingerprint
        self.__dict__["_checked_base"] = None  # the base prior whose fingerprint was checked (not a submodule)
        self.__dict__["model"] = None  # the VAE it is attached to (p0), not a submodule
        dim = self.energy.config.dim
        self.register_buffer("init_loc", torch.zeros(dim))
        self.register_buffer("init_scale", torch.ones(dim))

    # --- a stored prior ---------------------------------------------------------------------------
    @classmethod
    def noun(cls) -> str:
        return "energy"

    def to_json(self) -> dict:
        return {
            "energy": self.energy.config.to_dict(),
            "density": self.density,
            "training": "joint" if self.trained_with_vae else "post-hoc",
            "langevin": dict(self.langevin_settings),
            **({"base": self.base, "base_sha256": self.base_sha256} if self.base != "base" else {}),
        }

    @classmethod
    def from_stored(cls, settings: dict, tensors: dict[str, torch.Tensor]) -> EnergyPrior:
        try:
            prior = cls(
                settings["energy"],
                settings["density"],
                settings.get("training") == "joint",
                langevin=dict(settings.get("langevin", {})),
                base=settings.get("base", "base"),
                base_sha256=settings.get("base_sha256"),
            )
        except (KeyError, TypeError) as e:
            raise MMVAEError(f"energy prior: invalid settings ({e})") from None
        from ...bundle import load_state

        load_state(prior, tensors, "the energy's weights")
        return prior.eval()

    @property
    def dim(self) -> int:
        return self.init_loc.numel()

    def attach(self, model) -> None:
        self.__dict__["model"] = model

    # --- its density and sampler --------------------------------------------------------------------
    def base_prior(self) -> LatentPrior | None:
        """p_b when the energy tilts one of the bundle's fitted priors (None: the VAE's own p0), checked
        to be the prior it was fitted over (one-line MMVAEError when it was refitted or removed)."""
        if self.model is None:
            raise MMVAEError("this energy is attached to no model: its base prior is unknown")
        if self.base == "base":
            return None
        p = self.model.priors.get(self.base)
        refit = f"refit the energy with `mmvae fit-ebm RUN --base {self.base} --overwrite`"
        if p is None:
            raise MMVAEError(f"this energy tilts a {self.base} prior that the bundle no longer has; {refit}")
        if p is not self._checked_base:
            if self.base_sha256 is not None and p.fingerprint() != self.base_sha256:
                raise MMVAEError(
                    f"the bundle's {self.base} prior was refitted after the energy was fitted over it; {refit}"
                )
            self.__dict__["_checked_base"] = p
        return p

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p_b(z), the prior this energy tilts: (B,)."""
        p = self.base_prior()
        return self.model.base_log_prob(z) if p is None else p.log_prob(z).to(z.dtype)

    def log_density(self):
        """The unnormalised log density z -> (B,) for `langevin`: -E(z) + log p0(z) (tilted) or -E(z) (gibbs)."""
        if self.density == "tilted":
            return ebm_prior_log_prob(self.energy, self.base_log_prob)
        return ebm_log_prob(self.energy)

    def start(self, n: int) -> torch.Tensor:
        """Chain starts: p_b samples for a tilted prior; the stored init Gaussian for a Gibbs energy."""
        if self.density == "tilted":
            p = self.base_prior()
            z = self.model.sample_prior(n) if p is None else p.sample(n)
            return z.to(device=self.init_loc.device, dtype=self.init_loc.dtype)
        return self.init_loc + self.init_scale * torch.randn(n, self.dim, device=self.init_loc.device)

    def start_log_weight(self, z: torch.Tensor) -> torch.Tensor:
        """log w(z) = log p~(z) - log r(z) of a chain start z ~ r (`start`), p~ this unnormalised density:
        -E(z) for a tilted prior (r = p_b), -E(z) - log N(z; init_loc, init_scale^2) for a Gibbs energy."""
        w = -self.energy(z)
        if self.density != "tilted":
            w = w - torch.distributions.Normal(self.init_loc, self.init_scale).log_prob(z).sum(-1)
        return w

    def resample(self, n: int, proposals: int) -> torch.Tensor:
        """n chain starts z ~ r (`start`), each importance-resampled from `proposals` by the weights of
        `start_log_weight` (`importance_resample`). (n, D)"""
        return importance_resample(
            lambda m: (self.start(m), None), lambda z, _: self.start_log_weight(z), n, proposals
        )[0]

    def sampler_settings(self, **overrides) -> dict:
        """LangevinSettings' defaults < the settings stored with the energy < overrides (None = keep)."""
        s = config.to_dict(LangevinSettings())
        s.update({k: v for k, v in self.langevin_settings.items() if k in s})
        unknown = set(overrides) - set(s)
        if unknown:
            raise MMVAEError(f"unknown Langevin settings: {', '.join(sorted(unknown))}")
        s.update({k: v for k, v in overrides.items() if v is not None})
        return s

    def langevin(self, z0: torch.Tensor, mask: torch.Tensor | None = None, every: int = 0, **overrides):
        """Langevin dynamics (Yuan et al. eq. 11) on this density from z0 with `sampler_settings(**overrides)`."""
        s = self.sampler_settings(**overrides)
        return self.run(
            z0,
            int(s["steps"]),
            float(s["step_size"]),
            noise_scale=float(s["noise_scale"]),
            clip_grad=s["clip_grad"],
            denoise=float(s["denoise"]),
            mask=mask,
            every=every,
        )

    def run(self, z0: torch.Tensor, steps: int, step_size: float, denoise: float = 0.0, **kw) -> LangevinResult:
        """Langevin from z0 on this density: plain (`langevin.langevin`) for an ordinary energy; for a
        noise-conditional one (gibbs), annealed Langevin (`annealed_langevin`) in the energy's u
        coordinates over its levels, `steps` in all, step_size the ratio s_i / sigma_i. Same
        keywords as `langevin.langevin` (noise_scale, clip_grad, mask, every). denoise > 0: a last
        `tweedie_denoise` step at that noise level (noise-conditional energies: in u, on the
        smallest level's energy, so denoise must be that level: checked before the chains run); the
        chain's snapshots are the Langevin states before it."""
        self.check_denoise(denoise)
        net = self.energy
        mask = kw.get("mask")
        if not self._annealed:
            res = plain_langevin(self.log_density(), z0, steps, step_size, **kw)
            return res._replace(z=self.denoise(res.z, denoise, mask))
        res = annealed_langevin(lambda u, s: -net.energy_u(u, s), net.to_u(z0), net.sigmas, steps, step_size, **kw)
        z, chain = self.denoise(net.from_u(res.z), denoise, mask), [net.from_u(c) for c in res.chain]
        if mask is not None:  # clamped coordinates exactly as given (u -> z may round)
            free = torch.broadcast_to(mask.to(device=z.device) != 0, z.shape)
            z, chain = torch.where(free, z, z0), [torch.where(free, c, z0) for c in chain]
        return LangevinResult(z, chain)

    @property
    def _annealed(self) -> bool:
        """A noise-conditional Gibbs energy: sampled by annealed Langevin in its u coordinates."""
        return getattr(self.energy, "noise_conditional", False) and self.density != "tilted"

    def check_options(self, options: dict) -> None:
        """Langevin options only, and a --denoise this energy can take (`check_denoise`, on the stored
        setting when none is given): before anything runs."""
        super().check_options(options)
        self.check_denoise(self.sampler_settings(**options)["denoise"])

    def check_denoise(self, sigma: float) -> None:
        """A noise-conditional energy's Tweedie step is its smallest level's: sigma 0 or that level
        (`langevin.check_tweedie_level`); any sigma for an ordinary energy."""
        if self._annealed:
            check_tweedie_level(float(sigma), float(self.energy.sigmas[-1]))

    def denoise(self, z: torch.Tensor, sigma: float, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`tweedie_denoise` on this density at noise level sigma (free coordinates only): in z for an
        ordinary energy; in u on the smallest level's energy for a noise-conditional one (sigma must be
        that level, `check_denoise`)."""
        if not self._annealed:
            return tweedie_denoise(self.log_density(), z, sigma, mask)
        self.check_denoise(sigma)
        if not sigma:
            return z.detach()
        net = self.energy
        new = net.from_u(tweedie_denoise(lambda x: -net.energy_u(x), net.to_u(z), sigma, mask)).detach()
        if mask is None:
            return new
        free = torch.broadcast_to(mask.to(device=z.device) != 0, z.shape)
        return torch.where(free, new, z.detach())  # clamped coordinates exactly as given (u -> z may round)

    def sample(self, n: int, **langevin) -> torch.Tensor:
        return self.chain(n, **langevin).z

    def chain(self, n: int, every: int = 0, **langevin) -> LangevinResult:
        """The Langevin run from the chains' start, or from importance-resampled starts (sampler sir;
        snapshots every `every` steps). Over a fitted base (gmm, flow) the chains run in its noise
        coordinates (`noise_chain`)."""
        self.check_options(langevin)
        s = self.sampler_settings(**langevin)
        proposals = int(s["proposals"]) if s["sampler"] == "sir" else 1
        if self.base != "base":
            return self.noise_chain(n, proposals, s, every)
        z0 = self.resample(n, proposals) if proposals > 1 else self.start(n)
        return self.langevin(z0, every=every, **langevin)

    def noise_chain(self, n: int, proposals: int, s: dict, every: int = 0) -> LangevinResult:
        """Langevin on the tilt of a fitted base p_b in p_b's noise coordinates (`LatentPrior.noise`):
        z = T(u; c), u ~ N(0, I), so exp(-E(z)) p_b(z) is, given c,

            log p(u | c) = -E(T(u; c)) - |u|^2 / 2 + const,

        (VAEBM's sampling in noise space, Xiao et al. 2021): the chains never see the gradient of a sharp
        p_b (a mixture's rank-deficient covariances). Starts: (u, c) ~ N(0, I) x p_b(c), or (sir) one of
        `proposals` per chain drawn by weights exp(-E(T(u; c))), which also reweights the components c.
        A last Tweedie step (denoise) acts on u."""
        base = self.base_prior()
        u, c = self.resample_noise(base, n, proposals)

        def log_p(v: torch.Tensor) -> torch.Tensor:
            return -self.energy(base.push(v, c)) - 0.5 * v.pow(2).sum(-1)

        res = plain_langevin(
            log_p,
            u,
            int(s["steps"]),
            float(s["step_size"]),
            noise_scale=float(s["noise_scale"]),
            clip_grad=s["clip_grad"],
            every=every,
        )
        u = tweedie_denoise(log_p, res.z, float(s["denoise"])) if s["denoise"] else res.z
        with torch.no_grad():
            return LangevinResult(base.push(u, c), [base.push(x, c) for x in res.chain])

    def resample_noise(self, base: LatentPrior, n: int, proposals: int):
        """n draws (u, c) of p_b's noise coordinates, each importance-resampled from `proposals` by
        weights exp(-E(T(u; c))) (`importance_resample`; 1: p_b's own draws)."""
        return importance_resample(base.noise, lambda u, c: -self.energy(base.push(u, c)), n, proposals)

    def sample_given(self, z: torch.Tensor, free: torch.Tensor, **langevin) -> torch.Tensor:
        """EB-MVAE eq. 2-3: the free coordinates restarted from the chains' start, then Langevin with the
        others clamped."""
        z = torch.where(free, self.start(z.shape[0]), z)
        return self.langevin(z, mask=free, **langevin).z

    # --- fitted post hoc (fit.py) ---------------------------------------------------------------------
    @classmethod
    def resolve_settings(cls, given: dict, fusion: str, z_dim: int) -> _fit.EnergyFit:
        return _fit.resolve(given, fusion, z_dim)

    @classmethod
    def settings_to_json(cls, settings: _fit.EnergyFit) -> dict:
        return settings.to_json()

    @classmethod
    def settings_from_json(cls, d: dict) -> _fit.EnergyFit:
        return _fit.EnergyFit.from_json(d)

    @classmethod
    def describe(cls, settings: _fit.EnergyFit) -> tuple[str, str]:
        s, e, lg = settings.fit, settings.energy, settings.langevin
        what = f"a {e.layers}-layer energy ({e.hidden} units, {e.activation}) by {s.objective}"
        if s.base != "base":
            what += f" over the bundle's {s.base} prior"
        how = f"{s.epochs} epochs, batch {s.batch_size}, lr {s.lr:g}"
        if s.objective == "ml":
            how += f", Langevin {lg['steps']} steps of size {lg['step_size']:g}"
        return what, how

    @classmethod
    def tilts(cls, settings: _fit.EnergyFit) -> str | None:
        return settings.fit.base if settings.fit.base != "base" else None

    @classmethod
    def fit(cls, bank, common, settings: _fit.EnergyFit, run=None, resume: bool = False, step_delay: float = 0.0):
        return _fit.fit_energy(cls, bank, common.seed, settings, run, resume, step_delay)

    def fit_result(self, stats: dict) -> dict:
        return {k: stats[k] for k in ("objective", "density", "loss_curve", "seconds")}

    # --- trained with the VAE (joint.py) ----------------------------------------------------------------
    def energy_term(self, z: torch.Tensor) -> torch.Tensor:
        """E_alpha(z) with the energy's parameters detached, z: (..., D) -> (...).

        With the energy-based prior p_alpha(z) = exp(-E(z)) p0(z) / Z(alpha) (Yuan et al. eq. 3),
            KL(q || p_alpha) = KL(q || p0) + E_q[E(z)] + log Z(alpha),
        and log Z(alpha) does not depend on the encoder or decoder: this is the term eq. 9 adds for
        them. alpha learns only from eq. 10 (`learn`), hence the detached parameters."""
        params = {k: v.detach() for k, v in self.energy.named_parameters()}
        return torch.func.functional_call(self.energy, params, (z,))

    def energy_weight(self) -> float:
        """f, the energy's weight in the VAE's prior p_f(z) ∝ p0(z) exp(-f E(z)) (`JointEnergySettings.feedback`;
        f = 1 is Algorithm 1's p_alpha): KL(q || p_f) = KL(q || p0) + f E_q[E(z)] + log Z_f, log Z_f
        constant for the VAE. 0 during `warmup_steps` (the VAE's prior term is p0's alone)."""
        js = self.joint_settings
        on = self.trained_with_vae and js.feedback > 0 and self.joint_step >= js.warmup_steps
        return js.feedback if on else 0.0

    def learn(self, model, z_pos: torch.Tensor, loss, stats: dict, prior_terms: float = 1.0):
        return _joint.learn(self, model, z_pos, loss, stats, prior_terms)

    def monitor(self, history: list[dict]):
        return _joint.monitor(history) if self.trained_with_vae else None
