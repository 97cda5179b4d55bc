"""The aggregate posterior of a frozen VAE as samples: what every fitted prior kind learns from.

    q(z) = 1/N sum_i q(z | X_i)     (q the model's fused posterior given all of tuple i's modalities;
                                     for fusion none the concatenated unimodal posteriors)

The VAE's experts are encoded once; every `sample(idx)` re-fuses the stored experts of those tuples
and draws fresh z ~ q(z | X_i), so every fusion (poe, moe, mopoe, none) is served by one code path.
A bank is anything with `n`, `dim`, `device` and `sample(idx)` (tests use a fixed set of latents).

Partially observed training data: positives come from the posterior of what each tuple observes
(q(z | X_{O_i})), except for fusion none (EB-MVAE), whose energy couples the unimodal latents and is
fitted on the complete tuples only, as the workshop paper trains it (said on stderr).
"""

from __future__ import annotations

import torch

from ..errors import MMVAEError


class ExpertBank:
    """The frozen unimodal experts q(z | x_m) of a whole data set: loc, scale of shape (M, N, d)."""

    @torch.no_grad()
    def __init__(self, model, data, device, batch_size: int = 500):
        self.model = model
        if data.present is not None and not model.fusion.spec.shared_latent:
            from ..console import log

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
