"""The command line's exit codes and its usage error, shared by every subcommand."""

from __future__ import annotations

EXIT_OK = 0
"""Success; for ``verify``: every property holds."""
EXIT_VIOLATED = 1
"""Something was violated or failed while running."""
EXIT_USAGE = 2
"""Bad arguments or a bad environment (a missing tool, an unwritable path)."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (the shell's 128 + SIGINT)."""


class UsageError(Exception):
    """Bad input from the user: printed as ``autoconverge: error: ...`` with exit code 2."""
