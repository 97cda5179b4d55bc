"""The M image encoders (decoders) of a model as one grouped computation (runtime option --grouped-nets).

For M identical conv nets (ConvEncoder/ConvDecoder, so conv28 and conv, all of one shape and latent
width), every convolution becomes one grouped convolution over the M inputs stacked in channels
(groups = M) and every linear layer one batched matmul (or, for a decoder input shared by all
modalities, one matmul with the weights side by side). The weights are concatenated from the
modules' own parameters at every call (differentiable), so the parameters, their names in bundles,
the optimizer state and checkpoints are exactly those of the separate nets; only the order of
floating-point summation differs (outputs and gradients equal up to float rounding,
tests/test_grouped_nets.py). Measured on 2 CPU cores in docs/results/speed.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conv import ConvDecoder, ConvEncoder


def groupable(nets: list[nn.Module], cls: type) -> bool:
    """Whether `nets` (two or more) are instances of `cls` with the same layers and parameter shapes."""
    if len(nets) < 2 or not all(type(n) is type(nets[0]) and isinstance(n, cls) for n in nets):
        return False
    shapes = [[(k, tuple(p.shape)) for k, p in n.named_parameters()] for n in nets]
    return all(s == shapes[0] for s in shapes)


def _cat(mods: list[nn.Module], name: str) -> torch.Tensor:
    return torch.cat([getattr(m, name) for m in mods])


def _conv(mods: list[nn.Module], h: torch.Tensor) -> torch.Tensor:
    """One grouped (transposed) convolution for the layer `mods` of the M nets: h (B, M*Cin, H, W)."""
    c, M = mods[0], len(mods)
    if isinstance(c, nn.ConvTranspose2d):
        return F.conv_transpose2d(
            h, _cat(mods, "weight"), _cat(mods, "bias"), c.stride, c.padding, c.output_padding, M, c.dilation
        )
    return F.conv2d(h, _cat(mods, "weight"), _cat(mods, "bias"), c.stride, c.padding, c.dilation, M)


def _linear(mods: list[nn.Module], h: torch.Tensor) -> torch.Tensor:
    """One batched linear layer for the M nets: h (M, B, in) -> (M, B, out)."""
    w = torch.stack([m.weight for m in mods]).transpose(1, 2)  # (M, in, out)
    b = torch.stack([m.bias for m in mods]).unsqueeze(1)  # (M, 1, out)
    return torch.baddbmm(b, h, w)


def encode(encoders: list[ConvEncoder], xs: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(loc, raw)] of encoder m on xs[m] (all (B, C, H, W)), as the separate encoders give them."""
    M, B = len(encoders), xs[0].shape[0]
    h = torch.cat(xs, dim=1)  # (B, M*C, H, W)
    layers = [list(e.body) for e in encoders]
    for i, layer in enumerate(layers[0]):
        mods = [ls[i] for ls in layers]
        if isinstance(layer, nn.Conv2d):
            h = _conv(mods, h)
        elif isinstance(layer, nn.ReLU):
            h = F.relu(h)
        elif isinstance(layer, nn.Flatten):
            h = h.reshape(B, M, -1).transpose(0, 1)  # (M, B, C*H*W): each group's channels are contiguous
        elif isinstance(layer, nn.Linear):
            h = _linear(mods, h)
        else:
            raise TypeError(f"grouped encoder: unsupported layer {type(layer).__name__}")
    heads = [e.loc for e in encoders] + [e.raw for e in encoders]
    out = _linear(heads, torch.cat([h, h]))  # loc and raw heads in one call: (2M, B, latent)
    return [(out[m], out[M + m]) for m in range(M)]


def decode(decoders: list[ConvDecoder], zs: list[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    """Decoder m's output for zs[m] (all (N, D)), or for one z (N, D) that every decoder reads."""
    M = len(decoders)
    layers = [list(d.net) for d in decoders]
    first = [ls[0] for ls in layers]
    if not isinstance(first[0], nn.Linear):
        raise TypeError(f"grouped decoder: unsupported first layer {type(first[0]).__name__}")
    if torch.is_tensor(zs):  # shared input: the M linear layers side by side, already channel-stacked
        h = F.linear(zs, _cat(first, "weight"), _cat(first, "bias"))  # (N, M*F)
    else:
        h = _linear(first, torch.stack(zs))  # (M, N, F)
        h = h.transpose(0, 1).reshape(h.shape[1], -1)  # (N, M*F)
    N = h.shape[0]
    for i, layer in enumerate(layers[0][1:], start=1):
        mods = [ls[i] for ls in layers]
        if isinstance(layer, (nn.ConvTranspose2d, nn.Conv2d)):
            h = _conv(mods, h)
        elif isinstance(layer, nn.ReLU):
            h = F.relu(h)
        elif isinstance(layer, nn.Unflatten):
            c, *hw = layer.unflattened_size
            h = h.reshape(N, M * c, *hw)
        else:
            raise TypeError(f"grouped decoder: unsupported layer {type(layer).__name__}")
    h = h.reshape(N, M, -1, *h.shape[2:])
    return [h[:, m] for m in range(M)]
