"""Vectors (D,): float32 features; MLP nets; drawn as a min-max scaled grey strip; JSON: the values (4 decimals)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import ModalityKind, data_error


class VectorKind(ModalityKind):
    name = "vector"
    drawable = False

    @classmethod
    def claims(cls, t):
        return t.dim() == 2

    def check(self, t, where, m):
        if t.dim() != 2:
            raise data_error(where, m, f"has shape {tuple(t.shape)}: vectors are (N, D)")
        if t.is_complex():
            raise data_error(where, m, "is complex: use real float vectors")
        t = t.float()
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            n_nan = int(torch.isnan(t).sum())
            raise data_error(where, m, f"has {n_nan} NaN and {int(bad.sum()) - n_nan} Inf values")
        return t

    def render(self, x):
        v = x.detach().float().cpu().flatten(1)
        v = v - v.min(1, keepdim=True).values
        v = v / v.max(1, keepdim=True).values.clamp_min(1e-8)
        strip = (v[:, None, :, None].repeat(1, 8, 1, 3) * 255).round().to(torch.uint8)
        return strip.numpy()

    def to_json(self, x):
        return [[round(float(v), 4) for v in row] for row in x.detach().float().cpu().flatten(1)]

    def classifier(self, shape, n_classes):
        n = math.prod(shape)
        return nn.Sequential(nn.Flatten(), nn.Linear(n, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, n_classes))
