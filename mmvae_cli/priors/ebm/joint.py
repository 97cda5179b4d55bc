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

from ...config import LEARNED_P0_NEEDS_FEEDBACK_1, to_dict
from ...errors import MMVAEError, NumericalError
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


def negative_starts(prior, z_pos: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """Chain starts for eq. 11 per `JointEnergySettings.neg_start`: the p0 samples `fresh`, the posterior
    samples, or the previous step's chains (a fraction restarted from `fresh`; all of them when the batch
    size changed)."""
    n = z_pos.shape[0]
    how = prior.joint_settings.neg_start
    if how == "posterior":
        return z_pos
    if how == "prior" or prior.chains is None or prior.chains.shape != fresh.shape:
        return fresh
    reset = torch.rand(n, 1, device=fresh.device) < prior.joint_settings.persistent_reset
    return torch.where(reset, fresh, prior.chains)


def check_feedback(prior, model) -> None:
    """A learnable p0 needs feedback f = 1: log Z's gradient for it, E_{p_alpha}[d log p0 / d theta], comes
    from the negatives, samples of p_alpha = p_1, which is the VAE's prior p_f only for f = 1 (for
    0 < f < 1 it would need samples of p_f). MMVAEError otherwise (config.check_model refuses the flags)."""
    if prior.joint_settings.feedback != 1.0 and any(p.requires_grad for p in model.prior.parameters()):
        raise MMVAEError(LEARNED_P0_NEEDS_FEEDBACK_1)


def learn(prior, model, z_pos: torch.Tensor, loss, stats, prior_terms: float = 1.0):
    """Algorithm 1's "learn alpha" step added to the loss: eq. 10 as
    mean E(z_pos) - mean E(z_neg) (+ the L2 term of `JointEnergySettings.reg`), z_pos posterior samples
    (detached), z_neg short-run Langevin samples (eq. 11) from the starts `negative_starts` picks.
    Touches only alpha, except with a learnable p0: log Z(alpha) = log E_p0[exp(-E)] depends on p0's
    parameters, d log Z / d theta = E_{p_alpha}[d log p0(z) / d theta], so beta * mean log p0(z_neg)
    (times `prior_terms`, the number of prior terms per tuple in the loss) is added for them: a gradient
    surrogate, added after stats["loss"] was taken, so the reported loss is unchanged. The negatives
    sample p_alpha = p_1, the VAE's prior only with feedback f = 1: a learnable p0 with f < 1 is refused
    (`check_feedback`).
    Reports, for `DivergenceTest`: energy_neg (mean E of the negatives), log_z = log mean exp(-E) over
    the batch's p0 samples (an estimate of log Z, biased low) and, where the objective did not, energy_q
    (mean E of the positives)."""
    js = prior.joint_settings
    check_feedback(prior, model)
    z_pos = z_pos.detach().reshape(-1, z_pos.shape[-1])
    fresh = prior.start(z_pos.shape[0])  # p0 samples: chain starts and log Z's estimate
    z_neg = prior.langevin(negative_starts(prior, z_pos, fresh), denoise=0.0).z  # eq. 10's negatives
    if js.neg_start == "persistent":
        prior.chains = z_neg
    ml = maximum_likelihood_loss(prior.energy, z_pos, z_neg, reg=js.reg, reg_on=js.reg_on)
    with torch.no_grad():
        e_neg = prior.energy(z_neg).mean().item()
        log_z = (torch.logsumexp(-prior.energy(fresh), 0) - math.log(fresh.shape[0])).item()
        if "energy_q" not in stats:
            stats = {**stats, "energy_q": prior.energy(z_pos).mean().item()}
    if prior.energy_weight() and any(p.requires_grad for p in model.prior.parameters()):
        loss = loss + prior_terms * model.beta * model.base_log_prob(z_neg).mean()
    prior.joint_step += 1
    return loss + ml, {**stats, "ebm_ml": ml.item(), "energy_neg": e_neg, "log_z": log_z}


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
    "energy_q" = E_q[E], "energy_neg" = mean E over the Langevin negatives, "log_z" = log mean exp(-E) over
    p0 samples, "ebm_ml"; see `learn`) and returns None, or a one-line reason with a suggestion when the
    run has diverged (tests in this order). Rows without "energy_q" (no joint energy) are ignored.

    It reads only what an additive constant of E leaves unchanged (E -> E + c moves log_z by -c), as
    p_alpha, the Langevin chains and the VAE's gradients do, so fixing the constant (`reg_on` gauge)
    cannot silence it: the gap g_t = E_neg - E_q, K_t = kl, and the tilt T_t = -(E_q + log_z), the
    estimate of E_q[log p_alpha(z) / p0(z)] = KL(q || p0) - KL(q || p_alpha) <= KL(q || p0) <= K_t (q the
    aggregate posterior, whose KL the per-sample KL bounds). With k_t = max(K_t, kl_floor), the run
    diverged at epoch t when any of:

    1. non-finite: loss, kl, energy_q, energy_neg, log_z or ebm_ml is NaN or infinite;
    2. gap: g_t > gap_ratio * k_t (the energy separates positives from negatives by more than the
       posterior's whole information about the data: the negatives no longer sample p_alpha);
    3. tilt: T_t > tilt_ratio * k_t: a well under the posterior deeper than any tilt of p0 towards it, one
       that p0's samples do not see (log_z from a batch of them is biased low, hence tilt_ratio > 1);
    4. drift: over the last `window` epochs T rose by more than max(drift_floor, K_t - K_{t-window})
       while K rose by at least the factor (1 + kl_growth): the well under the posterior deepens (eq. 10
       is blind to it, see `JointEnergySettings`) and the posterior follows it away from p0.
    A shift of the energy by a constant, however large, is never flagged. Rows without "log_z" (histories
    written before issue 25) skip 3 and 4.
    The epoch in the message is row["epoch"] when present, else the number of rows seen. On --resume,
    feed the manifest's history first so the window spans the restart.
    Calibration: the PolyMNIST drift of docs/results/ebm-joint.md (no L2 term; E at p0 samples about 0,
    so T_t = -E_q) replayed as recorded and with its mean level moved to 0 is flagged at epoch 3 (drift),
    the epoch at which the former raw-energy rules flagged the recorded run (tests/test_ebm_joint.py).
    Measured with those rules, which agree with these while E at p0's samples stays near 0: reg 0.01
    flagged at epoch 4; the default runs and the joint test never.
    """

    def __init__(
        self,
        tilt_ratio: float = 1.5,
        gap_ratio: float = 1.0,
        kl_floor: float = 10.0,
        window: int = 2,
        drift_floor: float = 5.0,
        kl_growth: float = 0.1,
    ):
        self.tilt_ratio, self.gap_ratio, self.kl_floor = tilt_ratio, gap_ratio, kl_floor
        self.window, self.drift_floor, self.kl_growth = window, drift_floor, kl_growth
        self.rows: list[dict] = []

    def update(self, row: dict) -> str | None:
        if "energy_q" not in row:
            return None
        keys = ("loss", "kl", "energy_q", "energy_neg", "ebm_ml") + (("log_z",) if "log_z" in row else ())
        r = {k: float(row.get(k, 0.0)) for k in keys}
        if "log_z" in r:
            r["tilt"] = -(r["energy_q"] + r["log_z"])
        self.rows.append(r)
        t = int(row.get("epoch", len(self.rows)))
        bad = [k for k in keys if not math.isfinite(r[k])]
        if bad:
            return self._say(t, f"non-finite {', '.join(bad)}")
        e_q, e_neg, kl = r["energy_q"], r["energy_neg"], r["kl"]
        k = max(kl, self.kl_floor)
        if e_neg - e_q > self.gap_ratio * k:
            return self._say(
                t, f"energy gap E_neg - E_q = {e_neg - e_q:.4g} beyond {self.gap_ratio:g} x KL(q||p0) {kl:.4g}"
            )
        if "tilt" not in r:
            return None
        tilt = r["tilt"]
        if tilt > self.tilt_ratio * k:
            return self._say(t, f"tilt -(E_q + log Z) = {tilt:.4g} beyond {self.tilt_ratio:g} x KL(q||p0) {kl:.4g}")
        if len(self.rows) > self.window and "tilt" in self.rows[-1 - self.window]:
            old = self.rows[-1 - self.window]
            deeper, rise = tilt - old["tilt"], kl - old["kl"]
            if deeper > max(self.drift_floor, rise) and kl >= (1 + self.kl_growth) * old["kl"] > 0:
                return self._say(
                    t,
                    f"drift: the tilt -(E_q + log Z) rose {deeper:.4g} ({old['tilt']:.4g} -> {tilt:.4g}) while "
                    f"KL(q||p0) rose {old['kl']:.4g} -> {kl:.4g} over {self.window} epochs",
                )
        return None

    @staticmethod
    def _say(t: int, what: str) -> str:
        return (
            f"the jointly trained energy prior diverged at epoch {t} ({what}); try a lower --ebm-feedback, "
            f"--ebm-reg-on energies (with --ebm-reg > 0) or a lower --ebm-lr; the last good checkpoint is kept"
        )
