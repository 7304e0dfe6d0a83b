"""Checks of a config that read solo-learn's and timm's names, and solo's own config functions
(``parse_cfg``, a method's constructor) called so that every rejection comes back as one line
naming the key. ``plugin/prepare.py`` puts them together for a pretraining config.
"""

from __future__ import annotations

import linecache
import sys
import traceback
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from solo_iclmsr.config.names import unknown_name

__all__ = ["check_schedule", "solo_checked", "check_backbone"]


def solo_checked(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call one of solo's config functions (``parse_cfg``, a method's constructor); its bare
    ``assert`` statements come back as one line quoting the failed check and where it is, and a
    key it needs but the config lacks as one line naming the key."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    try:
        return fn(*args, **kwargs)
    except (ConfigAttributeError, ConfigKeyError) as error:
        key = getattr(error, "full_key", None) or str(error).splitlines()[0]
        raise ValueError(f"the config lacks {key!r}, which solo-learn's "
                         f"{getattr(fn, '__name__', 'code')} reads: add it (see solo's configs "
                         f"in scripts/pretrain/ for its keys).") from None
    except AssertionError as error:
        frame = traceback.extract_tb(sys.exc_info()[2])[-1]
        source = linecache.getline(frame.filename, frame.lineno).strip() or frame.line
        where = frame.filename.split("site-packages/")[-1]
        detail = f" ({error})" if str(error) else ""
        raise ValueError(f"solo-learn rejected the config: `{source}` failed{detail} at "
                         f"{where}:{frame.lineno}; fix the key it names.") from None


def check_backbone(name: str) -> None:
    """``backbone.name`` is one of solo's names or a timm model name (else one line with the
    nearest names)."""
    import timm
    from solo.methods.base import BaseMethod

    if name in BaseMethod._BACKBONES or timm.is_model(str(name).split(".", 1)[0]):
        return
    raise ValueError(unknown_name("backbone.name", name, list(BaseMethod._BACKBONES) + timm.list_models(),
                                  "(solo-learn's names, or any timm model)"))


def check_schedule(cfg: DictConfig) -> None:
    """A warm-up that never ends is a config error: the learning rate would never reach its
    value (solo's ``warmup_cosine``), and the smoke runs people start first hit it."""
    scheduler = OmegaConf.select(cfg, "scheduler.name", default=None)
    warmup = OmegaConf.select(cfg, "scheduler.warmup_epochs", default=0) or 0
    max_epochs = OmegaConf.select(cfg, "max_epochs", default=None)
    if scheduler == "warmup_cosine" and max_epochs is not None and warmup >= max_epochs:
        raise ValueError(f"scheduler.warmup_epochs={warmup} is not below max_epochs={max_epochs}: "
                         f"the warm-up would never end; lower it (e.g. "
                         f"++scheduler.warmup_epochs=0 for a short run) or raise max_epochs.")
