"""``<name>_iclmsr`` variants of solo-learn's methods, added to ``solo.methods.METHODS``.

Importing this module registers them (``register()`` is idempotent and may be called again, e.g.
after another package added its own methods to ``METHODS``).
"""

from __future__ import annotations

import difflib
import logging
from typing import Dict, MutableMapping, Optional

from solo_iclmsr import adapters
from solo_iclmsr.mixin import DeviceAugmentationMixin, ICLMSRMixin, TimmBackboneMixin

log = logging.getLogger(__name__)

SUFFIX = "_iclmsr"


def make_variant(name: str, method_cls: type, adapter: adapters.MethodAdapter) -> type:
    """A subclass of ``method_cls`` with ICL-MSR and timm backbones; the original is untouched.

    MRO: variant, ICLMSRMixin, DeviceAugmentationMixin, TimmBackboneMixin, method, ...,
    ReplayPoint, solo's base class.
    """
    bases = (ICLMSRMixin, DeviceAugmentationMixin, TimmBackboneMixin, method_cls,
             adapters.replay_point_for(method_cls))
    attrs = {"_iclmsr_method_cls": method_cls, "_iclmsr_adapter": adapter,
             "__module__": __name__, "__doc__": f"{method_cls.__name__} with ICL-MSR ({name}{SUFFIX})."}
    return type(f"{method_cls.__name__}ICLMSR", bases, attrs)


def register(methods: Optional[MutableMapping[str, type]] = None) -> Dict[str, str]:
    """Add ``<name>_iclmsr`` for every self-supervised method of ``methods`` (default: solo's
    ``METHODS``). Idempotent. Returns {name: reason} for the methods skipped."""
    if methods is None:
        from solo.methods import METHODS as methods
    skipped: Dict[str, str] = {}
    for name, method_cls in list(methods.items()):
        if name.endswith(SUFFIX) or isinstance(method_cls, type) and issubclass(method_cls, ICLMSRMixin):
            continue
        if name in adapters.EXCLUDED:
            skipped[name] = adapters.EXCLUDED[name]
            continue
        existing = methods.get(name + SUFFIX)
        if existing is not None and getattr(existing, "_iclmsr_method_cls", None) is method_cls:
            continue
        adapter = adapters.ADAPTERS.get(name)
        if adapter is None:
            adapter, reason = adapters.derive_adapter(name, method_cls)
            if adapter is None:
                skipped[name] = reason
                log.info("ICL-MSR: no variant for method %r: %s", name, reason)
                continue
            log.info("ICL-MSR: adapter for method %r %s", name, reason)
        methods[name + SUFFIX] = make_variant(name, method_cls, adapter)
    return skipped


def method_class(name: str) -> type:
    """The class for config key ``method``; unknown names fail listing the valid ones."""
    from solo.methods import METHODS

    register(METHODS)
    valid = sorted(n for n in METHODS if not n.endswith(SUFFIX) and n not in adapters.EXCLUDED)
    if name not in valid:
        near = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"method={name!r} is unknown.{hint} Valid methods: {', '.join(valid)}.")
    return METHODS[name + SUFFIX]


register()
