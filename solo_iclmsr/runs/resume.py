"""Which checkpoint a pretraining run resumes (``auto_resume.enabled``): one written with the
same training config, never an older run that only shares the new one's name.

solo's ``AutoResumer`` resumes the newest checkpoint of ``checkpoint.dir/<method>/`` whose
``name``, backbone, method, dataset, epochs and optimizer match: an ablation of any other key
(``iclmsr.*``, ``method_kwargs``, ``augmentations``, ...) would silently get the previous model.
Here the whole config of the candidate, as solo's ``Checkpointer`` wrote it into ``args.json``,
must equal the new run's, except the keys of ``MAY_DIFFER``. Kept from solo's: only checkpoints
younger than ``auto_resume.max_hours`` count, and the newest that matches is resumed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from omegaconf import DictConfig

from solo_iclmsr.config.flat import config_changes, flat_config

__all__ = ["MAY_DIFFER", "ResumeChoice", "differing_keys", "find_resumable", "reached_max_epochs"]

#: Keys that may change when a run is resumed, each with the keys under it: where and how it
#: runs and logs (devices, loader workers, the logger's ids, the progress bar, where and how
#: often checkpoints are written, auto-resume itself), not what it trains. Any other key that
#: differs makes a new run.
MAY_DIFFER = ("devices", "data.num_workers", "wandb_run_id", "wandb.offline",
              "enable_progress_bar", "checkpoint", "auto_resume", "resume_from_checkpoint")
_SHOWN = 8  # keys named in the line about a run that is not resumed


@dataclass(frozen=True)
class ResumeChoice:
    """What auto-resume decided.

    Attributes:
        checkpoint: the checkpoint to resume, or ``None`` for a fresh run.
        reason: one line saying what was resumed, or why the newest run of the same name was
            not (the keys that differ); ``None`` when no run of that name was found.
    """

    checkpoint: Optional[Path]
    reason: Optional[str]


def differing_keys(recorded: Mapping[str, Any], cfg: DictConfig) -> List[str]:
    """``key (recorded -> new)`` for each key outside ``MAY_DIFFER`` by which a recorded config
    (a loaded ``args.json``) and the new run's differ."""
    return config_changes(flat_config(recorded, leave_out=MAY_DIFFER),
                          flat_config(cfg, leave_out=MAY_DIFFER))


def _candidates(checkpoint_dir: Path, max_hours: float) -> List[Path]:
    """Per run folder under ``checkpoint_dir`` with ``args.json``, its newest checkpoint younger
    than ``max_hours``; the newest first."""
    now = datetime.now()
    found = []
    for root, _, files in os.walk(checkpoint_dir):
        if "args.json" not in files:
            continue
        times = {Path(root) / f: os.path.getctime(Path(root) / f) for f in files
                 if f.endswith(".ckpt")}
        if not times:
            continue
        newest = max(times, key=times.__getitem__)
        if now - datetime.fromtimestamp(times[newest]) < timedelta(hours=max_hours):
            found.append((times[newest], newest))
    return [path for _, path in sorted(found, reverse=True)]


def _recorded(checkpoint: Path) -> Optional[Dict[str, Any]]:
    """The ``args.json`` beside a checkpoint, or ``None`` if it cannot be read."""
    try:
        recorded = json.loads((checkpoint.parent / "args.json").read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _shown(changes: List[str]) -> str:
    more = len(changes) - _SHOWN
    return ", ".join(changes[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


def find_resumable(cfg: DictConfig, checkpoint_dir: Union[str, Path],
                   max_hours: float) -> ResumeChoice:
    """The newest checkpoint under ``checkpoint_dir`` (solo's ``checkpoint.dir/<method>``),
    younger than ``max_hours``, whose ``args.json`` equals ``cfg`` outside ``MAY_DIFFER``; when
    there is none, the reason names the keys by which the newest run of the same ``name``
    differs."""
    closest = None
    for checkpoint in _candidates(Path(checkpoint_dir), max_hours):
        recorded = _recorded(checkpoint)
        if recorded is None or recorded.get("name") != cfg.get("name"):
            continue
        changes = differing_keys(recorded, cfg)
        if not changes:
            return ResumeChoice(checkpoint, f"Resuming from previous checkpoint that matches "
                                            f"specifications: '{checkpoint}'")
        closest = closest or (checkpoint, changes)
    if closest is None:
        return ResumeChoice(None, None)
    checkpoint, changes = closest
    return ResumeChoice(None, f"Not resuming '{checkpoint}': a run of the same name, but this "
                              f"one differs in {_shown(changes)}; starting a new version folder.")


def reached_max_epochs(state: Mapping[str, Any], cfg: DictConfig) -> bool:
    """Whether a checkpoint (as ``read_checkpoint`` returns it) was written at the end of the
    last of ``cfg.max_epochs`` epochs, so that resuming it trains nothing."""
    max_epochs = cfg.get("max_epochs")
    if max_epochs is None or int(max_epochs) < 0 or "epoch" not in state:
        return False
    return int(state["epoch"]) + 1 >= int(max_epochs)
