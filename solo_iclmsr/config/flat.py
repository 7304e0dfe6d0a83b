"""Configs as flat ``{dotted key: value}`` dicts, and the keys by which two of them differ.

Used wherever a run's config is compared with one recorded before: a comparison's run folder
(``config.yaml``) and a checkpoint's ``args.json`` when a run would resume it. List entries are
keyed by their index (``augmentations.0.crop_size``).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Union

from omegaconf import DictConfig, OmegaConf

__all__ = ["flat_config", "config_changes", "covered"]

ABSENT = "<absent>"


def covered(key: str, prefixes: Iterable[str]) -> bool:
    """Whether ``key`` is one of ``prefixes`` or lies under one (``checkpoint`` covers
    ``checkpoint.dir``)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def flat_config(cfg: Union[DictConfig, Mapping[str, Any]],
                leave_out: Iterable[str] = ()) -> Dict[str, Any]:
    """The config (a ``DictConfig``, interpolations unresolved, or a plain mapping such as a
    loaded ``args.json``) as ``{dotted key: value}``, the keys ``covered`` by ``leave_out`` left
    out."""
    leave_out = tuple(leave_out)
    out: Dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{prefix}{i}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg, "")
    return {k: v for k, v in out.items() if not covered(k, leave_out)}


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> List[str]:
    """``key (old -> new)`` for every key that differs, sorted by key (``'<absent>'`` for a key
    only one of them has)."""
    keys = sorted(set(old) | set(new))
    return [f"{k} ({old.get(k, ABSENT)!r} -> {new.get(k, ABSENT)!r})" for k in keys
            if old.get(k, ABSENT) != new.get(k, ABSENT)]
