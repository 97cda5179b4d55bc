"""Character-level 1-D conv nets for short one-hot strings (B, L, V) (MoPoE reference, MNIST-SVHN-Text).

Reference (L = 8, V = 71, C = 2 * DIM_text): Conv1d(V, C, 1)-ReLU-Conv1d(C, C, 4, 2, 1)-ReLU-
Conv1d(C, C, 4, 2, 0)-ReLU -> (C,) features, then Linear heads; decoder Linear(latent, C)-(C, 1)-
ConvT1d(C, C, 4, 1, 0)-ReLU-ConvT1d(C, C, 4, 2, 1)-ReLU-Conv1d(C, V, 1) -> logits (B, L, V).
For other lengths we keep the pattern: stride-2 Conv1d(k4, p1) layers halve the length down to <= 4,
a last conv with kernel = the remaining length reaches length 1 (for L = 8 exactly the reference);
the decoder mirrors it (output padding restores odd lengths). C = 128 here.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import MMVAEError

CHANNELS = 128


def _lengths(n: int) -> list[int]:
    """Lengths after each Conv1d(k4, s2, p1) (n -> floor(n / 2)) until <= 4."""
    sizes = [n]
    while sizes[-1] > 4:
        sizes.append(sizes[-1] // 2)
    return sizes


class CharFeatures(nn.Module):
    """(B, L, V) one-hot -> (B, C) features."""

    def __init__(self, length: int, vocab: int, channels: int = CHANNELS):
        super().__init__()
        sizes = _lengths(length)
        layers: list[nn.Module] = [nn.Conv1d(vocab, channels, 1), nn.ReLU()]
        for _ in sizes[1:]:
            layers += [nn.Conv1d(channels, channels, 4, 2, 1), nn.ReLU()]
        layers += [nn.Conv1d(channels, channels, sizes[-1], 2, 0), nn.ReLU(), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.transpose(-2, -1))


class CharEncoder(nn.Module):
    """CharFeatures, then Linear(C, latent) heads for loc and raw scale."""

    def __init__(self, shape: tuple[int, int], latent: int, channels: int = CHANNELS):
        super().__init__()
        self.body = CharFeatures(shape[0], shape[1], channels)
        self.loc = nn.Linear(channels, latent)
        self.raw = nn.Linear(channels, latent)

    def forward(self, x):
        h = self.body(x)
        return self.loc(h), self.raw(h)


class CharDecoder(nn.Module):
    """Linear(latent, C)-(C, 1)-ConvT1d(C, C, l_k, 1, 0)-ReLU-[ConvT1d(C, C, 4, 2, 1, op)-ReLU]*-Conv1d(C, V, 1);
    logits (B, L, V) (the categorical likelihood applies log-softmax over V)."""

    def __init__(self, shape: tuple[int, int], latent: int, channels: int = CHANNELS):
        super().__init__()
        length, vocab = shape
        sizes = _lengths(length)
        layers: list[nn.Module] = [
            nn.Linear(latent, channels),
            nn.Unflatten(1, (channels, 1)),
            nn.ConvTranspose1d(channels, channels, sizes[-1], 1, 0),
            nn.ReLU(),
        ]
        for i in range(len(sizes) - 1, 0, -1):
            layers += [
                nn.ConvTranspose1d(channels, channels, 4, 2, 1, output_padding=sizes[i - 1] - 2 * sizes[i]),
                nn.ReLU(),
            ]
        layers.append(nn.Conv1d(channels, vocab, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z).transpose(-2, -1)


def build_char(shape: tuple[int, ...], latent: int, hidden: int) -> tuple[nn.Module, nn.Module]:
    """Arch char: CharEncoder/CharDecoder for one-hot strings (L, V) (`hidden` unused)."""
    if len(shape) != 2:
        raise MMVAEError(f"arch char needs one-hot strings (L, V), got {tuple(shape)}")
    return CharEncoder(tuple(shape), latent), CharDecoder(tuple(shape), latent)


class CharClassifier(nn.Module):
    """Coherence classifier for strings: CharFeatures-Dropout(.5)-Linear(C, 64)-ReLU-Linear(64, classes)."""

    def __init__(self, shape: tuple[int, int], n_classes: int, channels: int = 64):
        super().__init__()
        self.body = CharFeatures(shape[0], shape[1], channels)
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(channels, 64), nn.ReLU(), nn.Linear(64, n_classes))

    def forward(self, x: torch.Tensor):
        return self.head(self.body(x))
