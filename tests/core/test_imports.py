"""solo_iclmsr.core must stay pure torch: importing it may not pull in Lightning or solo-learn."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import sys
import solo_iclmsr.core
banned = sorted(m for m in sys.modules
                if m.split('.')[0] in ('pytorch_lightning', 'lightning', 'solo'))
print(','.join(banned))
"""


def test_core_imports_neither_lightning_nor_solo():
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "", f"solo_iclmsr.core imported {out.stdout.strip()}"


def test_core_public_api_is_exported():
    import solo_iclmsr.core as core

    for name in core.__all__:
        assert hasattr(core, name), f"solo_iclmsr.core.__all__ lists {name} but does not define it"
    assert callable(core.meta_step) and callable(core.total_loss)
