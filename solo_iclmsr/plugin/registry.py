"""``<name>_iclmsr`` variants of solo-learn's methods, added to ``solo.methods.METHODS``.

Importing this module registers them (``register()`` is idempotent and may be called again, e.g.
after another package added its own methods to ``METHODS``), so solo's own entry points find
them too: ``METHODS["simclr_iclmsr"](cfg)`` builds SimCLR with ICL-MSR from a solo config.
It also registers the project's built-in dataset with solo's config parser.
"""

from __future__ import annotations

import logging
from typing import Dict, MutableMapping, Optional

from solo_iclmsr.plugin import adapters
from solo_iclmsr.plugin.mixin import DeviceAugmentationMixin, ICLMSRMixin

log = logging.getLogger(__name__)

SUFFIX = "_iclmsr"
#: Datasets the project adds to solo's, with their number of classes (``data.num_classes``).
PROJECT_DATASETS = {"builtin": 10}


def make_variant(name: str, method_cls: type, adapter: adapters.MethodAdapter) -> type:
    """A subclass of ``method_cls`` with ICL-MSR, timm backbones and the device augmentation;
    the original class is untouched. MRO: variant, ICLMSRMixin, DeviceAugmentationMixin, method."""
    attrs = {"_iclmsr_method_cls": method_cls, "_iclmsr_adapter": adapter,
             "__module__": __name__, "__doc__": f"{method_cls.__name__} with ICL-MSR ({name}{SUFFIX})."}
    return type(f"{method_cls.__name__}ICLMSR", (ICLMSRMixin, DeviceAugmentationMixin, method_cls),
                attrs)


def register(methods: Optional[MutableMapping[str, type]] = None) -> Dict[str, str]:
    """Add ``<name>_iclmsr`` for every self-supervised method of ``methods`` (default: solo's
    ``METHODS``). Idempotent. Returns {name: reason} for the methods left without a variant."""
    if methods is None:
        from solo.methods import METHODS as methods
    skipped: Dict[str, str] = {}
    for name, method_cls in list(methods.items()):
        if name.endswith(SUFFIX) or isinstance(method_cls, type) and issubclass(method_cls, ICLMSRMixin):
            continue
        existing = methods.get(name + SUFFIX)
        if existing is not None and getattr(existing, "_iclmsr_method_cls", None) is method_cls:
            continue
        adapter, reason = adapters.adapter_for(name, method_cls)
        if adapter is None:
            skipped[name] = reason
            continue
        if adapter.derived:
            log.info("ICL-MSR: adapter for method %r %s", name, reason)
        methods[name + SUFFIX] = make_variant(name, method_cls, adapter)
    _register_datasets()
    return skipped


def _register_datasets() -> None:
    """solo's config parsers accept only their own dataset names (``solo.args.pretrain`` and
    ``solo.args.linear``): add the project's, with their class counts."""
    from solo.args import linear, pretrain

    for args in (pretrain, linear):
        for name, num_classes in PROJECT_DATASETS.items():
            if name not in args._SUPPORTED_DATASETS:
                args._SUPPORTED_DATASETS.append(name)
            args._N_CLASSES_PER_DATASET.setdefault(name, num_classes)


def method_class(name: str, enabled: bool = True) -> type:
    """The class for config key ``method`` (``simclr`` or ``simclr_iclmsr``): its variant, or,
    without ICL-MSR, solo's own class with the device augmentation where there is no variant
    (MAE). An unknown name, or ICL-MSR asked of a method without a variant, fails in one line."""
    from solo.methods import METHODS

    from solo_iclmsr.config.names import unknown_name

    skipped = register(METHODS)
    base = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    valid = sorted(n for n in METHODS if not n.endswith(SUFFIX) and n not in ("base", "linear"))
    if base not in valid:
        raise ValueError(unknown_name("method", name, valid))
    if base + SUFFIX in METHODS:
        return METHODS[base + SUFFIX]
    if enabled or name.endswith(SUFFIX):
        raise ValueError(f"method={name!r} has no ICL-MSR variant: {skipped[base]}.")
    return on_device(METHODS[base])


_ON_DEVICE: Dict[type, type] = {}


def on_device(method_cls: type) -> type:
    """solo's ``method_cls`` with the device augmentation only (a method without a variant)."""
    if method_cls not in _ON_DEVICE:
        _ON_DEVICE[method_cls] = type(f"{method_cls.__name__}OnDevice",
                                      (DeviceAugmentationMixin, method_cls),
                                      {"__module__": __name__, "iclmsr": None})
    return _ON_DEVICE[method_cls]


register()
