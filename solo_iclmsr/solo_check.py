"""Is the solo-learn Python imports the patched GitHub main? Read from package metadata and from
where the ``solo`` package would be found; solo is not imported (importing an unpatched solo can
itself fail on today's stack)."""

from __future__ import annotations

import importlib.util
import json
import os
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
            return _shadowed(dist)
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


def _shadowed(dist: metadata.Distribution) -> Optional[str]:
    """The ``solo`` package Python would import, when it is not the installed one: run from the
    root of a solo-learn checkout (where ``main_pretrain.py`` and ``scripts/`` are), the
    checkout's unpatched ``solo/`` comes first on ``sys.path``."""
    try:
        spec = importlib.util.find_spec("solo")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    installed = os.path.realpath(str(dist.locate_file(os.path.join("solo", "__init__.py"))))
    found = os.path.realpath(spec.origin)
    if found == installed:
        return None
    return (f"Python imports solo from {os.path.dirname(found)}, not the patched solo-learn "
            f"installed at {os.path.dirname(installed)} (a solo-learn checkout on sys.path, e.g. "
            f"the current folder, shadows it): run from another folder, or use `solo-iclmsr "
            f"pretrain` instead of the checkout's main_pretrain.py.")


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
