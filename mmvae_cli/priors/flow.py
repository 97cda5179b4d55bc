"""flow: a normalising flow fitted to the aggregate posterior q(z) by maximum likelihood.

    z = shift + scale * u,   u = T^-1(eps),  eps ~ N(0, I)
    log p(z) = log p_T(u) - sum_d log scale_d

T is zuko's MAF (affine masked autoregressive transforms) or NSF (monotonic rational-quadratic
splines), each transform a MADE with `flow_layers` hidden layers of `flow_hidden` units; shift and
scale standardise the latents (the first epoch's draws' mean and standard deviation). Trained with
Adam on fresh draws z ~ q(z | X_i) every batch (minibatches of training tuples, as fit-ebm) by
loop.FitLoop (checkpoint after every epoch; SIGTERM/SIGUSR1 -> checkpoint -> exit 75; --resume is
bit-identical). Stored as prior-flow.safetensors (the flow's state dict, shift, scale) with its
constructor settings in the manifest. Sampling an autoregressive flow inverts one dimension per
MADE pass: D passes per transform.
"""

from __future__ import annotations

import math

import torch

from ..config import FlowSettings
from ..errors import MMVAEError
from ..loop import FitLoop
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

    def noise(self, n: int) -> tuple[torch.Tensor, None]:
        """u ~ N(0, I): z = shift + scale * T^-1(u)."""
        return torch.randn(n, self.config["dim"], device=self.shift.device), None

    def push(self, u: torch.Tensor, c: None = None) -> torch.Tensor:
        return self.shift + self.scale * self.flow().transform.inv(u)

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
        prior = cls(bank.dim, s.flow, s.transforms, s.flow_hidden, s.flow_layers).to(bank.device)
        loop = _FlowFit(run, prior, bank, s, common.seed, step_delay)
        if resume:
            loop.resume()
        else:  # standardise by one draw of the aggregate posterior
            with torch.no_grad():
                z = bank.sample(torch.arange(bank.n))
                prior.shift.copy_(z.mean(0))
                prior.scale.copy_(z.std(0).clamp_min(1e-3) if len(z) > 1 else torch.ones_like(z[0]))
        loop.fit()
        prior.eval()
        for p in prior.parameters():
            p.requires_grad_(False)
        history = loop.history
        nll = [h["nll"] for h in history]
        stats = {
            "history": history,
            "nll_first": nll[0] if nll else math.nan,
            "nll_last": nll[-1] if nll else math.nan,
            "epochs": len(history),
            "seconds": round(sum(h["seconds"] for h in history), 2),
        }
        return prior, stats


class _FlowFit(FitLoop):
    """FlowPrior.fit's step: the batch's negative log-likelihood -mean log p(z), z ~ q(z | X_i)."""

    def __init__(self, run, prior: FlowPrior, bank, s: FlowSettings, seed: int, step_delay: float):
        opt = torch.optim.Adam(prior.flow.parameters(), lr=s.lr)
        super().__init__(run, prior, opt, bank, s, seed=seed, what="fit-prior flow epoch", step_delay=step_delay)
        self.lr = s.lr

    def forward(self, epoch: int, step: int, idx: torch.Tensor):
        loss = -self.module.log_prob(self.bank.sample(idx.to(self.bank.device))).mean()
        return loss, {"nll": loss.item()}, 1

    def restore(self):
        epoch, step, sums, batches = super().restore()
        if "total" in self.run.manifest[self.run.state_key]:  # a checkpoint from before FitLoop
            sums = {"nll": float(self.run.manifest[self.run.state_key]["total"])}
        return epoch, step, sums, batches

    def diverged(self, loss, epoch: int, step: int) -> str:
        return (
            f"fit-prior flow: the loss became {loss.item()} at epoch {epoch + 1}; try a smaller --lr (now {self.lr:g})"
        )
