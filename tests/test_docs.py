"""The documentation is checked against the code: the generated command reference is current, every
`mmvae ...` command line in README.md and docs/ parses against the CLI (commands, options, types and
ranges, without running anything), and the version printed is the changelog's newest."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import fields, is_dataclass
from pathlib import Path

import click
import pytest

from mmvae_cli import config
from mmvae_cli.cli import cli, reference

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_BLOCKS = {"", "sh", "bash", "shell", "console", "text"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
OPERATORS = set("();<>|&")


# --- what the documentation says ------------------------------------------------------------------


def _blocks(text: str):
    """(first line number, lines) of every fenced code block in a shell-like language."""
    fence, lang, start, lines = None, "", 0, []
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence, lang, start, lines = m.group(1), m.group(2).lower(), n + 1, []
        elif fence is not None and line.strip().startswith(fence):
            if lang in SHELL_BLOCKS:
                yield start, lines
            fence = None
        elif fence is not None:
            lines.append(line)


def _logical_lines(start: int, lines: list[str]):
    """(line number, text) with backslash continuations joined."""
    buf, first = "", None
    for n, line in enumerate(lines, start):
        first = n if first is None else first
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        yield first, buf + line
        buf, first = "", None
    if buf:
        yield first, buf


def _words(line: str) -> list[str]:
    lex = shlex.shlex(line.strip().removeprefix("$ "), posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    return list(lex)


def _invocations(words: list[str]):
    """The argument lists of every `mmvae ...` (or `-m mmvae_cli ...`) in one shell line."""
    i = 0
    while i < len(words):
        w, at_start = words[i], i == 0 or set(words[i - 1]) <= OPERATORS
        i += 1
        if not (w == "mmvae" or (at_start and w.endswith("/mmvae")) or (w == "mmvae_cli" and words[i - 2] == "-m")):
            continue
        args = []
        while i < len(words) and not set(words[i]) <= OPERATORS:
            args.append(words[i])
            i += 1
        yield args


def documented_command_lines():
    """(where, arguments) of every mmvae command line in the fenced shell blocks of the Markdown pages."""
    for page in PAGES:
        for start, lines in _blocks(page.read_text()):
            for n, line in _logical_lines(start, lines):
                if "mmvae" not in line:
                    continue
                where = f"{page.relative_to(ROOT)}:{n}"
                try:
                    words = _words(line)
                except ValueError as e:  # unbalanced quotes
                    yield where, ["<unparsable shell line>", str(e)]
                    continue
                for args in _invocations(words):
                    yield where, args


# --- what the command line accepts -----------------------------------------------------------------


def _sections():
    return [
        c
        for c in vars(config).values()
        if isinstance(c, type) and is_dataclass(c) and fields(c) and all(f.metadata for f in fields(c))
    ]


def _range_errors(cmd: click.Command, params: dict) -> None:
    """config.check on the values given to options generated from config.py (their ranges live there)."""
    by_name = {p.name: p for p in cmd.params if isinstance(p, click.Option)}
    for cls in _sections():
        given = {}
        for f in fields(cls):
            p = by_name.get(f.name)
            if p is not None and params.get(f.name) is not None and (p.help or "").startswith(f.metadata["help"]):
                given[f.name] = params[f.name]
        if given:
            config.check(config.overridden(cls(), given))


def parse_error(args: list[str]) -> str | None:
    """None when `mmvae ARGS` parses against the CLI (commands, options, types, ranges), else why not.
    Nothing runs: the subcommand's context is made (parsing and conversion), its callback is not called."""
    cmd, ctx, name = cli, None, "mmvae"
    args = list(args)
    try:
        while isinstance(cmd, click.Group):
            ctx = click.Context(cmd, info_name=name, parent=ctx)
            if not args or args[0] in ("--help", "-h", "--version"):
                return None
            sub = cmd.get_command(ctx, args[0])
            if sub is None:
                return f"no command {args[0]!r} in `{ctx.command_path}`"
            cmd, name = sub, args.pop(0)
        sub_ctx = cmd.make_context(name, args, parent=ctx)
        _range_errors(cmd, sub_ctx.params)
    except click.exceptions.Exit:  # --help
        return None
    except click.ClickException as e:
        return e.format_message()
    except config.MMVAEError as e:
        return str(e)
    return None


CASES = list(documented_command_lines())


def test_the_pages_hold_command_lines():
    assert len(CASES) > 80, len(CASES)
    assert {w.split(":")[0] for w, _ in CASES} >= {"README.md", "docs/commands.md", "docs/cluster.md"}


@pytest.mark.parametrize("where, args", CASES, ids=[w for w, _ in CASES])
def test_every_documented_command_line_parses(where, args):
    why = parse_error(args)
    assert why is None, f"{where}: `mmvae {' '.join(args)}`: {why}"


@pytest.mark.parametrize(
    "line, needle",
    [
        ("mmvae train polymnist-mini --fusion mopoe --no-such-flag", "No such option"),
        ("mmvae fit-ebm RUN --ebm-feedback 0.5", "No such option"),  # a train flag on another command
        ("mmvae trian polymnist-mini", "no command 'trian'"),
        ("mmvae eval coherance RUN --classifiers CLF", "no command 'coherance'"),
        ("mmvae train polymnist-mini --fusion pope", "Invalid value for '--fusion'"),
        ("mmvae train polymnist-mini --epochs ten", "Invalid value for '--epochs'"),
        ("mmvae train polymnist-mini --ebm-feedback 1.5", "--ebm-feedback must be <= 1"),
        ("mmvae sample RUN -n 0 --out s.png", "Invalid value for '-n'"),
        ("mmvae sample RUN --out s.png --step-size 0", "--step-size must be > 0"),
        ("mmvae train", "Missing argument"),
    ],
)
def test_an_invented_flag_command_or_value_is_caught(line, needle):
    (args,) = list(_invocations(_words(line)))
    why = parse_error(args)
    assert why is not None and needle in why, why


def test_command_lines_are_found_across_continuations_comments_and_pipes(tmp_path):
    text = "```bash\nOUT=x mmvae train d \\\n    --epochs 3   # comment\nfoo && venv/bin/mmvae sample R --out s.png > log\n```\n"
    found = [
        args
        for start, lines in _blocks(text)
        for _, ln in _logical_lines(start, lines)
        for args in _invocations(_words(ln))
    ]
    assert found == [["train", "d", "--epochs", "3"], ["sample", "R", "--out", "s.png"]]
    assert parse_error(found[0]) is None and parse_error(found[1]) is None


# --- inline code: `mmvae COMMAND ... --flag` in prose and tables names flags that exist -------------

INLINE = re.compile(r"`(mmvae [^`]+)`")


def _leaf_options(cmd: click.Command) -> set[str]:
    if isinstance(cmd, click.Group):
        return set().union(*(_leaf_options(c) for c in cmd.commands.values()))
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}


def inline_spans():
    for page in PAGES:
        in_block = False
        for n, line in enumerate(page.read_text().splitlines(), 1):
            if FENCE.match(line):
                in_block = not in_block
            elif not in_block:
                for m in INLINE.finditer(line):
                    yield f"{page.relative_to(ROOT)}:{n}", m.group(1).replace("\\|", "|")


def unknown_flags(span: str) -> list[str]:
    """The --flags of an inline `mmvae ...` span that its command (or, for a group, none of its commands)
    has; alternatives a|b take the first as the command."""
    words = span.split()[1:]
    cmd, ctx = cli, click.Context(cli, info_name="mmvae")
    for w in words:
        if not isinstance(cmd, click.Group):
            break
        sub = cmd.get_command(ctx, w.split("|")[0])
        if sub is None:
            break
        cmd, ctx = sub, click.Context(sub, info_name=w, parent=ctx)
    known = _leaf_options(cmd) | {"--version"}
    flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", span)
    return [f for f in flags if f not in known]


SPANS = list(inline_spans())


def test_inline_command_spans_name_existing_flags():
    assert len(SPANS) > 30
    bad = [(where, span, unknown_flags(span)) for where, span in SPANS if unknown_flags(span)]
    assert not bad, bad


def test_an_invented_flag_in_prose_is_caught():
    assert unknown_flags("mmvae fit-ebm RUN [--out NEW] [--no-such-flag 3]") == ["--no-such-flag"]
    assert unknown_flags("mmvae eval coherence|fid RUN --prior KIND") == []


# --- the generated reference and the version -------------------------------------------------------


def test_command_reference_is_current():
    page = ROOT / "docs" / "commands.md"
    assert page.read_text() == reference.render(), (
        f"docs/commands.md is stale: regenerate it with `{reference.REGENERATE}`"
    )


def test_version_printed_is_the_changelogs_newest():
    top = re.search(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert top, "CHANGELOG.md has no '## [X.Y.Z]' version heading"
    r = subprocess.run([sys.executable, "-m", "mmvae_cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == ["mmvae,", "version", top.group(1)], r.stdout
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == top.group(1)


def test_readme_links_point_to_files_and_headings():
    """README.md is not part of the site (mkdocs checks the pages' links): its relative links are checked here."""
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", text)
    assert len(links) > 20
    for target, anchor in links:
        if "://" in target:
            continue
        path = ROOT / target
        assert path.exists(), f"README.md links to {target}, which does not exist"
        if anchor:
            slugs = {
                re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", path.read_text(), re.M)
            }
            assert anchor in slugs, f"README.md links to {target}#{anchor}, a heading it does not have"
