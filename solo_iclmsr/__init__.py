"""solo-iclmsr: ICL-MSR (Interventional Contrastive Learning with Meta Semantic Regularizer,
ICML 2022) for every self-supervised method of solo-learn.

``solo_iclmsr.core`` is pure torch and works on its own; everything else runs inside solo-learn's
GitHub main, patched by ``patches/solo_patch.py``. Importing this package with an unpatched or
other solo-learn installed fails at once with one line naming the command that fixes it.
"""

from solo_iclmsr.solo_check import solo_problem as _solo_problem

__version__ = "0.3.0"

_problem = _solo_problem()
if _problem is not None:
    raise ImportError(_problem)
