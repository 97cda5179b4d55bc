"""What a kind of modality (image, vector, text, ...) knows, in one object.

A kind turns stored rows into what the networks see, names the networks it offers and its default
for a shape, owns its likelihoods, renders samples for people (PNG tiles, strings for JSON), reads
inputs from files or strings, and builds the classifier used for coherence. A kind instance
carries its parameters (text: the alphabet), which are JSON and travel in manifests.

    stored rows  --to_model-->  x (float, `model_shape`)  --encoder--> q(z | x)
    z --decoder--> out  --likelihood--> p(x | z);  mean(out) --render/to_json--> people

`archs` maps an architecture name to its builder (shape, latent, hidden) -> (encoder, decoder)
(nets/, or the kind's own file); `likelihoods` maps a name to a distributions.Likelihood.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import ModelSettings, default_of
from ..distributions import LIKELIHOODS, Likelihood
from ..errors import DataError, MMVAEError
from ..nets.mlp import build_mlp

NetBuilder = Callable[[tuple[int, ...], int, int], tuple[nn.Module, nn.Module]]


class ModalityKind:
    name = ""
    likelihoods: dict[str, Likelihood] = LIKELIHOODS
    default_likelihood: str = default_of(ModelSettings, "likelihood")
    archs: dict[str, NetBuilder] = {"mlp": build_mlp}
    own_defaults = False  # True: --likelihood/--arch given once for all modalities do not apply
    drawable = True  # shown in report figures
    has_fid = False  # Inception FID applies

    def __init__(self, **params):
        self.params = params

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"

    def to_dict(self) -> dict:
        return {"kind": self.name, "params": dict(self.params)}

    # --- data ------------------------------------------------------------------------------------
    @classmethod
    def claims(cls, t: torch.Tensor) -> bool:
        """Whether a stored tensor (N, ...) of unknown kind is of this kind (old data, user files)."""
        return False

    def check(self, t: torch.Tensor, where: str, m: str) -> torch.Tensor:
        """Validated storage form of rows (N, ...) of modality m; DataError naming `where` and m."""
        return t

    def model_shape(self, stored: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample shape the networks see, from the stored per-sample shape."""
        return tuple(stored)

    def to_model(self, rows: torch.Tensor) -> torch.Tensor:
        """Stored rows -> float network input (on the rows' device)."""
        return rows.float()

    # --- nets ------------------------------------------------------------------------------------
    def default_arch(self, shape: tuple[int, ...]) -> str:
        return "mlp"

    def likelihood(self, lik: str, modality: str) -> Likelihood:
        """The likelihood named `lik` for modality `modality` of this kind; a one-line error if it does not apply."""
        if lik not in self.likelihoods:
            raise MMVAEError(
                f"--likelihood {lik} does not apply to {self.name} modality {modality!r}; "
                f"choose {', '.join(self.likelihoods)}"
            )
        return self.likelihoods[lik]

    # --- people ----------------------------------------------------------------------------------
    def render(self, x: torch.Tensor) -> np.ndarray:
        """Model-space samples (B, *shape) (decoder means or inputs) -> tiles (B, H, W, 3) uint8."""
        raise NotImplementedError

    def to_json(self, x: torch.Tensor) -> list | None:
        """A JSON form of samples for people (text: strings), or None when there is none."""
        return None

    def read_file(self, path: str | Path, shape: tuple[int, ...]) -> torch.Tensor:
        """One input (1, *shape) from a file."""
        raise MMVAEError(f"{self.name} modalities cannot be read from a file ({path})")

    def from_string(self, s: str, shape: tuple[int, ...]) -> torch.Tensor:
        raise MMVAEError(f"{self.name} modalities cannot be given as a string: use --input MOD=FILE")

    # --- coherence -------------------------------------------------------------------------------
    def classifier(self, shape: tuple[int, ...], n_classes: int) -> nn.Module:
        raise NotImplementedError

    def classifier_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the classifier reads of a generated mean (or data) x."""
        return x

    def augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Cheap training augmentation for the classifier (default none)."""
        return x


def data_error(where: str, m: str, what: str) -> DataError:
    return DataError(f"{where}: modality {m!r} {what}")
