"""A training run's configuration: the recipes (TOML files that reproduce the papers' settings, with
`include` for shared blocks), their schedules, and `resolve_train`, which layers them over config.py's
defaults into a checked `TrainConfig`:

    defaults (config.py)  <  recipe sections  <  recipe schedule ([cpu] for *-mini)  <  flags

config.py declares every setting (default, range, source); this module only reads recipes and layers.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path

from . import registry
from .config import (
    SECTIONS,
    EnergySettings,
    JointEnergySettings,
    LangevinSettings,
    ModelSettings,
    TrainSettings,
    check,
    check_model,
    check_partial,
    default_of,
    from_dict,
    overridden,
    to_dict,
)
from .errors import MMVAEError


def recipe_files():
    """The shipped recipes (package data `mmvae_cli.recipes`, the top-level recipes/ folder)."""
    return resources.files("mmvae_cli.recipes")


def family(dataset: str) -> str:
    return dataset.removesuffix("-mini")


def default_recipe(dataset: str, fusion: str, private: bool = False, objective: str | None = None):
    """The shipped recipe for a dataset family and model (a peer model's objective names its own,
    registry.model_name; private latents otherwise make MMVAE+), or None when there is none."""
    peer = objective in registry.OBJECTIVES and registry.OBJECTIVES[objective].model
    name = registry.model_name(fusion, objective) if peer or not private else "mmvaeplus"
    path = recipe_files() / f"{family(dataset)}-{name}.toml"
    return path if path.is_file() else None


def _where(path) -> str:
    return getattr(path, "name", str(path))


def _included(name: str, beside):
    """The recipe an `include` names: next to the including recipe `beside`, else a shipped one."""
    for path in (beside.parent / name, recipe_files() / name):
        if path.is_file():
            return path
    raise MMVAEError(f"recipe {_where(beside)}: include {name!r} not found (next to it or among the shipped recipes)")


def load_recipe(path, _chain: tuple = ()) -> dict:
    """A recipe's TOML as a dict, every key checked against the sections' fields.

    A top-level `include = ["a.toml", ...]` (a name or a list; each found next to the recipe, else among
    the shipped recipes, which hold shared blocks such as _compare.toml) is read first, in order, and the
    recipe's own values win key by key: include < later include < the recipe. Includes may include."""
    where = _where(path)
    if not path.is_file():
        raise MMVAEError(f"recipe {path} not found")
    key = str(path.resolve()) if isinstance(path, Path) else str(path)
    if key in _chain:
        names = [_where(Path(k)) for k in (*_chain[_chain.index(key) :], key)]
        raise MMVAEError(f"recipe {names[0]}: include cycle {' -> '.join(names)}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise MMVAEError(f"recipe {where}: invalid TOML ({e})".replace("\n", " ")) from None
    include = data.pop("include", [])
    names = [include] if isinstance(include, str) else include
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise MMVAEError(f"recipe {where}: include must be a recipe file name or a list of them, got {include!r}")
    merged: dict = {}
    for name in names:
        for section, values in load_recipe(_included(name, path), (*_chain, key)).items():
            merged.setdefault(section, {}).update(values)
    schedule_keys = {f.name for cls in SECTIONS.values() for f in fields(cls)}
    for name, section in data.items():
        if not isinstance(section, dict):
            raise MMVAEError(f"recipe {where}: top-level key {name!r} must be a [section]")
        allowed = {f.name for f in fields(SECTIONS[name])} if name in SECTIONS else schedule_keys
        for k in section:
            if k not in allowed:
                raise MMVAEError(f"recipe {where}: unknown setting [{name}] {k}")
        merged.setdefault(name, {}).update(section)
    return merged


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run computes with, resolved and checked."""

    model: ModelSettings
    train: TrainSettings
    energy: EnergySettings
    joint: JointEnergySettings
    langevin: LangevinSettings
    joint_ebm: bool = False  # --prior ebm: train the energy with the VAE (Algorithm 1)
    recipe: str | None = None
    schedule: str | None = None

    def to_dict(self) -> dict:
        d = {name: to_dict(getattr(self, name)) for name in ("model", "train")}
        if self.joint_ebm:
            d.update(energy=to_dict(self.energy), joint=to_dict(self.joint), langevin=to_dict(self.langevin))
        return {**d, "joint_ebm": self.joint_ebm, "recipe": self.recipe, "schedule": self.schedule}

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> TrainConfig:
        """Read back a manifest's `settings` (older bundles: missing fields take their defaults)."""
        model = dict(d.get("model", {}))
        model.setdefault("private_prior", "learned")  # runs from before the field had the learned p(w_m)
        extra = model.pop("extra", None) or {}  # bundles before config.py kept mvae_k here
        if "mvae_k" in extra:
            model.setdefault("mvae_subsets", int(extra["mvae_k"]))
        train = dict(d.get("train", {}))
        joint = {k: train.pop(k) for k in ("ebm_lr", "ebm_betas") if k in train}
        if joint:  # runs from before the L2 term trained without it
            joint["reg"] = 0.0
        joint.update(d.get("joint", {}))
        joint.setdefault("feedback", 1.0)  # runs from before --ebm-feedback trained with Algorithm 1's term
        joint.setdefault("reg_on", "energies")  # ... and before --ebm-reg-on with the L2 term on the energies
        # (and until issue 25 "gauge" was "level": JointEnergySettings reads either)
        try:
            return cls(
                from_dict(ModelSettings, model, f"{where} [model]"),
                from_dict(TrainSettings, train, f"{where} [train]"),
                from_dict(EnergySettings, d.get("energy"), f"{where} [energy]"),
                from_dict(JointEnergySettings, joint, f"{where} [joint]"),
                from_dict(LangevinSettings, d.get("langevin"), f"{where} [langevin]"),
                bool(d.get("joint_ebm", False)),
                d.get("recipe"),
                d.get("schedule"),
            )
        except TypeError as e:
            raise MMVAEError(f"{where}: invalid settings ({e})") from None


def resolve_train(
    dataset: str, overrides: dict, recipe: str | Path | None = None, schedule: str | None = None
) -> TrainConfig:
    """Defaults < recipe sections < recipe schedule (auto [cpu] for *-mini) < overrides; then checked.

    overrides: flag values by field name (None = not given); "prior": "ebm" asks for the jointly trained
    energy-based prior over the recipe's base prior."""
    overrides = dict(overrides)
    joint_ebm = overrides.get("prior") == "ebm"
    if joint_ebm:
        overrides["prior"] = None
    fusion = overrides.get("fusion") or default_of(ModelSettings, "fusion")
    if recipe is not None:
        path = Path(recipe)
    else:
        path = default_recipe(dataset, fusion, bool(overrides.get("private_dim")), overrides.get("objective"))
    data = load_recipe(path) if path is not None else {}
    if schedule is None and dataset.endswith("-mini") and "cpu" in data:
        schedule = "cpu"
    if schedule is not None and schedule not in data:
        raise MMVAEError(
            f"recipe {getattr(path, 'name', path)} has no [{schedule}] schedule"
            if path is not None
            else f"--schedule {schedule}: no recipe for {dataset} with this model"
        )
    sections = {}
    for name, cls in SECTIONS.items():
        s = cls()
        s = overridden(s, data.get(name, {}))
        if schedule is not None:
            s = overridden(s, data[schedule])
        s = overridden(s, overrides)
        sections[name] = s
    m = sections["model"]
    named = [overrides, data.get("model", {}), data.get(schedule, {}) if schedule else {}]
    if m.objective in registry.OBJECTIVES and not any(d.get("fusion") is not None for d in named):
        fusions = registry.OBJECTIVES[m.objective].fusions  # a peer model's objective: its fusion
        if fusions:
            sections["model"] = m = replace(m, fusion=fusions[0])
    if m.objective is None:
        sections["model"] = m = replace(m, objective=registry.paper_objective(m.fusion))
    for s in sections.values():
        for f in fields(s):  # TOML arrays for pairs
            v = getattr(s, f.name)
            if f.metadata.get("pair") and isinstance(v, list):
                object.__setattr__(s, f.name, tuple(v))
        check(s)
    check_model(m, sections["joint"] if joint_ebm else None)
    if sections["train"].missing_ratio:
        check_partial(m, "--missing-ratio")
    return TrainConfig(
        joint_ebm=joint_ebm,
        recipe=getattr(path, "name", None) if path is not None else None,
        schedule=schedule,
        **sections,
    )
