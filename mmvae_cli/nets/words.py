"""Word-level nets for captions (B, L, V) one-hot (MMVAE reference CUB sentence nets, `vae_cub_sent.py`).

Reference (L = 32, embedding E = 128, f = 32): the word embedding gives a 1 x L x E "image";
Conv2d(1, f, 4, 2, 1)-Conv2d(f, 2f, 4, 2, 1)-Conv2d(2f, 4f, 4, 2, 1) (L x E -> L/8 x E/8), then two
Conv2d(4f, 4f, (1, 4), (1, 2), (0, 1)) on the embedding axis (-> L/8 x E/32), heads Conv2d(4f, latent,
(L/8, E/32)). The decoder mirrors it back to 1 x L x E and maps each position to V logits with a
linear layer. Differences: the embedding is Linear(V, E, bias=False) over the one-hot words (the same
map as nn.Embedding, as MMVAE+ feeds one-hot words); no BatchNorm (as our other nets); the output
layer is not tied to the embedding; any L divisible by 8 works (E = 128 fixed).
"""

from __future__ import annotations

from torch import nn

from ..errors import MMVAEError

EMBED = 128
BASE = 32


def _check(length: int) -> int:
    if length < 8 or length % 8:
        raise MMVAEError(f"arch words needs a caption length divisible by 8 (the reference's 32), got {length}")
    return length // 8


class WordFeatures(nn.Module):
    """(B, L, V) one-hot -> (B, 4f, L/8, E/32) features."""

    def __init__(self, length: int, vocab: int, base: int = BASE):
        super().__init__()
        _check(length)
        f = base
        self.embed = nn.Linear(vocab, EMBED, bias=False)
        self.conv = nn.Sequential(
            nn.Conv2d(1, f, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(f, 2 * f, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(2 * f, 4 * f, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(4 * f, 4 * f, (1, 4), (1, 2), (0, 1)),
            nn.ReLU(),
            nn.Conv2d(4 * f, 4 * f, (1, 4), (1, 2), (0, 1)),
            nn.ReLU(),
        )

    def forward(self, x):
        return self.conv(self.embed(x).unsqueeze(1))


class WordEncoder(nn.Module):
    def __init__(self, shape: tuple[int, int], latent: int):
        super().__init__()
        kernel = (_check(shape[0]), EMBED // 32)
        self.body = WordFeatures(shape[0], shape[1])
        self.loc = nn.Conv2d(4 * BASE, latent, kernel)
        self.raw = nn.Conv2d(4 * BASE, latent, kernel)

    def forward(self, x):
        h = self.body(x)
        return self.loc(h).flatten(1), self.raw(h).flatten(1)


class WordDecoder(nn.Module):
    """z (B, latent) -> logits (B, L, V) (the categorical likelihood applies log-softmax over V)."""

    def __init__(self, shape: tuple[int, int], latent: int):
        super().__init__()
        length, vocab = shape
        f = BASE
        self.net = nn.Sequential(
            nn.Unflatten(1, (latent, 1, 1)),
            nn.ConvTranspose2d(latent, 4 * f, (_check(length), EMBED // 32), 1, 0),
            nn.ReLU(),
            nn.ConvTranspose2d(4 * f, 4 * f, (1, 4), (1, 2), (0, 1)),
            nn.ReLU(),
            nn.ConvTranspose2d(4 * f, 4 * f, (1, 4), (1, 2), (0, 1)),
            nn.ReLU(),
            nn.ConvTranspose2d(4 * f, 2 * f, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * f, f, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(f, 1, 4, 2, 1),
            nn.ReLU(),
        )
        self.out = nn.Linear(EMBED, vocab)

    def forward(self, z):
        return self.out(self.net(z).squeeze(1))


def build_words(shape: tuple[int, ...], latent: int, hidden: int) -> tuple[nn.Module, nn.Module]:
    """Arch words: WordEncoder/WordDecoder for one-hot captions (L, V), L divisible by 8 (`hidden` unused)."""
    if len(shape) != 2:
        raise MMVAEError(f"arch words needs one-hot captions (L, V), got {tuple(shape)}")
    return WordEncoder(tuple(shape), latent), WordDecoder(tuple(shape), latent)


class WordClassifier(nn.Module):
    """Classifier for captions: WordFeatures-Flatten-Dropout(.5)-Linear(., 64)-ReLU-Linear(64, classes)."""

    def __init__(self, shape: tuple[int, int], n_classes: int):
        super().__init__()
        self.body = WordFeatures(shape[0], shape[1], base=16)
        n = 4 * 16 * (shape[0] // 8) * (EMBED // 32)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(n, 64), nn.ReLU(), nn.Linear(64, n_classes))

    def forward(self, x):
        return self.head(self.body(x))
