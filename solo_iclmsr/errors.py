"""What counts as the user's input going wrong, not a bug: the commands (``cli``) and the
comparison's jobs (``compare``) print such an error as one line and exit with code 2."""

from __future__ import annotations

__all__ = ["USER_ERRORS", "one_line"]

#: Exceptions that are the user's input (a bad config, a missing dataset, an unusable checkpoint).
USER_ERRORS = (ValueError, FileNotFoundError, OSError)


def one_line(error: BaseException) -> str:
    """The error's message on one line (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__
