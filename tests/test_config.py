"""The run configuration (config.py), recipes as package data, the wheel, and the run lifecycle's logs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from helpers_cli import run, write_tiny_polymnist

from mmvae_cli import config, recipe
from mmvae_cli.errors import MMVAEError

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_declares_help_source_and_a_valid_default():
    for cls in (
        *config.SECTIONS.values(),
        config.FitSettings,
        config.EnergyDefaults,
        config.PriorFitSettings,
        config.RuntimeSettings,
        config.ClassifierSettings,
        config.EvalSettings,
        config.GenerateSettings,
        config.CommandSettings,
    ):
        for f in fields(cls):
            assert f.metadata["help"] and f.metadata["source"], (cls.__name__, f.name)
        config.check(cls())  # the defaults are in range


@pytest.mark.parametrize(
    "command, flag, section, field",
    [
        ("coherence", "--n-joint", config.EvalSettings, "n_joint"),
        ("likelihood", "--k", config.EvalSettings, "k"),
        ("latent", "--n-train", config.EvalSettings, "n_train"),
        ("fid", "--n-fid", config.EvalSettings, "n_fid"),
        ("all_", "--n-joint", config.EvalSettings, "all_n_joint"),
        ("all_", "--k", config.EvalSettings, "all_k"),
        ("all_", "--ll-limit", config.EvalSettings, "all_ll_limit"),
        ("all_", "--n-train", config.EvalSettings, "n_train"),
        ("all_", "--n-fid", config.EvalSettings, "n_fid"),
        ("sample", "--n", config.GenerateSettings, "sample_n"),
        ("cross_generate", "--n", config.GenerateSettings, "cross_generate_n"),
    ],
)
def test_eval_and_generate_defaults_are_the_config_fields(command, flag, section, field):
    """The commands' sample counts come from config.py: default, lower bound and source in --help."""
    import click

    from mmvae_cli.cli import eval_cmd, generate_cmd

    cmd = getattr(eval_cmd, command, None) or getattr(generate_cmd, command)
    opt = next(p for p in cmd.params if flag in p.opts)
    f = next(f for f in fields(section) if f.name == field)
    assert opt.default == config.default_of(section, field) and opt.show_default
    assert isinstance(opt.type, click.IntRange) and opt.type.min == f.metadata["min"]
    assert f.metadata["source"] in opt.help


def test_energy_defaults_have_one_source():
    """The energy net's width, depth and activation, fit-ebm's epochs, learning rates and betas per objective
    and --n-joint: config.py's fields, which the net, the fit's resolution and the flags read."""
    from mmvae_cli.cli import cli
    from mmvae_cli.priors.ebm.net import EnergyConfig, EnergyNet

    e, d = config.EnergySettings(), config.ENERGY_DEFAULTS
    assert EnergyNet(3).config == EnergyConfig(dim=3)
    assert (EnergyConfig(dim=3).hidden, EnergyConfig(dim=3).layers) == (e.energy_hidden, e.energy_layers)
    assert EnergyConfig(dim=3).activation == e.activation("ml") == d.ml_activation
    assert (
        e.activation("denoising") == d.sm_activation
        and config.EnergySettings(energy_activation="elu").activation("ml") == "elu"
    )
    ml, sm = (
        config.FitSettings(objective="ml").resolved("mopoe"),
        config.FitSettings(objective="sliced").resolved("mopoe"),
    )
    assert config.FitSettings().resolved("mopoe").objective == d.objective
    assert (ml.epochs, ml.lr, ml.betas) == (d.epochs, d.ml_lr, d.ml_betas)
    assert (sm.epochs, sm.lr, sm.betas) == (d.epochs, d.sm_lr, d.sm_betas)
    for name in ("fit-ebm", "fit-prior"):
        opt = next(p for p in cli.commands[name].params if "--n-joint" in p.opts)
        assert opt.default == config.default_of(config.EvalSettings, "fit_n_joint")


def test_shared_options_take_their_defaults_from_config():
    """--device, --seed, --split and --prior of every command that has them (train's and the fits' --seed
    are their sections' fields): CommandSettings' defaults, shown by --help with their source."""
    import click

    from mmvae_cli.cli import cli

    def commands(group, path=()):
        for name, cmd in group.commands.items():
            yield from commands(cmd, (*path, name)) if isinstance(cmd, click.Group) else [((*path, name), cmd)]

    seen = set()
    for path, cmd in commands(cli):
        for opt in cmd.params:
            name = (
                opt.name if isinstance(opt, click.Option) and opt.name in ("device", "seed", "split", "prior") else None
            )
            if name is None or opt.default is None:  # None: the run's section resolves it (train --seed)
                continue
            f = next(f for f in fields(config.CommandSettings) if f.name == name)
            assert opt.default == config.default_of(config.CommandSettings, name) and opt.show_default, path
            assert f.metadata["source"] in opt.help, path
            seen.add(name)
    assert seen == {"device", "seed", "split", "prior"}


@pytest.mark.parametrize(
    "section, field, bad, needle",
    [
        (config.TrainSettings, "batch_size", 0, "--batch-size must be >= 1"),
        (config.TrainSettings, "lr", 0.0, "--lr must be > 0"),
        (config.TrainSettings, "lr", float("nan"), "--lr must be a finite number"),
        (config.TrainSettings, "adam_betas", (1.0, 0.9), "--adam-betas must be < 1"),
        (config.ModelSettings, "beta", -0.5, "--beta must be >= 0"),
        (config.ModelSettings, "fusion", "sum", "--fusion must be one of"),
        (config.ModelSettings, "latent_dim", 2.5, "--latent-dim must be an integer"),
        (config.ModelSettings, "learn_prior", "yes", "--learn-prior must be true or false"),
        (config.LangevinSettings, "steps", -1, "--steps must be >= 0"),
        (config.LangevinSettings, "clip_grad", 0.0, "--clip-grad must be > 0"),
        (config.FitSettings, "sigma", 0.0, "--sigma must be > 0"),
    ],
)
def test_check_names_the_flag_and_the_range(section, field, bad, needle):
    from dataclasses import replace

    with pytest.raises(MMVAEError, match=needle.replace("+", r"\+")):
        config.check(replace(section(), **{field: bad}))


def test_resolution_order_defaults_recipe_schedule_flags():
    cfg = recipe.resolve_train("polymnist-mini", {})
    assert (cfg.recipe, cfg.schedule) == ("polymnist-mopoe.toml", "cpu")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr) == (75, 32, 1e-3)  # the [cpu] schedule
    assert recipe.resolve_train("polymnist-mini", {}, schedule="compare").train.lr == 5e-4  # the recipe's [train]
    assert cfg.model.latent_dim == 512 and cfg.model.arch == "conv28"  # the recipe's [model]
    cfg = recipe.resolve_train("polymnist-mini", {"epochs": 3, "fusion": "moe"})
    assert cfg.train.epochs == 3 and cfg.recipe == "polymnist-mmvae.toml" and cfg.model.objective == "iwae"
    cfg = recipe.resolve_train("polymnist", {})
    assert cfg.schedule is None and cfg.train.epochs == 300 and cfg.train.batch_size == 256
    cfg = recipe.resolve_train("my-data", {})  # no recipe: the fields' defaults
    assert cfg.recipe is None and cfg.train.epochs == config.TrainSettings().epochs


def test_recipe_values_are_checked_like_flags(tmp_path):
    bad = tmp_path / "r.toml"
    bad.write_text("[train]\nlr = -1.0\n")
    with pytest.raises(MMVAEError, match="--lr must be > 0"):
        recipe.resolve_train("polymnist", {}, bad)
    bad.write_text("[model]\nwidth = 3\n")
    with pytest.raises(MMVAEError, match=r"unknown setting \[model\] width"):
        recipe.resolve_train("polymnist", {}, bad)


def test_polymnist_text_mini_takes_its_own_recipe():
    cfg = recipe.resolve_train("polymnist-text-mini", {})
    assert (cfg.recipe, cfg.schedule) == ("polymnist-text-mopoe.toml", "cpu")
    assert cfg.model.rescale and (cfg.train.epochs, cfg.train.batch_size) == (40, 32)


def test_every_shipped_recipe_resolves():
    names = sorted(_shipped())
    assert len(names) >= 8
    for name in names:
        data = recipe.load_recipe(recipe.recipe_files() / name)
        for schedule in [None, *[s for s in data if s not in config.SECTIONS]]:
            recipe.resolve_train(name.split("-")[0], {}, recipe.recipe_files() / name, schedule)


def test_recipe_include_applies_shared_blocks_and_the_recipe_wins(tmp_path):
    (tmp_path / "base.toml").write_text(
        "[model]\nlatent_dim = 8\nbeta = 0.5\n\n[train]\nlr = 1e-3\nepochs = 7\n\n[short]\nepochs = 3\n"
    )
    (tmp_path / "later.toml").write_text("[train]\nepochs = 9\n")
    (tmp_path / "r.toml").write_text(
        'include = ["base.toml", "later.toml", "_compare.toml"]\n\n[model]\nlatent_dim = 16\n\n[short]\nlr = 2e-3\n'
    )
    r = tmp_path / "r.toml"
    cfg = recipe.resolve_train("my-data", {}, r)
    assert (cfg.model.latent_dim, cfg.model.beta, cfg.train.lr) == (16, 0.5, 1e-3)  # the recipe wins, the rest stays
    assert cfg.train.epochs == 9  # a later include wins over an earlier one
    short = recipe.resolve_train("my-data", {}, r, "short")  # a schedule merges key by key too
    assert (short.train.epochs, short.train.lr) == (3, 2e-3)
    compare = recipe.resolve_train("my-data", {}, r, "compare")  # not next to r.toml: the shipped block
    assert (compare.train.epochs, compare.train.batch_size, compare.train.amsgrad) == (100, 32, False)
    (tmp_path / "mine.toml").write_text('include = "polymnist-mmvaeplus.toml"\n\n[cpu]\nepochs = 2\n')
    mine = recipe.resolve_train("polymnist-mini", {}, tmp_path / "mine.toml")  # a shipped recipe, changed
    shipped = recipe.resolve_train("polymnist-mini", {}, recipe.recipe_files() / "polymnist-mmvaeplus.toml")
    assert mine.train.epochs == 2 and mine.model == shipped.model and mine.recipe == "mine.toml"


@pytest.mark.parametrize(
    "files, needle",
    [
        ({"r.toml": 'include = ["nope.toml"]\n'}, "recipe r.toml: include 'nope.toml' not found"),
        ({"r.toml": "include = 3\n"}, "recipe r.toml: include must be a recipe file name or a list of them"),
        ({"r.toml": 'include = ["", "a.toml"]\n'}, "include must be a recipe file name"),
        ({"r.toml": 'include = ["r.toml"]\n'}, "recipe r.toml: include cycle r.toml -> r.toml"),
        (
            {"r.toml": 'include = ["a.toml"]\n', "a.toml": 'include = ["b.toml"]\n', "b.toml": 'include = "a.toml"\n'},
            "recipe a.toml: include cycle a.toml -> b.toml -> a.toml",
        ),
        ({"r.toml": 'include = ["a.toml"]\n', "a.toml": "[train]\nwidth = 3\n"}, r"recipe a.toml: unknown setting"),
        ({"r.toml": 'include = ["a.toml"]\n', "a.toml": "[train\n"}, "recipe a.toml: invalid TOML"),
        ({"r.toml": '[train]\ninclude = ["a.toml"]\n'}, r"unknown setting \[train\] include"),
    ],
)
def test_recipe_include_errors_are_one_line(tmp_path, files, needle):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(MMVAEError, match=needle) as e:
        recipe.resolve_train("polymnist", {}, tmp_path / "r.toml")
    assert "\n" not in str(e.value)


def _shipped():
    return {p.name: p for p in recipe.recipe_files().iterdir() if p.name.endswith(".toml")}


def test_recipes_state_only_what_differs():
    """A recipe names its fusion and what differs from config.py's defaults and from its includes; a
    schedule only what differs from the recipe's sections (shared blocks, recipes/_*.toml, aside)."""
    import tomllib

    for name, path in _shipped().items():
        own = tomllib.loads(path.read_text())
        inherited = {}
        for inc in [own["include"]] if isinstance(own.get("include"), str) else own.get("include", []):
            for section, values in recipe.load_recipe(recipe.recipe_files() / inc).items():
                inherited.setdefault(section, {}).update(values)
        for section, cls in config.SECTIONS.items():
            for key, value in own.get(section, {}).items():
                default = inherited.get(section, {}).get(key, config.default_of(cls, key))
                if key == "objective" and default is None:
                    default = config.FUSIONS[recipe.load_recipe(path)["model"]["fusion"]].objective
                assert value != default or key == "fusion", f"{name} [{section}] {key} restates {value!r}"
        if name.startswith("_"):
            continue
        plain = recipe.resolve_train("my-data", {}, path)
        for schedule in [s for s in own if s not in config.SECTIONS and s != "include"]:
            for key, value in own[schedule].items():
                now = [getattr(getattr(plain, s), key) for s in config.SECTIONS if hasattr(getattr(plain, s), key)]
                assert now != [value], f"{name} [{schedule}] {key} restates {value!r}"


def test_each_model_recipe_trains_the_model_it_is_named_after():
    """recipes/<family>-<model>.toml is what `train` picks for a fusion's model (registry.FUSIONS)."""
    for name, path in _shipped().items():
        if name.startswith("_"):
            continue
        family, model = name.removesuffix(".toml").rsplit("-", 1)
        m = recipe.resolve_train("my-data", {}, path).model
        peer = config.OBJECTIVES[m.objective].model  # a peer model's objective names its own recipe
        assert model == (peer or ("mmvaeplus" if m.private_dim else config.FUSIONS[m.fusion].model)), name
        assert recipe.default_recipe(family, m.fusion, bool(m.private_dim), m.objective) == path


def test_old_manifest_settings_read_back():
    """Bundles from before config.py kept mvae_k under model.extra and ebm_lr under train."""
    cfg = recipe.TrainConfig.from_dict(
        {
            "model": {"fusion": "poe", "objective": "mvae", "extra": {"mvae_k": 2}, "latent_dim": 8},
            "train": {"epochs": 2, "ebm_lr": 1e-4, "ebm_betas": [0.5, 0.9]},
            "recipe": None,
            "schedule": None,
        }
    )
    assert cfg.model.mvae_subsets == 2 and cfg.joint.ebm_lr == 1e-4 and cfg.joint.ebm_betas == (0.5, 0.9)
    assert cfg.model.private_prior == "learned"
    assert (cfg.joint.reg, cfg.joint.reg_on, cfg.joint.feedback) == (0.0, "energies", 1.0)
    # a joint run from session 4 (reg 0.1 on the energies, Algorithm 1's prior term) resumes as it trained
    old = recipe.TrainConfig.from_dict({"joint": {"ebm_lr": 2e-5, "reg": 0.1}, "joint_ebm": True})
    assert (old.joint.reg, old.joint.reg_on, old.joint.feedback) == (0.1, "energies", 1.0)
    new = recipe.TrainConfig.from_dict(recipe.resolve_train("polymnist-mini", {"prior": "ebm"}).to_dict())
    assert (new.joint.reg, new.joint.reg_on, new.joint.feedback) == (1.0, "gauge", 0.5)


def test_the_former_name_level_of_the_gauge_is_still_read(tmp_path, capsys):
    """--ebm-reg-on gauge was called level until issue 25: flags, recipes and manifests that say level
    get gauge (the same term), and the manifest written says gauge."""
    args = ["train", "polymnist-mini", "--prior", "ebm", "--dry-run", "--out", tmp_path / "x", "--ebm-reg-on"]
    code, out, err = run([*args, "level"], capsys)
    assert code == 0 and json.loads(out)["joint"]["reg_on"] == "gauge", err
    from mmvae_cli.config import JointEnergySettings

    assert JointEnergySettings(reg_on="level").reg_on == "gauge"
    old = recipe.TrainConfig.from_dict({"joint": {"reg": 1.0, "reg_on": "level"}, "joint_ebm": True})
    assert old.joint.reg_on == "gauge" and old.to_dict()["joint"]["reg_on"] == "gauge"
    flag = recipe.resolve_train("polymnist-mini", {"prior": "ebm", "reg_on": "level"})
    assert flag.joint.reg_on == "gauge"


def test_dry_run_prints_the_resolved_settings_and_writes_nothing(tmp_path, capsys):
    code, out, err = run(["train", "polymnist-mini", "--dry-run", "--lr", "2e-3", "--out", tmp_path / "x"], capsys)
    assert code == 0, err
    got = json.loads(out)
    assert got["train"]["lr"] == 2e-3 and got["train"]["epochs"] == 75 and got["schedule"] == "cpu"
    assert not (tmp_path / "x").exists()


def test_resume_refuses_changed_settings(tmp_path, capsys):
    root = write_tiny_polymnist(tmp_path / "data", n_train=16, n_test=4)
    out = tmp_path / "r"
    base = [
        "train",
        "polymnist",
        "--data-root",
        root,
        "--out",
        out,
        "--latent-dim",
        "4",
        "--batch-size",
        "8",
        "--device",
        "cpu",
    ]
    assert run([*base, "--epochs", "1", "--max-steps", "1"], capsys)[0] == 0
    before = (out / "manifest.json").read_bytes()
    code, _, err = run([*base, "--resume", "--lr", "0.1"], capsys)
    assert code == 2 and "--lr cannot change when resuming" in err, err
    assert (out / "manifest.json").read_bytes() == before


def test_tensorboard_writes_scalars_per_epoch(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = write_tiny_polymnist(tmp_path / "data", n_train=16, n_test=4)
    tb, log = tmp_path / "tb", tmp_path / "log.jsonl"
    code, _, err = run(
        [
            "train",
            "polymnist",
            "--data-root",
            root,
            "--out",
            tmp_path / "r",
            "--latent-dim",
            "4",
            "--batch-size",
            "8",
            "--epochs",
            "2",
            "--device",
            "cpu",
            "--tensorboard",
            tb,
            "--log-jsonl",
            log,
        ],
        capsys,
    )
    assert code == 0, err
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"epoch/loss", "epoch/rec", "epoch/kl", "epoch/lr", "epoch/seconds"} <= set(tags)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e.step for e in acc.Scalars("epoch/loss")] == [1, 2]
    assert [e.value for e in acc.Scalars("epoch/loss")] == pytest.approx([r["loss"] for r in rows])


def test_every_subpackage_ships_in_the_wheel():
    """pyproject lists the packages (recipes/ is mapped into the package): a new subpackage must be listed."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.relative_to(ROOT).parent.parts) for p in (ROOT / "mmvae_cli").rglob("__init__.py")}
    assert found | {"mmvae_cli.recipes"} == listed


def _wheel_python(tmp: Path) -> tuple[list[str], dict]:
    """Build the wheel, install it (no dependencies) into its own folder; the command and environment
    that import mmvae_cli from there, away from the source tree and the editable install."""
    dist, site, src = tmp / "dist", tmp / "site", tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    for name in ("mmvae_cli", "recipes"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode != 0:
        pytest.fail(f"building the wheel failed: {r.stderr[-2000:]}")
    wheel = next(dist.glob("mmvae_cli-*.whl"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site)}
    return [sys.executable, "-c", "import sys; from mmvae_cli.cli import main; main(sys.argv[1:])"], env


def test_wheel_install_resolves_the_same_recipe_as_the_source_tree(tmp_path, capsys):
    cmd, env = _wheel_python(tmp_path)
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mmvae_cli, mmvae_cli.recipe as c; print(mmvae_cli.__file__); print(c.recipe_files())",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(tmp_path / "site")) for line in where.stdout.split()), where.stdout
    shipped = subprocess.run(  # every recipe and shared block (the includes) is in the wheel
        [
            sys.executable,
            "-c",
            "import mmvae_cli.recipe as c; print(*sorted(p.name for p in c.recipe_files().iterdir()))",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert set(shipped.stdout.split()) >= set(_shipped()), shipped.stdout + shipped.stderr
    r = subprocess.run(
        [*cmd, "train", "polymnist-mini", "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    code, out, err = run(["train", "polymnist-mini", "--dry-run"], capsys)
    assert code == 0, err
    wheel, source = json.loads(r.stdout), json.loads(out)
    assert wheel == source
    assert (wheel["train"]["epochs"], wheel["train"]["batch_size"], wheel["schedule"]) == (75, 32, "cpu")
