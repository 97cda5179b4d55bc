"""Encoders and decoders by data shape.

An encoder maps x_m to two heads (loc, raw) of size `out_dim` (the shared latent,
plus the private latent for MMVAE+); a decoder maps a latent of size `in_dim` to
the likelihood's parameter with x_m's shape. Decoders accept any leading batch
dimensions (S, K, B, D) and flatten them for the convolution.

`build(arch, shape, out_dim)` picks by name (the default for a shape is the modality kind's,
see modalities/):
  mlp:    an MLP for vectors (D,) and for MNIST-shaped (1, 28, 28) images (the MMVAE MNIST net,
          400 hidden units; ours has two hidden layers where the reference has one)
  conv28: the PolyMNIST reference nets for other (C, 28, 28) images
  conv32: the MMVAE SVHN nets for (C, 32, 32)
  conv:   a conv net sized to any other (C, H, W) (stride-2 convs down to 4x4, mirrored decoder)
  char:   the MoPoE reference character-level 1-D convs for one-hot strings (L, V) (text.py)
  words:  the MMVAE reference CUB sentence nets for one-hot captions (L, V), L divisible by 8 (words.py)
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import MMVAEError
from .conv import Conv28Decoder, Conv28Encoder, Conv32Decoder, Conv32Encoder, ConvDecoder, ConvEncoder
from .mlp import MLPDecoder, MLPEncoder
from .text import CharDecoder, CharEncoder
from .words import WordDecoder, WordEncoder

ARCHS = ("conv28", "conv32", "conv", "mlp", "char", "words")


def build(arch: str, shape: tuple[int, ...], latent: int, hidden: int = 400) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) for data of `shape` and a latent of size `latent`."""
    shape = tuple(shape)
    if arch == "conv28":
        if len(shape) != 3 or shape[1:] != (28, 28):
            raise MMVAEError(f"arch conv28 needs (C, 28, 28) data, got {shape}")
        return Conv28Encoder(shape[0], latent), Conv28Decoder(shape[0], latent)
    if arch == "conv32":
        if len(shape) != 3 or shape[1:] != (32, 32):
            raise MMVAEError(f"arch conv32 needs (C, 32, 32) data, got {shape}")
        return Conv32Encoder(shape[0], latent), Conv32Decoder(shape[0], latent)
    if arch == "conv":
        if len(shape) != 3:
            raise MMVAEError(f"arch conv needs (C, H, W) data, got {shape}")
        return ConvEncoder(shape, latent), ConvDecoder(shape, latent)
    if arch == "char":
        if len(shape) != 2:
            raise MMVAEError(f"arch char needs one-hot strings (L, V), got {shape}")
        return CharEncoder(shape, latent), CharDecoder(shape, latent)
    if arch == "words":
        if len(shape) != 2:
            raise MMVAEError(f"arch words needs one-hot captions (L, V), got {shape}")
        return WordEncoder(shape, latent), WordDecoder(shape, latent)
    if arch == "mlp":
        return MLPEncoder(shape, latent, hidden), MLPDecoder(shape, latent, hidden)
    raise MMVAEError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")


def apply_flat(net: nn.Module, z: torch.Tensor, n_in: int) -> torch.Tensor:
    """Run `net` on z with arbitrary leading dims: (..., n_in) -> (..., *out)."""
    lead = z.shape[:-1]
    out = net(z.reshape(-1, n_in))
    return out.reshape(*lead, *out.shape[1:])
