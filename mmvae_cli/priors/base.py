"""The interface every prior over the latent implements (pythae's BaseSampler, as one object).

    prior.sample(n)          -> (n, D) latents
    prior.log_prob(z)        -> (...,) log density over the last axis, or None when not tractable
    prior.tensors()          -> what prior-KIND.safetensors stores (never pickled)
    prior.to_json()          -> the constructor settings the manifest's `priors: {KIND: ...}` stores
    Kind.from_stored(json, tensors) rebuilds it; model.attach_prior(prior) attaches it (`attach`).

Fitted kinds (ebm, gmm, flow) are fitted post hoc by one job (commands/fit_prior.py, `mmvae fit-prior
--kind KIND`) to samples of the frozen VAE's aggregate posterior (bank.ExpertBank):

    Kind.check_settings(given)                      the flags given (by field name), range-checked
    settings = Kind.resolve_settings(given, fusion, z_dim)   the fit's settings for this model (defaults in)
    Kind.check_fit(settings, common, n)             what a fit on n training tuples cannot do
    prior, stats = Kind.fit(bank, common, settings, run)

A prior the VAE trains with (an energy trained jointly, `model.train_prior`) also gives the objectives
its terms: log p(z) = log p0(z) - w E(z) - log Z (`energy_term`, `energy_weight`) and its own learning
step (`learn`). The base prior p0 is a view of the model (`from_model`).
"""

from __future__ import annotations

import hashlib
from dataclasses import fields
from typing import ClassVar

import torch
from torch import nn

from .. import config
from ..errors import MMVAEError


def prior_file(kind: str) -> str:
    """The bundle file of a fitted prior kind."""
    return f"prior-{kind}.safetensors"


class LatentPrior(nn.Module):
    kind: ClassVar[str] = ""
    help: ClassVar[str] = ""  # one line for --prior's help
    title: ClassVar[str] = ""  # its name in messages (default "KIND prior")
    tractable: ClassVar[bool] = False  # log_prob is a normalised density
    fit_prior: ClassVar[bool] = False  # fitted by `mmvae fit-prior --kind KIND`
    settings_sections: ClassVar[tuple[type, ...]] = ()  # its config.py sections (its fit flags)
    flag_rename: ClassVar[dict[str, str]] = {}  # field -> flag (without --) where not --field-name
    sampler_options: ClassVar[tuple[str, ...]] = ()  # keyword options of sample() (ebm: Langevin)
    conditional: ClassVar[bool] = False  # samples free coordinates given clamped ones (`sample_given`)
    trained_with_vae: bool = False  # an instance trained jointly with the VAE: the model's train_prior
    command: ClassVar[str] = "fit-prior"  # the command that fits it (fit-prior --kind KIND, or its own)

    @classmethod
    def name(cls) -> str:
        return cls.title or f"{cls.kind} prior"

    @classmethod
    def how_to_get(cls, run: str = "RUN") -> str:
        """The command that gives a bundle this prior."""
        own = cls.fit_command() != "fit-prior"  # a kind with a command of its own (ebm: fit-ebm)
        return f"mmvae {cls.fit_command()} {run}" + ("" if own else f" --kind {cls.kind}")

    @classmethod
    def fit_command(cls) -> str:
        """The command that fits this kind, as messages name it."""
        return cls.command

    @classmethod
    def fit_event(cls) -> str:
        """The event of its fit's epochs in --log-jsonl and TensorBoard."""
        return f"{cls.command}-epoch" if cls.command != "fit-prior" else f"fit-prior-{cls.kind}-epoch"

    @classmethod
    def noun(cls) -> str:
        """What a bundle holding only this prior holds ("a NOUN-only bundle")."""
        return f"{cls.kind} prior"

    @classmethod
    def from_model(cls, model) -> LatentPrior | None:
        """A prior the model itself is (base), or None."""
        return None

    @classmethod
    def from_stored(cls, settings: dict, tensors: dict[str, torch.Tensor]) -> LatentPrior:
        raise NotImplementedError

    def attach(self, model) -> None:
        """Called by model.attach_prior before the prior joins `model` (the energy keeps p0 from it)."""

    @property
    def dim(self) -> int | None:
        """The latent size this prior is over (None: any)."""
        d = self.to_json().get("dim")
        return None if d is None else int(d)

    def check_options(self, options: dict) -> None:
        given = sorted(k for k, v in options.items() if v is not None and k not in self.sampler_options)
        if given:
            raise MMVAEError(
                f"--{given[0].replace('_', '-')} does not apply to the {self.kind} prior"
                + (" (Langevin options need --prior ebm)" if self.kind != "ebm" else "")
            )

    def sample(self, n: int, **options) -> torch.Tensor:
        raise NotImplementedError

    def sample_given(self, z: torch.Tensor, free: torch.Tensor, **options) -> torch.Tensor:
        """z with its `free` coordinates ((D,) bool) drawn given the others (`conditional` kinds)."""
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor | None:
        return None

    # --- a base an energy tilts (ebm --base KIND): its noise coordinates --------------------------------
    def noise(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(u, c): u ~ N(0, I) and a discrete context c (a mixture's components; None) such that
        z = push(u, c) ~ this prior. An energy over this prior runs Langevin on u, where the tilted
        density is exp(-E(push(u, c))) N(u; 0, I) given c (VAEBM's sampling in noise space): as well
        conditioned as over N(0, I), however sharp this prior is."""
        raise NotImplementedError(f"the {self.kind} prior has no noise coordinates")

    def push(self, u: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """z = T(u; c), differentiable in u (see `noise`)."""
        raise NotImplementedError(f"the {self.kind} prior has no noise coordinates")

    def to_json(self) -> dict:
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def fingerprint(self) -> str:
        """sha256 of the stored tensors (names, dtypes, shapes, bytes): what an energy tilting this prior
        records, to refuse a refitted one."""
        h = hashlib.sha256()
        for k, v in sorted(self.tensors().items()):
            h.update(f"{k}:{v.dtype}:{tuple(v.shape)};".encode())
            h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
        return h.hexdigest()

    # --- fitted post hoc (`fit_prior`) ----------------------------------------------------------------
    @classmethod
    def flags(cls) -> dict[str, str]:
        """Field name -> its command-line flag, for every field of the kind's sections."""
        return {
            f.name: "--" + cls.flag_rename[f.name] if f.name in cls.flag_rename else config.flag_name(f)
            for sec in cls.settings_sections
            for f in fields(sec)
        }

    @classmethod
    def check_settings(cls, given: dict) -> None:
        """Range-check the flags given (field name -> value, None = not given); needs no bundle."""
        for sec in cls.settings_sections:
            config.resolve(sec, given)

    @classmethod
    def resolve_settings(cls, given: dict, fusion: str, z_dim: int):
        """The checked settings of a fit to a model with this fusion and latent size from the flags given
        (the rest: the kind's defaults); one-line MMVAEError for a fit that cannot work on such a model."""
        (sec,) = cls.settings_sections
        return config.resolve(sec, given)

    @classmethod
    def settings_to_json(cls, settings) -> dict:
        """What the manifest (and an interrupted fit's checkpoint) records of the settings."""
        return config.to_dict(settings)

    @classmethod
    def settings_from_json(cls, d: dict):
        """Inverse of `settings_to_json` (--resume); MMVAEError when it is not valid."""
        (sec,) = cls.settings_sections
        return config.from_dict(sec, d, "checkpoint [settings]")

    @classmethod
    def describe(cls, settings) -> tuple[str, str]:
        """(what is fitted, how) for the fit's first log line."""
        return f"a {cls.kind} prior", str(config.to_dict(settings))

    @classmethod
    def tilts(cls, settings) -> str | None:
        """The kind of the bundle's prior a fit with these settings tilts (an energy over a gmm), or None."""
        return None

    @classmethod
    def check_fit(cls, settings, common, n_tuples: int) -> None:
        """One-line MMVAEError for a fit that cannot work on n_tuples training tuples, before anything is written."""

    @classmethod
    def fit(cls, bank, common, settings, run=None, resume: bool = False, step_delay: float = 0.0):
        """(prior, stats) fitted to samples of the aggregate posterior (`bank.sample(idx)`, `bank.n`);
        stats: JSON, with "seconds" (and "history" for kinds fitted epoch by epoch)."""
        raise NotImplementedError

    def fit_result(self, stats: dict) -> dict:
        """What fit-prior prints (--json) of a fit: the prior's settings and its statistics."""
        first = ("seconds", "log_lik", "base_log_lik", "eval_samples")
        return {
            "kind": self.kind,
            "prior": self.to_json(),
            **{k: stats[k] for k in first if k in stats},
            **{k: v for k, v in stats.items() if k not in (*first, "history")},
        }

    # --- trained with the VAE (`trained_with_vae`: model.train_prior) -----------------------------------
    def energy_term(self, z: torch.Tensor) -> torch.Tensor:
        """E(z), (..., D) -> (...), with the prior's parameters detached: the VAE's prior is
        log p(z) = log p0(z) - w E(z) - log Z, w = `energy_weight()`, Z constant for the VAE."""
        raise NotImplementedError

    def energy_weight(self) -> float:
        """w now (0: the VAE's prior term is p0's alone)."""
        return 0.0

    def learn(self, model, z_pos: torch.Tensor, loss, stats: dict, prior_terms: float = 1.0):
        """(loss, stats) with the prior's own learning step on the batch's posterior samples z_pos added."""
        return loss, stats

    def monitor(self, history: list[dict]):
        """A callable that sees each epoch's summary and raises for a diverging run, or None."""
        return None
