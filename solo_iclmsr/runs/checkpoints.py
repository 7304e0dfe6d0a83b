"""Reading checkpoints a user points at, before anything is run on them.

A checkpoint is read with ``weights_only=True`` (no code runs from a file), and checked against
the model it is meant for; each way it can be wrong is one line that says what to do, and the
file itself is never modified.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

__all__ = ["CheckpointError", "read_checkpoint", "check_matches", "load_pretrained"]


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message is one line."""


def read_checkpoint(path: Union[str, Path], key: str) -> Dict[str, Any]:
    """The contents of a Lightning checkpoint, read with ``weights_only=True``.

    Args:
        path: the file.
        key: the config key that named it (``resume_from_checkpoint``, ...), for the message.

    Raises:
        CheckpointError: missing, unreadable (corrupted or not a torch file), refused by
            ``weights_only`` (it would run code), or not a Lightning checkpoint.
    """
    path = Path(str(path))
    if not path.is_file():
        raise CheckpointError(f"{key}={str(path)!r} does not exist: give the path of a .ckpt file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if "weights_only" in str(error) or "Weights only" in str(error):
            raise CheckpointError(
                f"{key}={str(path)!r} holds objects that would run code when loaded, and is "
                f"refused (torch.load weights_only=True): use a checkpoint written by a training "
                f"run, or re-save only its tensors.") from None
        raise CheckpointError(f"{key}={str(path)!r} cannot be read ({first}): it is corrupted or "
                              f"not a torch checkpoint; give another file.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        first = " ".join(str(error).split())[:160]
        raise CheckpointError(f"{key}={str(path)!r} cannot be read ({first}): it is corrupted or "
                              f"not a torch checkpoint; give another file.") from None
    if not isinstance(state, Mapping) or not isinstance(state.get("state_dict"), Mapping):
        raise CheckpointError(f"{key}={str(path)!r} is not a Lightning checkpoint (no state_dict): "
                              f"give a .ckpt written by a training run.")
    return dict(state)


def check_matches(state: Mapping[str, Any], model: nn.Module, key: str, path: Union[str, Path],
                  prefix: Optional[str] = None) -> None:
    """The checkpoint's weights fit the model: the same names and shapes.

    Args:
        state: from ``read_checkpoint``.
        model: the module the weights are for.
        key: the config key that named the checkpoint.
        path: the file, for the message.
        prefix: compare only the entries under this prefix of the checkpoint (e.g. ``backbone.``
            for a feature extractor), with the prefix removed.

    Raises:
        CheckpointError: naming the first missing, unexpected or mis-shaped weight.
    """
    weights = state["state_dict"]
    if prefix is not None:
        weights = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        if not weights:
            raise CheckpointError(f"{key}={str(path)!r} holds no {prefix}* weights: give the "
                                  f"checkpoint of a pretraining run.")
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    for kind, names in (("lacks", missing), ("has unexpected", unexpected),
                        ("has a different shape for", shapes)):
        if names:
            raise CheckpointError(
                f"{key}={str(path)!r} does not fit this model: it {kind} {len(names)} weight(s), "
                f"e.g. {names[0]!r}; it was written for another method, backbone or config.")


def load_pretrained(checkpoint: Union[str, Path], key: str = "checkpoint") -> Tuple[nn.Module, Any]:
    """The model of a pretraining checkpoint, rebuilt from the ``args.json`` solo's Checkpointer
    wrote beside it, with the checkpoint's weights (read and checked as above), in eval mode.

    Returns:
        (model, cfg).

    Raises:
        CheckpointError: for a missing ``args.json`` or an unusable checkpoint.
    """
    import json

    from omegaconf import OmegaConf

    from solo_iclmsr.config import solo_checked
    from solo_iclmsr.plugin.registry import method_class

    path = Path(str(checkpoint))
    state = read_checkpoint(path, key)
    args = path.parent / "args.json"
    if not args.is_file():
        raise CheckpointError(f"{key}={str(path)!r} has no args.json beside it: give a checkpoint "
                              f"of a pretraining run (its folder holds args.json).")
    cfg = OmegaConf.create(json.loads(args.read_text()))
    enabled = bool(OmegaConf.select(cfg, "iclmsr.enabled", default=False))
    model = solo_checked(method_class(str(cfg.method), enabled=enabled), cfg)
    check_matches(state, model, key, path)
    model.load_state_dict(state["state_dict"])
    return model.eval(), cfg
