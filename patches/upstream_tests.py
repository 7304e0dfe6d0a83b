"""pytest plugin: run solo-learn main's own tests against the installed, patched solo-learn.

``make test-upstream`` loads it with ``-p upstream_tests`` (``patches/`` on ``PYTHONPATH``) in
the folder that ``patches/solo_patch.py`` writes upstream's ``tests/`` to. It

* stops the run when ``solo`` would come from anywhere but the installed distribution (a source
  tree's ``solo/`` folder on the path would shadow the patched wheel);
* skips, each with its reason, the tests that need the network, and nothing else; set
  ``SOLO_LEARN_TESTS_NETWORK=1`` where the network is reachable to run them too.

No test file or assertion of upstream is changed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional

import pytest

NETWORK_ENV = "SOLO_LEARN_TESTS_NETWORK"
_CIFAR10 = (f"needs the network: downloads CIFAR-10 (about 170 MB) through torchvision; set "
            f"{NETWORK_ENV}=1 where it is reachable")

# node id (relative to the folder holding tests/) -> why it is skipped
NEEDS_NETWORK: Dict[str, str] = {
    "tests/data/test_classification_dataloader.py::test_datasets": _CIFAR10,
    "tests/data/test_classification_dataloader.py::test_data": _CIFAR10,
    "tests/data/test_pretrain_dataloader.py::test_data": _CIFAR10,
}

FIX = "run `make install` (or `python patches/solo_patch.py`) in the solo-iclmsr checkout"


def _installed_solo() -> Optional[Path]:
    """The folder of the installed ``solo`` package, or None if solo-learn is not installed."""
    try:
        dist = metadata.distribution("solo-learn")
    except metadata.PackageNotFoundError:
        return None
    return Path(dist.locate_file("solo")).resolve()


def solo_origin_problem(origin: Optional[str]) -> Optional[str]:
    """One line if ``solo`` loaded from ``origin`` is not the installed distribution's."""
    installed = _installed_solo()
    if installed is None:
        return f"solo-learn is not installed: {FIX}"
    if origin is None:
        return f"solo cannot be imported: {FIX}"
    found = Path(origin).resolve().parent
    if found != installed:
        return (f"solo would be imported from {found}, not from the installed solo-learn at "
                f"{installed}: run upstream's tests from the folder the patch step writes "
                f"(make test-upstream), not from a source tree")
    return None


def pytest_configure(config: pytest.Config) -> None:
    """Refuse early when ``solo`` resolves to anything but the installed package."""
    spec = importlib.util.find_spec("solo")
    problem = solo_origin_problem(spec.origin if spec is not None else None)
    if problem is not None:
        raise pytest.UsageError(problem)


def pytest_report_header(config: pytest.Config) -> List[str]:
    """Say which solo-learn the suite runs against."""
    dist = metadata.distribution("solo-learn")
    patches = [f for f in dist.files or [] if "iclmsr_patches/" in str(f)]
    return [f"solo-learn {dist.version} at {_installed_solo()} ({len(patches)} patches)"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Check where ``solo`` was imported from; skip the network tests with their reasons."""
    module = sys.modules.get("solo")
    if module is not None:
        problem = solo_origin_problem(getattr(module, "__file__", None))
        if problem is not None:
            raise pytest.UsageError(problem)
    if os.environ.get(NETWORK_ENV) == "1":
        return
    for item in items:
        reason = NEEDS_NETWORK.get(item.nodeid.replace("\\", "/"))
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
