"""What knows solo-learn and Lightning: the per-method adapters and the replay of a method's
loss, the registry of ``<name>_iclmsr`` variants, the Lightning mixin, the backbones, the
callbacks, and ``prepare_pretrain`` (a composed config made ready for solo's pretraining).
Needs solo-learn main, patched (``patches/solo_patch.py``)."""

from solo_iclmsr.solo_check import require_solo

require_solo()

from solo_iclmsr.plugin.prepare import prepare_pretrain  # noqa: E402

__all__ = ["prepare_pretrain"]
