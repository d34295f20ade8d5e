"""Errors that reach the user: each message names the file, key or value and says the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EdgesegError(Exception):
    """Base class: the CLI prints the message on one red line and exits with code 2."""


class ConfigError(EdgesegError):
    """A recipe, override or CLI option is wrong."""


class DataError(EdgesegError):
    """A data set, image, mask or list file is missing or malformed."""


class CheckpointError(EdgesegError):
    """A checkpoint or artifact cannot be used as asked."""


class MissingDependencyError(EdgesegError):
    """An optional SDK is not installed; the message gives the install command."""


class TargetError(EdgesegError):
    """A target cannot export or run on this machine."""


class Interrupted(EdgesegError):
    """CTRL-C or SIGTERM: the command stopped cleanly (training saved last.pt).

    The CLI exits with 128 + the signal's number: 130 for SIGINT, 143 for SIGTERM.
    """

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.signum = signum


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so every CTRL-C clean-up path runs for it too."""


class NumericalError(EdgesegError):
    """Training or export produced NaN/inf or outputs beyond tolerance."""


def printable(text: object, limit: int = 80) -> str:
    """`text` for a one-line message: control characters escaped, at most `limit` characters."""
    out = str(text).encode("unicode_escape").decode("ascii")
    return out if len(out) <= limit else out[: limit - 3] + "..."


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def missing_dependency(module: str, extra: str) -> MissingDependencyError:
    """Build the error for an optional SDK that failed to import."""
    return MissingDependencyError(f'{module} is not installed; install it with: pip install "edgeseg[{extra}]"')
