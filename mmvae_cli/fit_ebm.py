"""Post-hoc energies for a frozen multimodal VAE (`mmvae fit-ebm`).

Positives are samples of the aggregate posterior over the training set,
    z ~ q(z) = 1/N sum_i q(z | X_i)        (q the model's fused posterior given all modalities;
                                            for fusion none the concatenated unimodal posteriors),
and the energy is fitted to them by one of

  ml         maximum likelihood for the tilted prior p_alpha(z) ∝ exp(-E(z)) p0(z) (Yuan et al. eq. 10):
             loss = mean E(z_pos) - mean E(z_neg), z_neg by short-run Langevin from p0 (eq. 11), or
             continued from the previous batch's chains (persistent);
  exact | sliced | denoising
             score matching for the Gibbs density p(z) ∝ exp(-E(z)) (EB-MVAE eq. 1), see
             ebm.score_matching_loss;
  ncsn       a noise-conditional energy E(u, sigma) by multi-scale denoising score matching over
             geometric levels sigma_max..sigma_min (Song & Ermon 2019, ebm.ncsn_loss), sampled by
             annealed Langevin (ebm.annealed_langevin). Defaults: sigma_max the largest
             per-dimension spread of the aggregate posterior, sigma_min the median posterior std
             (both in the energy's coordinates: standardised by default, see EnergyNet).

The VAE's experts are encoded once (the VAE is frozen); every batch re-fuses the stored experts and
draws fresh posterior samples, so every fusion (poe, moe, mopoe, none) is served by one code path.

Partially observed training data: positives come from the posterior of what each tuple observes
(q(z | X_{O_i})), except for fusion none (EB-MVAE), whose energy couples the unimodal latents and is
fitted on the complete tuples only, as the workshop paper trains it (said on stderr).
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from .config import FitSettings
from .data.base import MultimodalData
from .ebm import EnergyConfig, LatentEBM, geometric_sigmas, maximum_likelihood_loss, ncsn_loss, score_matching_loss
from .errors import MMVAEError, NumericalError
from .model import MultimodalVAE
from .run import Run

OBJECTIVES = ("ml", "exact", "sliced", "denoising", "ncsn")
EXACT_MAX_DIM = 128  # exact score matching costs one backward pass per latent dimension


class ExpertBank:
    """The frozen unimodal experts q(z | x_m) of a whole data set: loc, scale of shape (M, N, d)."""

    @torch.no_grad()
    def __init__(self, model: MultimodalVAE, data: MultimodalData, device, batch_size: int = 500):
        self.model = model
        if data.present is not None and model.config.fusion == "none":
            from .console import log

            complete = data.complete()
            log(
                f"EB-MVAE (fusion none): the joint prior is fitted on the {len(complete)} complete tuples of "
                f"{len(data)} (the workshop paper trains its energy on complete tuples only)"
            )
            if len(complete) == 0:
                raise MMVAEError("fusion none: no complete training tuple to fit the joint prior on")
            data = complete
        locs, scales, present = [], [], []
        for start in range(0, len(data), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(data)))
            p = data.presence(idx, model.names, device)
            e = model.experts(data.batch(idx, device), p)
            locs.append(e.loc)
            scales.append(e.scale)
            if p is not None:
                present.append(p)
        self.loc, self.scale = torch.cat(locs, 1), torch.cat(scales, 1)
        self.present = torch.cat(present) if present else None  # (N, M) or None
        self.kind = type(e)
        self.n, self.dim, self.device = self.loc.shape[1], model.z_dim, self.loc.device

    @torch.no_grad()
    def sample(self, idx: torch.Tensor) -> torch.Tensor:
        """One z ~ q(z | X_{O_i}) for each index i (all modalities given; O_i what tuple i observes). (len(idx), D)"""
        m = self.model
        experts = self.kind(self.loc[:, idx], self.scale[:, idx])
        given = torch.ones(len(m.names), dtype=torch.bool)
        present = None if self.present is None else self.present[idx]
        return m.fusion.combine(experts, given, m.prior.dist(), present).sample()


def check_objective(objective: str, dim: int) -> None:
    if objective not in OBJECTIVES:
        raise MMVAEError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if objective == "exact" and dim > EXACT_MAX_DIM:
        raise MMVAEError(
            f"--objective exact takes one backward pass per latent dimension and this latent has "
            f"{dim} (limit {EXACT_MAX_DIM}); use --objective sliced or denoising"
        )


def fit_energy(
    model: MultimodalVAE,
    data: MultimodalData,
    energy: EnergyConfig,
    s: FitSettings,
    langevin: dict,
    device,
    run: Run | None = None,
    resume: bool = False,
    step_delay: float = 0.0,
) -> tuple[LatentEBM, list[dict]]:
    """Fit a LatentEBM to `model`'s aggregate posterior on `data` (settings `s` with their
    objective-dependent defaults resolved); the model itself is not changed (its parameters are
    frozen here) and the energy is attached to it when this returns.

    Returns (ebm, history) with one history row per epoch: mean loss, and for ml the mean energies
    of positives and negatives. Raises NumericalError on a non-finite loss or a diverging chain.
    With `run` (the run lifecycle): a checkpoint after every epoch and, on SIGTERM/SIGUSR1, after
    the current step before exit code 75; `resume` continues from that checkpoint with the same
    result as an uninterrupted fit; each epoch is logged (stderr, jsonl, TensorBoard)."""
    check_objective(s.objective, model.z_dim)
    torch.manual_seed(s.seed)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    bank = ExpertBank(model, data, device)
    density = "tilted" if s.objective == "ml" else "gibbs"
    ebm = LatentEBM(energy, density).to(device)
    if density == "gibbs" and not resume:  # Gibbs chains start at the latents' moment-matched Gaussian
        z = bank.sample(torch.arange(bank.n))
        ebm.init_loc.copy_(z.mean(0))
        ebm.init_scale.copy_(z.std(0).clamp_min(1e-3))
        net = ebm.energy
        if net.config.standardise:
            net.shift.copy_(ebm.init_loc)
            net.scale.copy_(ebm.init_scale)
        if net.noise_conditional:
            net.sigmas.copy_(noise_levels(bank, ebm, s).to(net.sigmas))
    model.attach_ebm(ebm, langevin)
    opt = torch.optim.Adam(ebm.energy.parameters(), lr=s.lr, betas=tuple(s.betas))
    g = torch.Generator().manual_seed(s.seed)
    history, chains, perm = [], None, None
    first_epoch, first_start, sums, batches = 0, 0, {}, 0
    if resume:
        tensors, state = run.restore_fit("ebm", ebm, opt, g, s.seed)
        first_epoch, first_start = int(state["epoch"]), int(state["start"])
        history, sums, batches = list(state["history"]), dict(state["sums"]), int(state["batches"])
        perm = tensors.get("fit.perm") if first_start else None
        chains = tensors["fit.chains"].to(device) if "fit.chains" in tensors else None

    def save(epoch: int, start: int) -> None:
        if run is None:
            return
        state = {"epoch": epoch, "start": start, "sums": sums, "batches": batches, "history": history}
        run.checkpoint_fit(
            "ebm", ebm, opt, g, state, perm if start else None, {"fit.chains": chains} if chains is not None else None
        )

    with run.session() if run is not None else nullcontext():
        for epoch in range(first_epoch, s.epochs):
            t0 = time.time()
            start0 = first_start if (epoch == first_epoch and perm is not None) else 0
            if not start0:
                perm = torch.randperm(bank.n, generator=g)
                sums, batches = {"loss": 0.0, "e_pos": 0.0, "e_neg": 0.0}, 0
            for start in range(start0, bank.n, s.batch_size):
                idx = perm[start : start + s.batch_size]
                if len(idx) >= 2:
                    z_pos = bank.sample(idx.to(bank.loc.device))
                    if s.objective == "ml":
                        start_z = (
                            chains[: len(idx)]
                            if (s.persistent and chains is not None and len(chains) >= len(idx))
                            else model.ebm_start(len(idx))
                        )
                        z_neg = model.run_langevin(start_z, denoise=0.0).z  # the chains' states, no Tweedie step
                        if s.persistent:
                            chains = z_neg
                        loss = maximum_likelihood_loss(ebm.energy, z_pos, z_neg, s.reg)
                        with torch.no_grad():
                            sums["e_pos"] += ebm.energy(z_pos).mean().item()
                            sums["e_neg"] += ebm.energy(z_neg).mean().item()
                    elif s.objective == "ncsn":
                        net = ebm.energy
                        loss = ncsn_loss(net.energy_u, net.to_u(z_pos).repeat(s.projections, 1), net.sigmas)
                    else:
                        loss = score_matching_loss(ebm.energy, z_pos, s.objective, s.sigma, s.projections)
                    if not torch.isfinite(loss):
                        raise NumericalError(
                            f"fit-ebm loss became {loss.item()} at epoch {epoch + 1}; "
                            f"try a smaller --lr (now {s.lr:g})" + (" or --step-size" if s.objective == "ml" else "")
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sums["loss"] += loss.item()
                    batches += 1
                if step_delay:
                    time.sleep(step_delay)
                if run is not None and run.stop_requested():
                    save(epoch, start + s.batch_size)
                    run.interrupted("continue with the same command and --resume")
            row = {"epoch": epoch + 1, "loss": sums["loss"] / max(batches, 1)}
            if s.objective == "ml":
                row.update(e_pos=sums["e_pos"] / max(batches, 1), e_neg=sums["e_neg"] / max(batches, 1))
            row["seconds"] = round(time.time() - t0, 2)
            history.append(row)
            if run is not None:
                run.end_epoch(row, s.epochs, prefix="fit-ebm epoch")
            save(epoch + 1, 0)
    ebm.eval()
    for p in ebm.parameters():
        p.requires_grad_(False)
    return ebm, history


def noise_levels(bank: ExpertBank, ebm: LatentEBM, s: FitSettings) -> torch.Tensor:
    """ncsn's levels in the energy's coordinates: geometric from sigma_max (default: the largest
    per-dimension std of the aggregate posterior) to sigma_min (default: the median std of the unimodal
    posteriors, i.e. their scale parameter; for a shared latent the experts', not the fused one's)."""
    net = ebm.energy
    unit = net.scale if net.config.standardise else torch.ones_like(ebm.init_scale)
    spread = ebm.init_scale / unit
    M, N, d = bank.scale.shape
    post = bank.scale.permute(1, 0, 2).reshape(N, M * d) if M * d == bank.dim else bank.scale.reshape(-1, d)
    smax = s.sigma_max if s.sigma_max is not None else float(spread.max())
    smin = s.sigma_min if s.sigma_min is not None else float((post / unit).median())
    if s.sigma_min is None and smin > smax:  # posteriors wider than the aggregate: an untrained VAE
        from .console import log

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
