"""flow: a normalising flow fitted to the aggregate posterior q(z) by maximum likelihood.

    z = shift + scale * u,   u = T^-1(eps),  eps ~ N(0, I)
    log p(z) = log p_T(u) - sum_d log scale_d

T is zuko's MAF (affine masked autoregressive transforms) or NSF (monotonic rational-quadratic
splines), each transform a MADE with `flow_layers` hidden layers of `flow_hidden` units; shift and
scale standardise the latents (the first epoch's draws' mean and standard deviation). Trained with
Adam on fresh draws z ~ q(z | X_i) every batch (minibatches of training tuples, as fit-ebm), under
the run lifecycle (checkpoint after every epoch; SIGTERM/SIGUSR1 -> checkpoint -> exit 75; --resume
is bit-identical). Stored as prior-flow.safetensors (the flow's state dict, shift, scale) with its
constructor settings in the manifest. Sampling an autoregressive flow inverts one dimension per
MADE pass: D passes per transform.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch

from ..config import FlowSettings
from ..errors import MMVAEError, NumericalError
from .base import LatentPrior


def build_flow(dim: int, flow: str, transforms: int, hidden: int, layers: int):
    import zuko

    cls = {"maf": zuko.flows.MAF, "nsf": zuko.flows.NSF}.get(flow)
    if cls is None:
        raise MMVAEError(f"unknown flow {flow!r}; choose maf or nsf")
    return cls(dim, transforms=transforms, hidden_features=(hidden,) * layers)


class FlowPrior(LatentPrior):
    kind = "flow"
    help = "a normalising flow (MAF/NSF) fitted to the aggregate posterior"
    tractable = True
    fit_prior = True
    settings_sections = (FlowSettings,)

    def __init__(self, dim: int, flow: str = "maf", transforms: int = 3, hidden: int = 128, layers: int = 2):
        super().__init__()
        self.config = {
            "dim": int(dim),
            "flow": flow,
            "transforms": int(transforms),
            "hidden": int(hidden),
            "layers": int(layers),
        }
        self.flow = build_flow(dim, flow, transforms, hidden, layers)
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    @torch.no_grad()
    def sample(self, n: int, **options) -> torch.Tensor:
        self.check_options(options)
        return self.shift + self.scale * self.flow().sample((n,))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow().log_prob((z - self.shift) / self.scale) - self.scale.log().sum()

    def to_json(self) -> dict:
        return dict(self.config)

    @classmethod
    def from_stored(cls, settings: dict, tensors: dict[str, torch.Tensor]) -> FlowPrior:
        try:
            prior = cls(
                settings["dim"], settings["flow"], settings["transforms"], settings["hidden"], settings["layers"]
            )
        except (KeyError, TypeError) as e:
            raise MMVAEError(f"flow prior: invalid settings ({e})") from None
        from ..bundle import load_state

        load_state(prior, tensors, "prior-flow.safetensors")
        return prior.eval()

    @classmethod
    def fit(cls, bank, common, s: FlowSettings, run=None, resume: bool = False, step_delay: float = 0.0):
        """Adam on -mean log p(z) over minibatches of fresh aggregate-posterior draws; (prior, stats)."""

        torch.manual_seed(common.seed)
        dev = bank.device
        prior = cls(bank.dim, s.flow, s.transforms, s.flow_hidden, s.flow_layers).to(dev)
        opt = torch.optim.Adam(prior.flow.parameters(), lr=s.lr)
        g = torch.Generator().manual_seed(common.seed)
        history, perm, first_epoch, first_start, total, batches = [], None, 0, 0, 0.0, 0
        if resume:
            tensors, state = run.restore_fit("prior", prior, opt, g, common.seed)
            first_epoch, first_start = int(state["epoch"]), int(state["start"])
            history, total, batches = list(state["history"]), float(state["total"]), int(state["batches"])
            perm = tensors.get("fit.perm") if first_start else None
        else:  # standardise by one draw of the aggregate posterior
            with torch.no_grad():
                z = bank.sample(torch.arange(bank.n))
                prior.shift.copy_(z.mean(0))
                prior.scale.copy_(z.std(0).clamp_min(1e-3) if len(z) > 1 else torch.ones_like(z[0]))

        def save(epoch: int, start: int) -> None:
            if run is None:
                return
            state = {"epoch": epoch, "start": start, "total": total, "batches": batches, "history": history}
            run.checkpoint_fit("prior", prior, opt, g, state, perm if start else None)

        with run.session() if run is not None else nullcontext():
            for epoch in range(first_epoch, s.epochs):
                t0 = time.time()
                start0 = first_start if (epoch == first_epoch and perm is not None) else 0
                if not start0:
                    perm = torch.randperm(bank.n, generator=g)
                    total, batches = 0.0, 0
                for start in range(start0, bank.n, s.batch_size):
                    idx = perm[start : start + s.batch_size]
                    z = bank.sample(idx.to(dev))
                    loss = -prior.log_prob(z).mean()
                    if not torch.isfinite(loss):
                        raise NumericalError(
                            f"fit-prior flow: the loss became {loss.item()} at epoch {epoch + 1}; "
                            f"try a smaller --lr (now {s.lr:g})"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += loss.item()
                    batches += 1
                    if step_delay:
                        time.sleep(step_delay)
                    if run is not None and run.stop_requested():
                        save(epoch, start + s.batch_size)
                        run.interrupted("continue with the same command and --resume")
                row = {"epoch": epoch + 1, "nll": total / max(batches, 1), "seconds": round(time.time() - t0, 2)}
                history.append(row)
                if run is not None:
                    run.end_epoch(row, s.epochs, prefix="fit-prior flow epoch")
                save(epoch + 1, 0)
        prior.eval()
        for p in prior.parameters():
            p.requires_grad_(False)
        nll = [h["nll"] for h in history]
        stats = {
            "history": history,
            "nll_first": nll[0] if nll else math.nan,
            "nll_last": nll[-1] if nll else math.nan,
            "epochs": len(history),
            "seconds": round(sum(h["seconds"] for h in history), 2),
        }
        return prior, stats
