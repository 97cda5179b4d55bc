"""Short strings over a character alphabet (MoPoE reference, MNIST-SVHN-Text).

Stored as token ids (N, L) int64, padded with the pad character (a space, as the reference); the
nets see one-hot (L, V); the likelihood is categorical per position:

    log p(x | z) = sum_{l=1..L} log softmax(out_l)[x_l].

Default alphabet: the reference's `alphabet.json` (71 entries; '-' is listed twice, a character maps to
its first index, so id 59 never occurs in data). Rendering: the decoded string (argmax per position),
drawn with PIL's default font into a tile; JSON gets the strings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ..distributions import LIKELIHOODS
from ..errors import DataError, MMVAEError
from ..nets.mlp import build_mlp
from ..nets.text import CharClassifier, build_char
from .base import ModalityKind, data_error

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"/\\|_@#$%^&*~`+-=<>()[]{}\n "
PAD = " "


class TextKind(ModalityKind):
    name = "text"
    likelihoods = {"categorical": LIKELIHOODS["categorical"]}
    default_likelihood = "categorical"
    archs = {"char": build_char, "mlp": build_mlp}
    own_defaults = True

    def __init__(self, alphabet: str = ALPHABET, pad: str = PAD, **params):
        if not alphabet or pad not in alphabet:
            raise DataError(f"text alphabet {alphabet!r} must be non-empty and hold the pad character {pad!r}")
        super().__init__(alphabet=alphabet, pad=pad, **params)
        self.alphabet, self.pad = alphabet, pad
        self.index = {}
        for i, c in enumerate(alphabet):
            self.index.setdefault(c, i)

    @property
    def vocab(self) -> int:
        return len(self.alphabet)

    # --- data ------------------------------------------------------------------------------------
    def encode(self, strings: list[str], length: int, where: str = "text") -> torch.Tensor:
        """Strings -> ids (N, length), right-padded; lower-cased; one-line errors for bad characters."""
        out = torch.full((len(strings), length), self.index[self.pad], dtype=torch.int64)
        for i, s in enumerate(strings):
            s = s.lower()
            if len(s) > length:
                raise MMVAEError(f"{where}: {s!r} has {len(s)} characters; this modality holds {length}")
            bad = sorted({c for c in s if c not in self.index})
            if bad:
                raise MMVAEError(f"{where}: {s!r} has characters outside the alphabet: {''.join(bad)!r}")
            out[i, : len(s)] = torch.tensor([self.index[c] for c in s], dtype=torch.int64)
        return out

    def decode(self, ids: torch.Tensor) -> list[str]:
        return ["".join(self.alphabet[int(i)] for i in row) for row in ids.cpu()]

    def check(self, t, where, m):
        if t.dim() != 2 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise data_error(
                where, m, f"is {str(t.dtype).replace('torch.', '')} {tuple(t.shape)}: text is integer token ids (N, L)"
            )
        t = t.long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.vocab):
            raise data_error(where, m, f"has token ids outside [0, {self.vocab}) (the alphabet's size)")
        return t

    def model_shape(self, stored):
        return (int(stored[0]), self.vocab)

    def to_model(self, rows):
        return F.one_hot(rows.long(), self.vocab).float()

    def ids(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space x (one-hot, probabilities or logits (B, L, V)) -> ids (B, L) by argmax."""
        return x.argmax(-1)

    # --- nets ------------------------------------------------------------------------------------
    def default_arch(self, shape):
        return "char"

    # --- people ----------------------------------------------------------------------------------
    def strings(self, x: torch.Tensor) -> list[str]:
        return self.decode(self.ids(x.detach()))

    def to_json(self, x):
        return self.strings(x)

    def render(self, x):
        font = ImageFont.load_default()
        texts = [s.replace("\n", " ") for s in self.strings(x)]
        length = x.shape[-2]
        w, h = 6 * length + 6, 16
        tiles = np.empty((len(texts), h, w, 3), dtype=np.uint8)
        for i, s in enumerate(texts):
            img = Image.new("RGB", (w, h), (255, 255, 240))
            ImageDraw.Draw(img).text((3, 2), s, fill=(0, 0, 0), font=font)
            tiles[i] = np.asarray(img)
        return tiles

    def from_string(self, s, shape):
        return self.to_model(self.encode([s], int(shape[0]), "--text"))

    def read_file(self, path, shape):
        try:
            s = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read UTF-8 text ({e})") from None
        return self.to_model(self.encode([s.rstrip("\r\n")], int(shape[0]), str(path)))

    # --- coherence -------------------------------------------------------------------------------
    def classifier(self, shape, n_classes):
        return CharClassifier(tuple(shape), n_classes)

    def classifier_input(self, x):
        """The decoded string, as one-hot: the classifier reads what a person would."""
        return F.one_hot(self.ids(x), x.shape[-1]).float()
