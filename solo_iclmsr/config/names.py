"""The one "did you mean" helper of the project: every unknown name (config key, method,
backbone, dataset) is reported by it, in one line, with the nearest valid names."""

from __future__ import annotations

import difflib
from typing import Iterable, Sequence

__all__ = ["nearest", "unknown_name"]


def nearest(name: str, valid: Iterable[str], n: int = 3) -> Sequence[str]:
    """The valid names closest to ``name`` (at most ``n``; none when nothing is close)."""
    return difflib.get_close_matches(str(name), list(valid), n=n, cutoff=0.6)


def unknown_name(key: str, name: object, valid: Iterable[str], what: str = "") -> str:
    """One line: ``<key>=<name> is unknown[ what]. Did you mean ...? Valid: ...``.

    Args:
        key: the config key at fault (``method``, ``iclmsr.n_strata``, ...), or the full key of
            an unknown key itself, then ``name`` is ``None``.
        name: the value given (``None`` for an unknown key).
        valid: the valid names.
        what: optional words saying what the valid names are.
    """
    valid = sorted(valid)
    close = nearest(str(name if name is not None else key.rsplit(".", 1)[-1]), valid)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(valid) if len(valid) <= 30 else ", ".join(valid[:30]) + ", ..."
    head = f"{key} is an unknown key" if name is None else f"{key}={name!r} is unknown"
    return f"{head}{' ' + what if what else ''}.{hint} Valid: {listing}."
