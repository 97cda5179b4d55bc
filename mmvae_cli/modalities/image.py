"""Images (C, H, W): uint8 in [0, 255] (or float in [0, 1]) on disk, float in [0, 1] in the nets.

Default nets by shape: the MMVAE MNIST MLP for (1, 28, 28), the PolyMNIST reference convs for other
(C, 28, 28), the MMVAE SVHN convs for (C, 32, 32), a sized conv net otherwise. Coherence classifier:
the PolyMNIST reference digit net for 28x28, the SVHN-style net for 32x32, an MLP otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import DataError
from ..nets.conv import build_conv, build_conv28, build_conv32
from ..nets.mlp import build_mlp
from .base import ModalityKind, data_error


class ImageKind(ModalityKind):
    name = "image"
    archs = {"conv28": build_conv28, "conv32": build_conv32, "conv": build_conv, "mlp": build_mlp}
    has_fid = True

    @classmethod
    def claims(cls, t):
        return t.dim() == 4

    def check(self, t, where, m):
        if t.dim() != 4:
            raise data_error(where, m, f"has shape {tuple(t.shape)}: images are (N, C, H, W)")
        if t.dtype == torch.uint8:
            return t
        if not t.is_floating_point():
            raise DataError(
                f"{where}: images of modality {m!r} are {str(t.dtype).replace('torch.', '')}: "
                "use uint8 in [0, 255] or float in [0, 1]"
            )
        t = t.float()
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            n_nan = int(torch.isnan(t).sum())
            raise data_error(where, m, f"has {n_nan} NaN and {int(bad.sum()) - n_nan} Inf values")
        if t.numel() and (float(t.min()) < 0.0 or float(t.max()) > 1.0):
            raise DataError(
                f"{where}: float images of modality {m!r} range over [{float(t.min()):.4g}, "
                f"{float(t.max()):.4g}]: scale them to [0, 1] or store uint8 in [0, 255]"
            )
        return t

    def to_model(self, rows):
        return rows.float().div_(255.0) if rows.dtype == torch.uint8 else rows.float()

    def default_arch(self, shape):
        shape = tuple(shape)
        if len(shape) != 3 or shape == (1, 28, 28):
            return "mlp"
        if shape[1:] == (28, 28):
            return "conv28"
        if shape[1:] == (32, 32):
            return "conv32"
        return "conv"

    def render(self, x):
        x = x.detach().float().cpu()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = x[:, :3]
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def read_file(self, path, shape):
        try:
            img = Image.open(path)
            img = img.convert("RGB" if shape[0] == 3 else "L").resize((shape[2], shape[1]))
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read image ({e})") from None
        a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).float() / 255.0
        return (a.permute(2, 0, 1) if a.dim() == 3 else a[None])[None]

    def classifier(self, shape, n_classes):
        shape = tuple(shape)
        if len(shape) == 3 and shape[1:] == (28, 28):
            return nn.Sequential(
                nn.Conv2d(shape[0], 10, 4, 2, 1),
                nn.Dropout2d(0.5),
                nn.ReLU(),
                nn.Conv2d(10, 20, 4, 2, 1),
                nn.Dropout2d(0.5),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(980, 128),
                nn.Dropout(0.5),
                nn.ReLU(),
                nn.Linear(128, n_classes),
            )
        if len(shape) == 3 and shape[1:] == (32, 32):
            return nn.Sequential(
                nn.Conv2d(shape[0], 32, 4, 2, 1),
                nn.ReLU(),
                nn.Conv2d(32, 64, 4, 2, 1),
                nn.ReLU(),
                nn.Conv2d(64, 128, 4, 2, 1),
                nn.ReLU(),
                nn.Flatten(),
                nn.Dropout(0.5),
                nn.Linear(2048, 128),
                nn.ReLU(),
                nn.Linear(128, n_classes),
            )
        n = math.prod(shape)
        return nn.Sequential(nn.Flatten(), nn.Linear(n, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, n_classes))

    def classifier_input(self, x):
        return x.clamp(0, 1)

    def augment(self, x, g):
        """Random translation by up to 2 pixels."""
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
        return torch.roll(x, shifts=(dy, dx), dims=(2, 3))
