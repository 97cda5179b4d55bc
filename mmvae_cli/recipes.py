"""Recipes: TOML files with a paper's settings, resolved into the values a run records.

Resolution order (later wins): built-in defaults < recipe [model]/[train] < the recipe's [cpu]
schedule (for the *-mini datasets, or --schedule cpu) < command-line flags.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from .errors import MMVAEError

DEFAULTS = {
    "model": {"fusion": "mopoe", "latent_dim": 512, "beta": 2.5, "objective": None, "k": 1,
              "posterior": "gaussian", "prior": "gaussian", "learn_prior": False, "subsets": "all",
              "likelihood": "laplace", "likelihood_scale": 0.75, "rescale": False, "arch": "",
              "private_dim": 0},
    "train": {"epochs": 30, "batch_size": 64, "lr": 5e-4, "adam_betas": [0.9, 0.999], "amsgrad": False,
              "seed": 0},
}

FUSION_RECIPE = {"poe": "mvae", "moe": "mmvae", "mopoe": "mopoe", "none": "ebmvae"}
# each paper's own objective, used when neither the recipe nor --objective names one
FUSION_OBJECTIVE = {"poe": "mvae", "moe": "iwae", "mopoe": "elbo", "none": "elbo"}


def recipes_dir() -> Path:
    """recipes/ at the top of the source tree (editable installs and checkouts)."""
    return Path(__file__).resolve().parent.parent / "recipes"


def family(dataset: str) -> str:
    return dataset.removesuffix("-mini")


def default_recipe(dataset: str, fusion: str, private: bool = False) -> Path | None:
    name = "mmvaeplus" if private else FUSION_RECIPE.get(fusion, fusion)
    path = recipes_dir() / f"{family(dataset)}-{name}.toml"
    return path if path.exists() else None


def load_recipe(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise MMVAEError(f"recipe {path} not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise MMVAEError(f"recipe {path}: invalid TOML ({e})") from None
    for section in ("model", "train", "cpu"):
        for key in data.get(section, {}):
            if key not in DEFAULTS["model"] and key not in DEFAULTS["train"] and key not in ("dataset", "extra"):
                raise MMVAEError(f"recipe {path}: unknown setting [{section}] {key}")
    return data


def resolve(dataset: str, recipe: str | Path | None, overrides: dict, schedule: str | None = None) -> dict:
    """Return {"model": {...}, "train": {...}, "recipe": name|None, "schedule": name|None}."""
    model, train = dict(DEFAULTS["model"]), dict(DEFAULTS["train"])
    if recipe is None:
        recipe = default_recipe(dataset, overrides.get("fusion") or model["fusion"], bool(overrides.get("private_dim")))
    data = load_recipe(recipe) if recipe is not None else {}
    model.update(data.get("model", {}))
    train.update(data.get("train", {}))
    if schedule is None and dataset.endswith("-mini") and "cpu" in data:
        schedule = "cpu"
    if schedule is not None:
        if schedule not in data:
            raise MMVAEError(f"recipe {recipe} has no [{schedule}] schedule")
        for k, v in data[schedule].items():
            (model if k in DEFAULTS["model"] else train)[k] = v
    for k, v in overrides.items():
        if v is None:
            continue
        (train if k in DEFAULTS["train"] else model)[k] = v
    if model["objective"] is None:
        model["objective"] = FUSION_OBJECTIVE.get(model["fusion"], "elbo")
    return {"model": model, "train": train, "recipe": Path(recipe).name if recipe else None, "schedule": schedule}
