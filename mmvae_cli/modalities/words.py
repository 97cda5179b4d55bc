"""Captions over a word vocabulary (MMVAE/MMVAE+ CUB references).

Stored as token ids (N, L) int64: a caption's words (lower-cased, split into words and punctuation,
`tokenize`) truncated to L - 1, then `<eos>`, then `<pad>` up to L; words outside the vocabulary
become `<exc>`. The vocabulary (`words`, index = id) starts with `<exc>`, `<pad>`, `<eos>` as the
reference's. The nets see one-hot (L, V) (MMVAE+); the likelihood is categorical per position, as
for character text (text.py). People see the words up to `<eos>`, `<pad>` dropped.
"""

from __future__ import annotations

import re
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import DataError
from ..nets.mlp import build_mlp
from ..nets.words import WordClassifier, build_words
from .text import TextKind

EXC, PAD, EOS = "<exc>", "<pad>", "<eos>"
SPECIALS = (EXC, PAD, EOS)
_WORD = re.compile(r"\w+|'\w+|[^\w\s]")


def tokenize(caption: str) -> list[str]:
    """Lower-cased words and punctuation marks ("bird's" -> "bird", "'s"), close to nltk's word_tokenize."""
    return _WORD.findall(caption.lower())


class WordTextKind(TextKind):
    name = "words"
    archs = {"words": build_words, "mlp": build_mlp}

    def __init__(self, words: list[str] | tuple[str, ...] = SPECIALS, **params):
        words = [str(w) for w in words]
        if list(words[:3]) != list(SPECIALS) or len(set(words)) != len(words):
            raise DataError(f"a word vocabulary starts with {', '.join(SPECIALS)} and has no repeated word")
        super(TextKind, self).__init__(words=words, **params)
        self.alphabet, self.pad = words, PAD
        self.index = {w: i for i, w in enumerate(words)}

    def encode(self, strings, length, where="words"):
        """Captions (strings or token lists) -> ids (N, length): tokens[:length - 1] + <eos> + <pad>..."""
        import torch

        out = torch.full((len(strings), length), self.index[PAD], dtype=torch.int64)
        exc = self.index[EXC]
        for i, s in enumerate(strings):
            toks = (tokenize(s) if isinstance(s, str) else list(s))[: length - 1] + [EOS]
            out[i, : len(toks)] = torch.tensor([self.index.get(t, exc) for t in toks], dtype=torch.int64)
        return out

    def decode(self, ids):
        out = []
        for row in ids.cpu().tolist():
            words = []
            for i in row:
                w = self.alphabet[int(i)]
                if w == EOS:
                    break
                if w != PAD:
                    words.append(w)
            out.append(" ".join(words))
        return out

    def default_arch(self, shape):
        return "words"

    def render(self, x):
        font = ImageFont.load_default()
        w, h, width = 160, 64, 26
        texts = [textwrap.wrap(s, width)[:5] for s in self.strings(x)]
        tiles = np.empty((len(texts), h, w, 3), dtype=np.uint8)
        for i, lines in enumerate(texts):
            img = Image.new("RGB", (w, h), (255, 255, 240))
            ImageDraw.Draw(img).multiline_text((3, 2), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=1)
            tiles[i] = np.asarray(img)
        return tiles

    def classifier(self, shape, n_classes):
        return WordClassifier(tuple(shape), n_classes)
