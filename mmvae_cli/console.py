"""Messages and progress bars: always on stderr (stdout is for --json), bars only on a terminal; the
running command line, as manifests record it."""

from __future__ import annotations

import sys

from tqdm import tqdm


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def progress(iterable=None, disable: bool = False, **kw):
    """A tqdm bar on stderr, off when stderr is not a terminal (batch jobs, pipes, CI)."""
    is_tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(iterable, file=sys.stderr, disable=disable or not is_tty, leave=False, **kw)


INVOCATION: list[str] = []  # the arguments of the running command (set by cli.main), recorded in manifests


def invocation() -> str:
    """The running command line, as recorded next to evaluation results."""
    return " ".join(["mmvae", *INVOCATION])
