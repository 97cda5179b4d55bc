"""The command reference (docs/commands.md), generated from the click app so that it cannot drift.

Regenerate it with `python -m mmvae_cli.cli.reference docs/commands.md` (tests/test_docs.py fails,
naming that command, when the committed page differs from what this module writes).
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import click

REGENERATE = "python -m mmvae_cli.cli.reference docs/commands.md"
_DEFAULT = re.compile(r" \[default: ([^\]]*)\]")


def commands(group: click.Group, path: tuple[str, ...] = ("mmvae",)):
    """(path, command, aliases) for every command under `group`, depth first, in registration order;
    a command registered under several names (eval, evaluate) once, with its other names."""
    seen: dict[int, list[str]] = {}
    for name, cmd in group.commands.items():
        seen.setdefault(id(cmd), []).append(name)
    done = set()
    for name, cmd in group.commands.items():
        if id(cmd) in done:
            continue
        done.add(id(cmd))
        aliases = [a for a in seen[id(cmd)] if a != name]
        yield (*path, name), cmd, aliases
        if isinstance(cmd, click.Group):
            for sub_path, sub, _ in commands(cmd, (*path, name)):
                yield sub_path, sub, []


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, pipes, angle brackets and stars escaped."""
    text = " ".join(text.split())
    return text.replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")


def _value(p: click.Parameter) -> str:
    """What an option takes: choices, a bounded integer, a metavar or the type's name."""
    if getattr(p, "is_flag", False):
        return ""
    t = p.type
    if isinstance(t, click.Choice):
        return " \\| ".join(f"`{c}`" for c in t.choices)
    if isinstance(t, (click.IntRange, click.FloatRange)):
        bounds = []
        if t.min is not None:
            bounds.append(f"{'>' if t.min_open else '>='} {t.min}")
        if t.max is not None:
            bounds.append(f"{'<' if t.max_open else '<='} {t.max}")
        return f"{t.name.split()[0]} {', '.join(bounds)}".strip()
    if p.metavar:
        return _cell(p.metavar)
    return t.name


def _default(p: click.Option, help_: str) -> tuple[str, str]:
    """(default, help without it): from the help's `[default: X]` (settings generated from config.py),
    else from the option itself."""
    m = _DEFAULT.search(help_)
    if m:
        return m.group(1), help_[: m.start()] + help_[m.end() :]
    d = p.default
    unset = d is None or d is False or d == () or type(d).__module__.startswith("click")  # click 8.3+: UNSET
    if p.is_flag and not p.secondary_opts:
        return ("off" if unset else "on"), help_
    return ("" if unset else str(d)), help_


def _usage(path: tuple[str, ...], cmd: click.Command) -> str:
    args = []
    for p in cmd.params:
        if isinstance(p, click.Argument):
            name = p.human_readable_name.upper() + ("..." if p.nargs == -1 else "")
            args.append(name if p.required else f"[{name}]")
    tail = "COMMAND [ARGS]..." if isinstance(cmd, click.Group) else " ".join(args)
    return " ".join([*path, "[OPTIONS]", tail]).strip()


def _help_blocks(text: str) -> list[str]:
    """A docstring as Markdown: click's \\b paragraphs (kept as written) become text blocks."""
    out = []
    for para in inspect.cleandoc(text or "").split("\n\n"):
        lines = para.split("\n")
        if lines[0].strip() == "\b":
            out.append("```text\n" + "\n".join(lines[1:]) + "\n```")
        else:
            out.append(_escape_prose(" ".join(line.strip() for line in lines)))
    return out


def _escape_prose(text: str) -> str:
    return text.replace("<", "&lt;").replace("*", "\\*")


def _anchor(path: tuple[str, ...]) -> str:
    return "-".join(path)


def render(app: click.Group | None = None) -> str:
    """The whole page."""
    if app is None:
        from . import cli as app
    items = [(("mmvae",), app, []), *commands(app)]
    out = [
        "# Command reference",
        "",
        f"<!-- Generated from the click app by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "Every command, option, default and help text of `mmvae`, generated from the command line itself "
        f"(`{REGENERATE}`; a test fails when this page is stale). "
        "`mmvae COMMAND --help` prints the same. The model and training defaults of `mmvae train` are "
        "config.py's; a recipe and its schedule override them where one applies "
        "([configuration](configuration.md)).",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    for path, cmd, aliases in items:
        first = " ".join(inspect.cleandoc(cmd.help or "").split("\n\n")[0].split())
        also = f" (also `{' '.join((*path[:-1], *aliases))}`)" if aliases else ""
        out.append(f"| [`{' '.join(path)}`](#{_anchor(path)}){also} | {_cell(first)} |")
    out.append("")
    for path, cmd, aliases in items:
        out += [f"## {' '.join(path)}", ""]
        if aliases:
            out += [f"Also available as `{' '.join((*path[:-1], *aliases))}`.", ""]
        out += [f"**Usage:** `{_usage(path, cmd)}`", ""]
        for block in _help_blocks(cmd.help):
            out += [block, ""]
        if isinstance(cmd, click.Group):
            subs = ", ".join(
                f"[`{' '.join(sub[len(path) :])}`](#{_anchor(sub)})"
                for sub, _, _ in commands(cmd, path)
                if len(sub) == len(path) + 1
            )
            out += [f"Commands: {subs}.", ""]
        opts = [p for p in cmd.params if isinstance(p, click.Option) and not p.hidden]
        if not opts:
            continue
        out += ["| option | value | default | description |", "| --- | --- | --- | --- |"]
        for p in opts:
            names = " / ".join(f"`{o}`" for o in (*p.opts, *p.secondary_opts))
            default, help_ = _default(p, p.help or "")
            out.append(f"| {names} | {_value(p)} | {_cell(default)} | {_cell(help_)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    """Write the page to the path given (stdout without one)."""
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if argv:
        Path(argv[0]).write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
