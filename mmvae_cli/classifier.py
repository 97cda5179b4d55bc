"""Digit classifiers for coherence: one per modality, stored together as a bundle (kind "classifier").

Each modality's kind builds its net (modalities/): images 3x28x28 get the PolyMNIST reference net
Conv(C,10,4,2,1)-Dropout2d(.5)-ReLU-Conv(10,20,4,2,1)-Dropout2d(.5)-ReLU-Flatten(980)-Linear(980,128)-
Dropout(.5)-ReLU-Linear(128,10); text gets a character-level conv net (nets/text.py); vectors an MLP.
The training recipe is unpublished; ours: Adam 1e-3, batch 128, `epochs` epochs, the kind's augmentation
(images: small random shifts).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import bundle, modalities
from .console import log, progress
from .data.base import MultimodalData
from .errors import BundleError, MMVAEError

WEIGHTS = "classifiers.safetensors"


def digit_net(shape: tuple[int, ...], n_classes: int = 10, kind: modalities.ModalityKind | None = None) -> nn.Module:
    """The coherence classifier the modality's kind names (by shape for bundles made before kinds)."""
    kind = kind or modalities.from_model_shape(shape)
    return kind.classifier(tuple(shape), n_classes)


class Classifiers(nn.Module):
    """One classifier per modality: forward(name, x) -> logits."""

    def __init__(
        self, shapes: dict[str, list[int]], n_classes: int = 10, kinds: dict[str, modalities.ModalityKind] | None = None
    ):
        super().__init__()
        self.shapes = shapes
        self.n_classes = n_classes
        self.kinds = {n: (kinds or {}).get(n) or modalities.from_model_shape(s) for n, s in shapes.items()}
        self.nets = nn.ModuleDict({n: digit_net(tuple(s), n_classes, self.kinds[n]) for n, s in shapes.items()})

    def forward(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.nets[name](x)

    @torch.no_grad()
    def predict(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.nets[name](self.kinds[name].classifier_input(x)).argmax(-1)

    @torch.no_grad()
    def features(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The penultimate-layer features h of x, logits = W h + b: the input of the net's last linear
        layer (every kind's classifier ends in one), (B, F)."""
        net = self.nets[name]
        last = [mod for mod in net.modules() if isinstance(mod, nn.Linear)][-1]
        seen: list[torch.Tensor] = []
        hook = last.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        try:
            net(self.kinds[name].classifier_input(x))
        finally:
            hook.remove()
        return seen[-1].flatten(1)


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


def train_classifiers(
    train: MultimodalData, test: MultimodalData, out: Path, epochs: int, batch_size: int, lr: float, seed: int, device
) -> dict:
    if train.labels is None:
        raise MMVAEError(f"{train.name} has no labels: classifiers need them")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    n_classes = int(train.labels.max()) + 1
    kinds = {n: train.kind(n) for n in train.modalities}
    clf = Classifiers({n: list(train.input_shape(n)) for n in train.modalities}, n_classes, kinds).to(device)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    history = []
    for epoch in range(epochs):
        clf.train()
        perm = torch.randperm(len(train), generator=g)
        total, count = 0.0, 0
        for start in progress(range(0, len(train), batch_size), desc=f"classifiers {epoch + 1}/{epochs}"):
            idx = perm[start : start + batch_size]
            x = train.batch(idx, device)
            y = train.labels[idx].to(device)
            loss = sum(F.cross_entropy(clf(n, kinds[n].augment(x[n], g)), y) for n in train.modalities)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        history.append({"epoch": epoch + 1, "loss": total / count})
        log(f"classifiers epoch {epoch + 1}/{epochs}  loss {total / count:.4f}")
    acc = accuracy(clf, test, device)
    manifest = bundle.new_manifest(
        "classifier",
        dataset={"name": train.name, "fingerprint": train.fingerprint},
        modalities={n: list(train.input_shape(n)) for n in train.modalities},
        kinds={n: k.to_dict() for n, k in kinds.items()},
        n_classes=n_classes,
        training={"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed},
        history=history,
        test_accuracy=acc,
    )
    bundle.write_weights(out, WEIGHTS, clf.state_dict(), manifest)
    bundle.save_manifest(out, manifest)
    return manifest


def load_classifiers(run: Path, device="cpu") -> tuple[Classifiers, dict]:
    manifest = bundle.read_manifest(run, kind="classifier")
    try:
        kinds = {n: modalities.make(k["kind"], k.get("params")) for n, k in manifest.get("kinds", {}).items()}
        clf = Classifiers(manifest["modalities"], int(manifest["n_classes"]), kinds)
    except (KeyError, TypeError, ValueError, MMVAEError) as e:
        raise BundleError(f"{run}: invalid classifier manifest ({e})") from None
    bundle.load_state(clf, bundle.read_weights(run, WEIGHTS, manifest), str(run))
    return clf.to(device).eval(), manifest
