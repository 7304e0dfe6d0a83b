"""solo-learn main's source tree (its ``scripts/`` configs) for the tests that run solo's own
configs: from ``SOLO_LEARN_SOURCE`` (a source folder or a ``.tar.gz``, as ``make install`` takes
it) or the vendored archive ``../shared/vendor/solo-learn-9187ea3.tar.gz``, extracted once per
test process."""

import atexit
import os
import shutil
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
VENDORED = REPO.parent / "shared" / "vendor" / "solo-learn-9187ea3.tar.gz"


def _candidates():
    env = os.environ.get("SOLO_LEARN_SOURCE")
    if env:
        yield Path(env) if Path(env).is_absolute() else REPO / env
    yield VENDORED


@lru_cache(maxsize=None)
def solo_source() -> Optional[Path]:
    """The root of solo-learn's source tree (holding ``scripts/``), or None if none is at hand."""
    for candidate in _candidates():
        if candidate.is_dir() and (candidate / "scripts").is_dir():
            return candidate
        if candidate.is_file() and candidate.name.endswith(".tar.gz"):
            target = Path(tempfile.mkdtemp(prefix="solo-learn-src-"))
            atexit.register(shutil.rmtree, target, True)
            with tarfile.open(candidate) as archive:
                members = [m for m in archive.getmembers() if "/scripts/" in m.name + "/"]
                archive.extractall(target, members=members, filter="data")
            roots = [p for p in target.iterdir() if (p / "scripts").is_dir()]
            if roots:
                return roots[0]
    return None


SKIP_REASON = ("solo-learn's source (scripts/) is not at hand: set SOLO_LEARN_SOURCE to its "
               "archive or folder, or put the vendored archive in ../shared/vendor")
