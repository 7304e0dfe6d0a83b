"""solo-iclmsr: ICL-MSR (Interventional Contrastive Learning with Meta Semantic Regularizer,
ICML 2022) for every self-supervised method of solo-learn.

``solo_iclmsr.core`` is pure torch and works on its own; the plugin modules need solo-learn
1.0.2 patched by ``patches/solo_patch.py``. Importing this package with an unpatched or other
solo-learn fails at once with the command that fixes it.
"""

from solo_iclmsr._solo_check import solo_problem as _solo_problem

__version__ = "0.1.0"

_problem = _solo_problem()
if _problem is not None:
    raise ImportError(_problem)
