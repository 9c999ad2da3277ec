"""Errors the user can act on, and their exit codes: 0 ok, 1 regression, 2 bad input, 3 could not run."""

from __future__ import annotations

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_BAD_INPUT = 2
EXIT_CANNOT_RUN = 3


class RooflineError(Exception):
    """A problem the user can fix; `cli.py` prints it as one line and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CannotRun(RooflineError):
    """Nothing could be measured: no usable device, or every op failed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_CANNOT_RUN)


class Unsupported(Exception):
    """A variant cannot run on this device or dtype: it is skipped with this reason, never failed."""
