"""gmm: a Gaussian mixture fitted to the aggregate posterior q(z) (ex-post density estimation).

    p(z) = sum_k w_k N(z; mu_k, Sigma_k)

fitted by scikit-learn's GaussianMixture (EM) to `draws` samples z ~ q(z | X_i) per training tuple,
stored as tensors (weights (K,), means (K, D), covariances (K, D, D), float64; diag, tied and
spherical fits are stored expanded to full), sampled and evaluated in torch: log_prob equals
scikit-learn's score_samples on the same points (tests/test_priors.py).
"""

from __future__ import annotations

import time

import torch
from torch import distributions as td

from ..config import GMMSettings
from ..errors import MMVAEError
from .base import LatentPrior


class GMMPrior(LatentPrior):
    kind = "gmm"
    help = "a Gaussian mixture fitted to the aggregate posterior"
    tractable = True
    fit_prior = True
    settings_sections = (GMMSettings,)

    def __init__(
        self, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor, settings: dict | None = None
    ):
        super().__init__()
        K, D = means.shape
        if weights.shape != (K,) or covariances.shape != (K, D, D):
            raise MMVAEError(
                f"gmm prior: inconsistent shapes weights {tuple(weights.shape)}, means {(K, D)}, "
                f"covariances {tuple(covariances.shape)}"
            )
        self.register_buffer("weights", weights.double())
        self.register_buffer("means", means.double())
        self.register_buffer("covariances", covariances.double())
        self.register_buffer("scale_tril", torch.linalg.cholesky(self.covariances), persistent=False)
        self.settings = dict(settings or {})

    def dist(self) -> td.Distribution:
        return td.MixtureSameFamily(
            td.Categorical(probs=self.weights),
            td.MultivariateNormal(self.means, scale_tril=self.scale_tril),
            validate_args=False,
        )

    @torch.no_grad()
    def sample(self, n: int, **options) -> torch.Tensor:
        """k ~ Categorical(w), z = mu_k + L_k eps, one component at a time: memory O(n D), where
        MixtureSameFamily would draw from every component and broadcast L to (n, K, D, D)."""
        self.check_options(options)
        comp = torch.multinomial(self.weights, n, replacement=True)
        z = torch.empty(n, self.means.shape[1], dtype=self.means.dtype, device=self.means.device)
        for k in comp.unique().tolist():
            idx = (comp == k).nonzero().squeeze(1)
            eps = torch.randn(len(idx), z.shape[1], dtype=z.dtype, device=z.device)
            z[idx] = self.means[k] + eps @ self.scale_tril[k].T
        return z.float()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.dist().log_prob(z.double()).to(z.dtype)

    def noise(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """u ~ N(0, I), c ~ Categorical(w): z = mu_c + L_c u."""
        c = torch.multinomial(self.weights, n, replacement=True)
        return torch.randn(n, self.means.shape[1], device=self.means.device), c

    def push(self, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """z = mu_c + L_c u, one component at a time (memory O(n D)); differentiable in u."""
        order = torch.argsort(c)
        ks, counts = torch.unique_consecutive(c[order], return_counts=True)
        parts = [
            self.means[k].to(u.dtype) + part @ self.scale_tril[k].to(u.dtype).T
            for k, part in zip(ks.tolist(), u[order].split(counts.tolist()))
        ]
        return torch.cat(parts)[torch.argsort(order)]

    def to_json(self) -> dict:
        return {"components": int(self.weights.numel()), "dim": int(self.means.shape[1]), **self.settings}

    @classmethod
    def from_stored(cls, settings: dict, tensors: dict[str, torch.Tensor]) -> GMMPrior:
        try:
            return cls(
                tensors["weights"],
                tensors["means"],
                tensors["covariances"],
                {k: v for k, v in settings.items() if k not in ("components", "dim")},
            )
        except KeyError as e:
            raise MMVAEError(f"gmm prior: missing tensor {e}") from None

    @classmethod
    def from_sklearn(cls, gm, settings: dict | None = None) -> GMMPrior:
        """From a fitted sklearn.mixture.GaussianMixture (any covariance_type)."""
        w, mu = torch.as_tensor(gm.weights_), torch.as_tensor(gm.means_)
        K, D = mu.shape
        c = torch.as_tensor(gm.covariances_)
        cov = {
            "full": lambda: c,
            "tied": lambda: c.expand(K, D, D).clone(),
            "diag": lambda: torch.diag_embed(c),
            "spherical": lambda: c[:, None, None] * torch.eye(D, dtype=c.dtype),
        }[gm.covariance_type]()
        return cls(w, mu, cov, settings)

    @classmethod
    def check_fit(cls, s: GMMSettings, common, n_tuples: int) -> None:
        if s.components > n_tuples * common.draws:
            raise MMVAEError(
                f"--components {s.components}: more components than posterior samples "
                f"({n_tuples * common.draws}); lower it or raise --draws"
            )

    @classmethod
    def fit(cls, bank, common, s: GMMSettings, run=None, resume: bool = False, step_delay: float = 0.0):
        from sklearn.mixture import GaussianMixture

        torch.manual_seed(common.seed)
        t0 = time.time()
        z = torch.cat([bank.sample(torch.arange(bank.n)) for _ in range(common.draws)]).double().cpu().numpy()
        if len(z) < s.components:
            raise MMVAEError(
                f"--components {s.components}: more components than samples ({len(z)}); lower it or raise --draws"
            )
        gm = GaussianMixture(
            s.components,
            covariance_type=s.covariance,
            max_iter=s.max_iter,
            reg_covar=s.reg_covar,
            n_init=s.n_init,
            random_state=common.seed,
        )
        try:
            gm.fit(z)
        except ValueError as e:
            raise MMVAEError(
                f"gmm fit failed: {str(e).splitlines()[0]}; try --reg-covar larger or fewer --components"
            ) from None
        prior = cls.from_sklearn(gm, {"covariance_type": s.covariance})
        stats = {
            "samples": len(z),
            "converged": bool(gm.converged_),
            "em_iterations": int(gm.n_iter_),
            "lower_bound": float(gm.lower_bound_),
            "seconds": round(time.time() - t0, 2),
        }
        if run is not None:
            run.end_epoch(
                {
                    "epoch": 1,
                    "log_lik": stats["lower_bound"],
                    "em_iterations": stats["em_iterations"],
                    "seconds": stats["seconds"],
                },
                1,
                prefix="fit-prior gmm",
            )
        return prior, stats
