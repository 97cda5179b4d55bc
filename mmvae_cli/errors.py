"""User-facing errors: one clear line and a documented exit code, never a traceback.

Exit codes (also in docs/bundles.md):
  0  success
  1  unexpected internal error (a bug: please report it)
  2  bad input: missing or malformed data, unknown names, corrupted or incompatible bundle
  3  numerical failure: NaN/Inf loss, a diverging Langevin chain
  75 interrupted by SIGTERM/SIGUSR1 after writing a checkpoint (EX_TEMPFAIL: requeue and --resume)
"""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INPUT = 2
EXIT_NUMERIC = 3
EXIT_INTERRUPTED = 75


class MMVAEError(Exception):
    """An error the user can fix; the CLI prints `error: <message>` and exits with `code`."""

    code = EXIT_INPUT

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class DataError(MMVAEError):
    """Missing data, wrong layout, wrong shapes, NaN values, unknown modality names."""


class BundleError(MMVAEError):
    """A run folder that is missing, corrupted, tampered with or from an incompatible version."""


class NumericalError(MMVAEError):
    """NaN/Inf losses or diverging chains."""

    code = EXIT_NUMERIC


class Interrupted(MMVAEError):
    """Training stopped on a signal after writing its checkpoint."""

    code = EXIT_INTERRUPTED
