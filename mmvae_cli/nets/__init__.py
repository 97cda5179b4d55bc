"""Encoders and decoders by data shape.

An encoder maps x_m to two heads (loc, raw) of size `out_dim` (the shared latent,
plus the private latent for MMVAE+); a decoder maps a latent of size `in_dim` to
the likelihood's parameter with x_m's shape. Decoders accept any leading batch
dimensions (S, K, B, D) and flatten them for the convolution.

An architecture is a builder `build_ARCH(shape, latent, hidden) -> (encoder, decoder)` that refuses
shapes it does not fit; a modality kind names the ones it offers (`ModalityKind.archs`, modalities/),
and its default for a shape:
  mlp:    an MLP for vectors (D,) and for MNIST-shaped (1, 28, 28) images (the MMVAE MNIST net,
          400 hidden units; ours has two hidden layers where the reference has one)  (mlp.py)
  conv28: the PolyMNIST reference nets for other (C, 28, 28) images                  (conv.py)
  conv32: the MMVAE SVHN nets for (C, 32, 32)                                         (conv.py)
  conv:   a conv net sized to any other (C, H, W) (stride-2 convs down to 4x4, mirrored decoder) (conv.py)
  char:   the MoPoE reference character-level 1-D convs for one-hot strings (L, V)   (text.py)
  words:  the MMVAE reference CUB sentence nets for one-hot captions (L, V), L divisible by 8 (words.py)
"""

from __future__ import annotations

import torch
from torch import nn

from .conv import ConvDecoder, ConvEncoder


def apply_flat(net: nn.Module, z: torch.Tensor, n_in: int) -> torch.Tensor:
    """Run `net` on z with arbitrary leading dims: (..., n_in) -> (..., *out)."""
    lead = z.shape[:-1]
    out = net(z.reshape(-1, n_in))
    return out.reshape(*lead, *out.shape[1:])


__all__ = ["ConvEncoder", "ConvDecoder", "apply_flat"]
