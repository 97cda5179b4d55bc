"""JMVAE's joint encoder q(z | x_1, ..., x_M), built as MultiVae builds its default one.

Each modality gets an encoder of its own architecture with its own weights (not shared with the unimodal
experts q(z | x_m)), whose loc head gives an embedding e_m of the latent's size; then

    h = ReLU(W2 ReLU(W1 [e_1, ..., e_M])),   loc = W_loc h,   raw = W_raw h

(two hidden layers of `hidden` units, ModelSettings.joint_hidden), raw the posterior family's scale parameter.
"""

from __future__ import annotations

import torch
from torch import nn


class JointHead(nn.Module):
    """[e_1, ..., e_M] -> (loc, raw) through two ReLU layers."""

    def __init__(self, n_in: int, latent: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.loc = nn.Linear(hidden, latent)
        self.raw = nn.Linear(hidden, latent)

    def forward(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(e)
        return self.loc(h), self.raw(h)


class JointEncoder(nn.Module):
    """The M embedding encoders (`encoders`, by modality) and the head joining them (`head`)."""

    def __init__(self, encoders: dict[str, nn.Module], latent: int, hidden: int):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.head = JointHead(len(encoders) * latent, latent, hidden)
