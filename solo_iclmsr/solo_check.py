"""Is the installed solo-learn the patched GitHub main? Read from package metadata; solo is not
imported (importing an unpatched solo can itself fail on today's stack)."""

from __future__ import annotations

import json
from importlib import metadata
from typing import Optional

MAIN_VERSION = "1.0.6"  # the version string of solo-learn's GitHub main (commit 9187ea3)
PATCHED_VERSION = f"{MAIN_VERSION}+iclmsr"
PATCH_RECORD = "iclmsr_patches.json"
MAIN = (f"solo-learn's GitHub main (commit 9187ea3, version {MAIN_VERSION}) patched as "
        f"{PATCHED_VERSION}")
FIX = "run `make install` (or `python patches/solo_patch.py`) in the solo-iclmsr checkout"


def _is_editable(dist: metadata.Distribution) -> bool:
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return False
    return bool(direct.get("dir_info", {}).get("editable"))


def solo_problem() -> Optional[str]:
    """One line saying what is wrong with the installed solo-learn and the command that fixes
    it, or None when it is the patched main.

    None is also returned when solo-learn is absent: the pure-torch core works without it, and
    ``require_solo`` says what to do where solo is needed.
    """
    try:
        dist = metadata.distribution("solo-learn")
    except metadata.PackageNotFoundError:
        return None
    version = dist.version
    if version == PATCHED_VERSION:
        if dist.read_text(PATCH_RECORD) is not None:
            return None
        return (f"solo-learn {version} is installed without its patch record ({PATCH_RECORD}), "
                f"so not by patches/solo_patch.py: {FIX}.")
    if version == MAIN_VERSION:
        if _is_editable(dist):
            return (f"solo-learn main {version} is installed in editable mode and not patched: "
                    f"run `pip uninstall solo-learn`, then `make install` (or `python "
                    f"patches/solo_patch.py --source <that checkout>`) in the solo-iclmsr "
                    f"checkout.")
        return (f"solo-learn main {version} is installed but not patched for today's torch, "
                f"Lightning and torchmetrics: {FIX}.")
    if version.split("+")[0] == "1.0.2":
        return (f"solo-learn {version} (the 2021 PyPI release) is installed, but solo-iclmsr "
                f"needs {MAIN}: {FIX}.")
    return f"solo-learn {version} is installed, but solo-iclmsr needs {MAIN}: {FIX}."


def require_solo() -> None:
    """Raise ImportError with one line unless the patched solo-learn main is installed."""
    problem = solo_problem()
    if problem is None:
        try:
            metadata.distribution("solo-learn")
        except metadata.PackageNotFoundError:
            problem = f"solo-learn is not installed, and solo-iclmsr needs {MAIN}: {FIX}."
    if problem is not None:
        raise ImportError(problem)
