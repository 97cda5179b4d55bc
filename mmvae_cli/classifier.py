"""Digit classifiers for coherence: one per modality, stored together as a bundle (kind "classifier").

Architecture (PolyMNIST reference, 3x28x28): Conv(C,10,4,2,1)-Dropout2d(.5)-ReLU-Conv(10,20,4,2,1)-
Dropout2d(.5)-ReLU-Flatten(980)-Linear(980,128)-Dropout(.5)-ReLU-Linear(128,10). Other shapes get an MLP.
The training recipe is unpublished; ours: Adam 1e-3, batch 128, `epochs` epochs, small random shifts.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import bundle
from .data.base import MultimodalData
from .errors import BundleError, MMVAEError
from .console import log, progress

WEIGHTS = "classifiers.safetensors"


def digit_net(shape: tuple[int, ...], n_classes: int = 10) -> nn.Module:
    if len(shape) == 3 and shape[1:] == (28, 28):
        return nn.Sequential(
            nn.Conv2d(shape[0], 10, 4, 2, 1), nn.Dropout2d(0.5), nn.ReLU(),
            nn.Conv2d(10, 20, 4, 2, 1), nn.Dropout2d(0.5), nn.ReLU(), nn.Flatten(),
            nn.Linear(980, 128), nn.Dropout(0.5), nn.ReLU(), nn.Linear(128, n_classes))
    if len(shape) == 3 and shape[1:] == (32, 32):
        return nn.Sequential(
            nn.Conv2d(shape[0], 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
            nn.Linear(2048, 128), nn.ReLU(), nn.Linear(128, n_classes))
    n = math.prod(shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, n_classes))


class Classifiers(nn.Module):
    """One classifier per modality: forward(name, x) -> logits."""

    def __init__(self, shapes: dict[str, list[int]], n_classes: int = 10):
        super().__init__()
        self.shapes = shapes
        self.n_classes = n_classes
        self.nets = nn.ModuleDict({n: digit_net(tuple(s), n_classes) for n, s in shapes.items()})

    def forward(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.nets[name](x)

    @torch.no_grad()
    def predict(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.nets[name](x.clamp(0, 1) if x.dim() == 4 else x).argmax(-1)


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translation by up to 2 pixels (images only): cheap augmentation."""
    if x.dim() != 4:
        return x
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@torch.no_grad()
def accuracy(clf: Classifiers, data: MultimodalData, device, batch_size: int = 1000) -> dict[str, float]:
    clf.eval()
    correct = {n: 0 for n in data.modalities}
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        x = data.batch(idx, device)
        y = data.labels[idx].to(device)
        for n in data.modalities:
            correct[n] += int((clf.predict(n, x[n]) == y).sum())
    return {n: c / len(data) for n, c in correct.items()}


def train_classifiers(train: MultimodalData, test: MultimodalData, out: Path, epochs: int, batch_size: int,
                      lr: float, seed: int, device) -> dict:
    if train.labels is None:
        raise MMVAEError(f"{train.name} has no labels: classifiers need them")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    n_classes = int(train.labels.max()) + 1
    clf = Classifiers({n: list(train.shape(n)) for n in train.modalities}, n_classes).to(device)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    history = []
    for epoch in range(epochs):
        clf.train()
        perm = torch.randperm(len(train), generator=g)
        total, count = 0.0, 0
        for start in progress(range(0, len(train), batch_size), desc=f"classifiers {epoch + 1}/{epochs}"):
            idx = perm[start:start + batch_size]
            x = train.batch(idx, device)
            y = train.labels[idx].to(device)
            loss = sum(F.cross_entropy(clf(n, _shift(x[n], g)), y) for n in train.modalities)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        history.append({"epoch": epoch + 1, "loss": total / count})
        log(f"classifiers epoch {epoch + 1}/{epochs}  loss {total / count:.4f}")
    acc = accuracy(clf, test, device)
    manifest = bundle.new_manifest(
        "classifier", dataset={"name": train.name, "fingerprint": train.fingerprint},
        modalities={n: list(train.shape(n)) for n in train.modalities}, n_classes=n_classes,
        training={"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}, history=history,
        test_accuracy=acc)
    bundle.write_weights(out, WEIGHTS, clf.state_dict(), manifest)
    bundle.save_manifest(out, manifest)
    return manifest


def load_classifiers(run: Path, device="cpu") -> tuple[Classifiers, dict]:
    manifest = bundle.read_manifest(run, kind="classifier")
    try:
        clf = Classifiers(manifest["modalities"], int(manifest["n_classes"]))
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{run}: invalid classifier manifest ({e})") from None
    bundle.load_state(clf, bundle.read_weights(run, WEIGHTS, manifest), str(run))
    return clf.to(device).eval(), manifest
