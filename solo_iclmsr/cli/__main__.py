"""``python -m solo_iclmsr.cli``: the ``solo-iclmsr`` command."""

from solo_iclmsr.cli import entry_point

entry_point()
