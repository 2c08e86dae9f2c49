"""Errors that reach users. Each names the cause (key, file, value) so no one has to read a torch traceback."""

from __future__ import annotations


class HtgrpoError(Exception):
    """Base class for every error the command line reports without a traceback."""


class ConfigError(HtgrpoError, ValueError):
    """A configuration file or override is invalid (unknown key, bad value)."""


class PromptError(HtgrpoError, ValueError):
    """A prompt the backbone or the shapes world cannot handle."""


class RLError(HtgrpoError):
    """A problem with an RL run the user can fix (prompt pool, run directory, resume)."""


class CheckpointError(HtgrpoError, OSError):
    """A checkpoint is missing, incomplete, corrupt or does not match the configuration."""


class WeightsError(HtgrpoError, FileNotFoundError):
    """A metric's or benchmark's local weights directory is missing or lacks files it needs."""


class BenchmarkDataError(HtgrpoError, FileNotFoundError):
    """A benchmark's data file (prompts, questions) is missing or malformed."""


class StorageError(HtgrpoError, OSError):
    """The checkpoint store (a directory or an S3 endpoint) failed: unreachable, refused, or out of retries."""
