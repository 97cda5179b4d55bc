"""MLP experts and decoders for vectors and flattened images (the MMVAE MNIST net: 784-400-latent)."""

from __future__ import annotations

import math

from torch import nn


class MLPEncoder(nn.Module):
    """Flatten - Linear(n, hidden) - ReLU - Linear(hidden, hidden) - ReLU, then loc and raw heads."""

    def __init__(self, shape: tuple[int, ...], latent: int, hidden: int = 400):
        super().__init__()
        n = math.prod(shape)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.loc = nn.Linear(hidden, latent)
        self.raw = nn.Linear(hidden, latent)

    def forward(self, x):
        h = self.body(x)
        return self.loc(h), self.raw(h)


class MLPDecoder(nn.Module):
    """Linear(latent, hidden) - ReLU - Linear(hidden, hidden) - ReLU - Linear(hidden, n), reshaped to `shape`."""

    def __init__(self, shape: tuple[int, ...], latent: int, hidden: int = 400):
        super().__init__()
        n = math.prod(shape)
        self.net = nn.Sequential(
            nn.Linear(latent, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n),
            nn.Unflatten(1, tuple(shape)),
        )

    def forward(self, z):
        return self.net(z)


def build_mlp(shape: tuple[int, ...], latent: int, hidden: int) -> tuple[nn.Module, nn.Module]:
    """Arch mlp: MLPEncoder/MLPDecoder for data of any shape, `hidden` units per layer."""
    return MLPEncoder(tuple(shape), latent, hidden), MLPDecoder(tuple(shape), latent, hidden)
