"""Error types shared by every stage; each carries the process exit code the CLI uses.

Exit codes let orchestration tell a problem that a retry may fix (1) from one it never
will: a bad configuration (2) or bad data (3).
"""

from __future__ import annotations


class PspnetError(Exception):
    """Base of the project's expected failures: printed without a traceback."""

    exit_code: int = 1


class ConfigError(PspnetError):
    """params.yaml (or an override) is invalid: unknown key, wrong type, value out of range."""

    exit_code = 2


class DataError(PspnetError):
    """The dataset is unusable: validation failed, files missing or malformed."""

    exit_code = 3


#: Exit codes that a retry cannot fix; orchestration must not retry them.
PERMANENT_EXIT_CODES = frozenset({ConfigError.exit_code, DataError.exit_code})
