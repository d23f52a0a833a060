"""Errors a user can act on. Each names the file, column, row or key at fault.

The CLI turns any `FoldstackError` into a one-paragraph message and exit code 2; anything else is a bug:
one line ("internal error: ...") naming the log file under .foldstack/logs/ that holds its traceback, and
exit code 1.
"""


class FoldstackError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = 2


class ConfigError(FoldstackError):
    """params.yaml (or an override) is invalid."""


class DataError(FoldstackError):
    """The data file is missing, unreadable or breaks a rule."""


class BundleError(FoldstackError):
    """A model bundle is missing, incomplete or fails its hash check."""


class StageError(FoldstackError):
    """A stage was asked to run before its inputs exist."""
