"""Is the installed solo-learn the patched 1.0.2? Read from package metadata, importing nothing."""

from __future__ import annotations

from importlib import metadata
from typing import Optional

PATCHED_VERSION = "1.0.2+iclmsr"
PATCH_RECORD = "iclmsr_patches.json"
FIX = "run `make install` (or `python patches/solo_patch.py`) in the solo-iclmsr checkout"


def solo_problem() -> Optional[str]:
    """One line saying what is wrong with the installed solo-learn, or None if it is usable.

    ``None`` is also returned when solo-learn is absent: the pure-torch core works without it,
    and the modules that need solo say so when imported.
    """
    try:
        dist = metadata.distribution("solo-learn")
    except metadata.PackageNotFoundError:
        return None
    if dist.version == PATCHED_VERSION and dist.read_text(PATCH_RECORD) is not None:
        return None
    if dist.version == "1.0.2":
        return f"solo-learn 1.0.2 is installed but not patched for torch 2 / Lightning 2: {FIX}."
    return f"solo-learn {dist.version} is installed, but solo-iclmsr needs solo-learn {PATCHED_VERSION}: {FIX}."


def require_solo() -> None:
    """Raise ImportError with one line unless a patched solo-learn is installed."""
    problem = solo_problem()
    if problem is None:
        try:
            metadata.distribution("solo-learn")
        except metadata.PackageNotFoundError:
            problem = f"solo-learn is not installed: {FIX}."
    if problem is not None:
        raise ImportError(problem)
