"""What training an energy jointly with the VAE needs (`train --prior ebm`, Yuan et al. Algorithm 1):

    prior = joint_prior(cfg, z_dim)              # the energy of a new run (EnergySettings, LangevinSettings)
    model.attach_prior(prior)                    # becomes model.train_prior: the objectives ask it for
                                                 # energy_term / energy_weight / learn
    learn(prior, model, z_pos, loss, stats)      # eq. 10 on the batch's posterior samples (objectives.py)
    monitor(prior, history)                      # DivergenceTest per epoch: a runaway energy stops the run

The energy's settings while it trains are `JointEnergySettings` (config.py).
"""

from __future__ import annotations

import math

import torch

from ...config import to_dict
from ...errors import NumericalError
from ...recipe import TrainConfig
from .losses import maximum_likelihood_loss


def joint_prior(cfg: TrainConfig, z_dim: int):
    """The energy trained with a new run's VAE: EnergySettings' net (its ml activation by default) over z,
    the tilted density, the run's Langevin and joint settings."""
    from . import EnergyPrior
    from .net import EnergyConfig

    e = cfg.energy
    net = EnergyConfig(dim=z_dim, hidden=e.energy_hidden, layers=e.energy_layers, activation=e.activation("ml"))
    return EnergyPrior(net, "tilted", joint=True, joint_settings=cfg.joint, langevin=to_dict(cfg.langevin))


def negative_starts(prior, z_pos: torch.Tensor) -> torch.Tensor:
    """Chain starts for eq. 11 per `JointEnergySettings.neg_start`: p0 samples, the posterior samples,
    or the previous step's chains (a fraction restarted from p0; all of them when the batch size changed)."""
    n = z_pos.shape[0]
    how = prior.joint_settings.neg_start
    if how == "posterior":
        return z_pos
    fresh = prior.start(n)
    if how == "prior" or prior.chains is None or prior.chains.shape != fresh.shape:
        return fresh
    reset = torch.rand(n, 1, device=fresh.device) < prior.joint_settings.persistent_reset
    return torch.where(reset, fresh, prior.chains)


def learn(prior, model, z_pos: torch.Tensor, loss, stats, prior_terms: int = 1):
    """Algorithm 1's "learn alpha" step added to the loss: eq. 10 as
    mean E(z_pos) - mean E(z_neg) (+ the L2 term of `JointEnergySettings.reg`), z_pos posterior samples
    (detached), z_neg short-run Langevin samples (eq. 11) from the starts `negative_starts` picks.
    Touches only alpha, except with a learnable p0: log Z(alpha) = log E_p0[exp(-E)] depends on p0's
    parameters, d log Z / d theta = E_{p_alpha}[d log p0(z) / d theta], so beta * mean log p0(z_neg)
    (once per prior term in the loss, `prior_terms`) is added for them: a gradient surrogate, added after
    stats["loss"] was taken, so the reported loss is unchanged. Reports energy_neg (mean E of the
    negatives) and, where the objective did not, energy_q (mean E of the positives) for `DivergenceTest`."""
    js = prior.joint_settings
    z_pos = z_pos.detach().reshape(-1, z_pos.shape[-1])
    z_neg = prior.langevin(negative_starts(prior, z_pos), denoise=0.0).z  # eq. 10's negatives: the chains' states
    if js.neg_start == "persistent":
        prior.chains = z_neg
    ml = maximum_likelihood_loss(prior.energy, z_pos, z_neg, reg=js.reg, reg_on=js.reg_on)
    with torch.no_grad():
        e_neg = prior.energy(z_neg).mean().item()
        if "energy_q" not in stats:
            stats = {**stats, "energy_q": prior.energy(z_pos).mean().item()}
    if prior.energy_weight() and any(p.requires_grad for p in model.prior.parameters()):
        loss = loss + prior_terms * model.beta * model.base_log_prob(z_neg).mean()
    prior.joint_step += 1
    return loss + ml, {**stats, "ebm_ml": ml.item(), "energy_neg": e_neg}


def monitor(history: list[dict]):
    """The divergence test of a jointly trained energy, fed the run's history so far: a callable that raises
    NumericalError (exit 3) for a diverging epoch, before it is saved (`DivergenceTest`)."""
    test = DivergenceTest()
    for row in history:
        test.update(row)

    def check(row: dict) -> None:
        reason = test.update(row)
        if reason:
            raise NumericalError(reason)

    return check


class DivergenceTest:
    """Per-epoch test that a jointly trained energy prior has run away (pure: no I/O, no torch).

    `update(row)` takes each epoch's summary (train.fit's keys: "loss", "kl" = KL(q || p0) per sample,
    "energy_q" = E_q[E], "energy_neg" = mean E over the Langevin negatives, "ebm_ml") and returns None,
    or a one-line reason with a suggestion when the run has diverged (tests in this order).
    Rows without "energy_q" (no joint energy) are ignored. With g_t = E_neg - E_q, K_t = kl, and
    k_t = max(K_t, kl_floor), the run diverged at epoch t when any of:

    1. non-finite: loss, kl, energy_q, energy_neg or ebm_ml is NaN or infinite;
    2. gap: g_t > gap_ratio * k_t (the energy separates positives from negatives by more than the
       posterior's whole information about the data: the negatives no longer sample p_alpha);
    3. energy scale: max(|E_q|, |E_neg|) > energy_ratio * k_t. A correct tilt is
       E(z) = -log(q_agg(z) / p0(z)) + c, so |E_q - c| <= KL(q_agg || p0) <= K_t, and the L2 term of
       `JointEnergySettings.reg` keeps c near 0; energies far beyond the KL are the runaway;
    4. drift: over the last `window` epochs E_q fell by more than max(drift_floor, K_t - K_{t-window})
       while K rose by at least the factor (1 + kl_growth): the energy's level on the posterior's region
       sinks (eq. 10 is blind to it, see `JointEnergySettings`) and the posterior follows the deepening
       well away from p0. A shift of the energy at a steady KL is harmless (log Z absorbs it) and is
       not flagged.
    The epoch in the message is row["epoch"] when present, else the number of rows seen. On --resume,
    feed the manifest's history first so the window spans the restart.
    Calibration (measured): the PolyMNIST runs without the L2 term are flagged at epoch 3 (drift), with
    reg 0.01 at epoch 4; with the default reg 0.1 (8 epochs) and in the joint test nothing is flagged.
    """

    def __init__(
        self,
        energy_ratio: float = 1.5,
        gap_ratio: float = 1.0,
        kl_floor: float = 10.0,
        window: int = 2,
        drift_floor: float = 5.0,
        kl_growth: float = 0.1,
    ):
        self.energy_ratio, self.gap_ratio, self.kl_floor = energy_ratio, gap_ratio, kl_floor
        self.window, self.drift_floor, self.kl_growth = window, drift_floor, kl_growth
        self.rows: list[dict] = []

    def update(self, row: dict) -> str | None:
        if "energy_q" not in row:
            return None
        r = {k: float(row.get(k, 0.0)) for k in ("loss", "kl", "energy_q", "energy_neg", "ebm_ml")}
        self.rows.append(r)
        t = int(row.get("epoch", len(self.rows)))
        bad = [k for k, v in r.items() if not math.isfinite(v)]
        if bad:
            return self._say(t, f"non-finite {', '.join(bad)}")
        e_q, e_neg, kl = r["energy_q"], r["energy_neg"], r["kl"]
        k = max(kl, self.kl_floor)
        if e_neg - e_q > self.gap_ratio * k:
            return self._say(
                t, f"energy gap E_neg - E_q = {e_neg - e_q:.4g} beyond {self.gap_ratio:g} x KL(q||p0) {kl:.4g}"
            )
        if max(abs(e_q), abs(e_neg)) > self.energy_ratio * k:
            return self._say(
                t, f"energy scale: E_q {e_q:.4g}, E_neg {e_neg:.4g} beyond {self.energy_ratio:g} x KL(q||p0) {kl:.4g}"
            )
        if len(self.rows) > self.window:
            old = self.rows[-1 - self.window]
            drop, rise = old["energy_q"] - e_q, kl - old["kl"]
            if drop > max(self.drift_floor, rise) and kl >= (1 + self.kl_growth) * old["kl"] > 0:
                return self._say(
                    t,
                    f"drift: E_q fell {drop:.4g} ({old['energy_q']:.4g} -> {e_q:.4g}) while "
                    f"KL(q||p0) rose {old['kl']:.4g} -> {kl:.4g} over {self.window} epochs",
                )
        return None

    @staticmethod
    def _say(t: int, what: str) -> str:
        return (
            f"the jointly trained energy prior diverged at epoch {t} ({what}); try a lower --ebm-feedback, "
            f"a larger --ebm-reg or a lower --ebm-lr; the last good checkpoint is kept"
        )
