"""The errors a user sees: each message names the file, option or path and the problem.

The command line prints them as `segdist: error: ...` and exits with status 2; the Python API
raises them. Nothing here imports anything of segdist's, so every layer can raise them.
"""

from __future__ import annotations


class DataError(Exception):
    """Bad input or state that stops the whole run; the message names the file and the problem."""


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and lists the valid choices."""


class CheckpointError(DataError):
    """A checkpoint could not be written or read; the message names the path."""


class NonFiniteLoss(DataError):
    """The loss was NaN or inf on some rank; the message names the step."""
