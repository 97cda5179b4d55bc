"""Convolutional experts and decoders for small images."""

from __future__ import annotations

from torch import nn


class Conv28Encoder(nn.Module):
    """PolyMNIST reference encoder: Conv(C,32,3,2,1)-ReLU-Conv(32,64,3,2,1)-ReLU-Conv(64,128,3,2,1)-ReLU-
    Flatten(2048)-Linear(2048,512)-ReLU, then Linear(512, latent) heads for loc and raw scale."""

    def __init__(self, channels: int, latent: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(2048, 512), nn.ReLU())
        self.loc = nn.Linear(512, latent)
        self.raw = nn.Linear(512, latent)

    def forward(self, x):
        h = self.body(x)
        return self.loc(h), self.raw(h)


class Conv28Decoder(nn.Module):
    """PolyMNIST reference decoder: Linear(latent,2048)-ReLU-(128,4,4)-ConvT(128,64,3,2,1)-ReLU-
    ConvT(64,32,3,2,1,op1)-ReLU-ConvT(32,C,3,2,1,op1); no sigmoid (the Laplace mean is unbounded)."""

    def __init__(self, channels: int, latent: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent, 2048), nn.ReLU(), nn.Unflatten(1, (128, 4, 4)),
            nn.ConvTranspose2d(128, 64, 3, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 3, 2, 1, output_padding=1))

    def forward(self, z):
        return self.net(z)


class Conv32Encoder(nn.Module):
    """MMVAE SVHN encoder: Conv(C,32,4,2,1)-ReLU-Conv(32,64,4,2,1)-ReLU-Conv(64,128,4,2,1)-ReLU, then
    two Conv(128, latent, 4, 1, 0) heads (4x4 -> 1x1)."""

    def __init__(self, channels: int, latent: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU())
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
            nn.ConvTranspose2d(latent, 128, 4, 1, 0), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 4, 2, 1))

    def forward(self, z):
        return self.net(z)
