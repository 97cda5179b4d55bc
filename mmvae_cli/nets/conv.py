"""Convolutional experts and decoders for small images."""

from __future__ import annotations

from torch import nn

from ..errors import MMVAEError


class Conv32Encoder(nn.Module):
    """MMVAE SVHN encoder: Conv(C,32,4,2,1)-ReLU-Conv(32,64,4,2,1)-ReLU-Conv(64,128,4,2,1)-ReLU, then
    two Conv(128, latent, 4, 1, 0) heads (4x4 -> 1x1)."""

    def __init__(self, channels: int, latent: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1),
            nn.ReLU(),
        )
        self.loc = nn.Conv2d(128, latent, 4, 1, 0)
        self.raw = nn.Conv2d(128, latent, 4, 1, 0)

    def forward(self, x):
        h = self.body(x)
        return self.loc(h).flatten(1), self.raw(h).flatten(1)


class Conv32Decoder(nn.Module):
    """MMVAE SVHN decoder: ConvT(latent,128,4,1,0)-ReLU-ConvT(128,64,4,2,1)-ReLU-ConvT(64,32,4,2,1)-ReLU-
    ConvT(32,C,4,2,1)."""

    def __init__(self, channels: int, latent: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Unflatten(1, (latent, 1, 1)),
            nn.ConvTranspose2d(latent, 128, 4, 1, 0),
            nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 4, 2, 1),
        )

    def forward(self, z):
        return self.net(z)


def _downsampled_sizes(h: int, w: int, max_layers: int = 4) -> list[tuple[int, int]]:
    """Spatial sizes after each Conv(k3, s2, p1), which maps n -> ceil(n / 2); stops at 4x4 or below."""
    sizes = [(h, w)]
    while len(sizes) <= max_layers and min(sizes[-1]) > 4:
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return sizes


class ConvEncoder(nn.Module):
    """Conv net sized to any (C, H, W): Conv(k3, s2, p1)-ReLU layers with 32, 64, 128, 256 channels until the
    feature map is 4x4 or smaller (at most 4 layers), Flatten-Linear(., 512)-ReLU, then loc and raw heads."""

    def __init__(self, shape: tuple[int, int, int], latent: int):
        super().__init__()
        c, h, w = shape
        sizes = _downsampled_sizes(h, w)
        chans = [c] + [32 * 2**i for i in range(len(sizes) - 1)]
        layers = []
        for a, b in zip(chans, chans[1:]):
            layers += [nn.Conv2d(a, b, 3, 2, 1), nn.ReLU()]
        flat = chans[-1] * sizes[-1][0] * sizes[-1][1]
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, 512), nn.ReLU())
        self.loc = nn.Linear(512, latent)
        self.raw = nn.Linear(512, latent)

    def forward(self, x):
        h = self.body(x)
        return self.loc(h), self.raw(h)


class ConvDecoder(nn.Module):
    """Mirror of ConvEncoder: Linear(latent, .)-ReLU-reshape, then ConvT(k3, s2, p1) layers whose output
    padding restores each encoder size exactly (2n - 1 + op = previous size); no final activation."""

    def __init__(self, shape: tuple[int, int, int], latent: int):
        super().__init__()
        c, h, w = shape
        sizes = _downsampled_sizes(h, w)
        chans = [c] + [32 * 2**i for i in range(len(sizes) - 1)]
        layers: list[nn.Module] = [
            nn.Linear(latent, chans[-1] * sizes[-1][0] * sizes[-1][1]),
            nn.ReLU(),
            nn.Unflatten(1, (chans[-1], *sizes[-1])),
        ]
        for i in range(len(sizes) - 1, 0, -1):
            (hi, wi), (ho, wo) = sizes[i], sizes[i - 1]
            layers.append(
                nn.ConvTranspose2d(
                    chans[i], chans[i - 1], 3, 2, 1, output_padding=(ho - (2 * hi - 1), wo - (2 * wi - 1))
                )
            )
            if i > 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


class Conv28Encoder(ConvEncoder):
    """PolyMNIST reference encoder: Conv(C,32,3,2,1)-ReLU-Conv(32,64,3,2,1)-ReLU-Conv(64,128,3,2,1)-ReLU-
    Flatten(2048)-Linear(2048,512)-ReLU, then Linear(512, latent) heads for loc and raw scale; this is
    exactly ConvEncoder sized to (C, 28, 28)."""

    def __init__(self, channels: int, latent: int):
        super().__init__((channels, 28, 28), latent)


class Conv28Decoder(ConvDecoder):
    """PolyMNIST reference decoder: Linear(latent,2048)-ReLU-(128,4,4)-ConvT(128,64,3,2,1)-ReLU-
    ConvT(64,32,3,2,1,op1)-ReLU-ConvT(32,C,3,2,1,op1); no sigmoid (the Laplace mean is unbounded); this is
    exactly ConvDecoder sized to (C, 28, 28)."""

    def __init__(self, channels: int, latent: int):
        super().__init__((channels, 28, 28), latent)


def build_conv28(shape: tuple[int, ...], latent: int, hidden: int) -> tuple[nn.Module, nn.Module]:
    """Arch conv28: the PolyMNIST reference nets for (C, 28, 28) images (`hidden` unused)."""
    if len(shape) != 3 or tuple(shape[1:]) != (28, 28):
        raise MMVAEError(f"arch conv28 needs (C, 28, 28) data, got {tuple(shape)}")
    return Conv28Encoder(shape[0], latent), Conv28Decoder(shape[0], latent)


def build_conv32(shape: tuple[int, ...], latent: int, hidden: int) -> tuple[nn.Module, nn.Module]:
    """Arch conv32: the MMVAE SVHN nets for (C, 32, 32) images (`hidden` unused)."""
    if len(shape) != 3 or tuple(shape[1:]) != (32, 32):
        raise MMVAEError(f"arch conv32 needs (C, 32, 32) data, got {tuple(shape)}")
    return Conv32Encoder(shape[0], latent), Conv32Decoder(shape[0], latent)


def build_conv(shape: tuple[int, ...], latent: int, hidden: int) -> tuple[nn.Module, nn.Module]:
    """Arch conv: ConvEncoder/ConvDecoder sized to any (C, H, W) (`hidden` unused)."""
    if len(shape) != 3:
        raise MMVAEError(f"arch conv needs (C, H, W) data, got {tuple(shape)}")
    return ConvEncoder(tuple(shape), latent), ConvDecoder(tuple(shape), latent)
