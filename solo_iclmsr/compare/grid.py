"""The grid of a comparison: arms x seeds over one pretraining config, each an ordinary run.

An *arm* is a name and the Hydra overrides that make it: ``base`` (``iclmsr.enabled=false``),
``iclmsr`` (``iclmsr.enabled=true``), any ``--arm NAME "OVERRIDES"`` (the ``iclmsr`` arm plus
those overrides, so ``--arm softmax "++iclmsr.weight_head=softmax"`` is ICL-MSR with the softmax
head; an arm that sets ``iclmsr.enabled=false`` itself is a base variant) and, with
``--equal-time``, ``base_equal_time`` (the base arm trained for the time the ``iclmsr`` arm
took). Arms differ only in what they name: every other key comes from the config and the
overrides common to the grid.

Run ``<arm>/seed<k>`` lives in ``OUT/runs/<arm>/seed<k>/``:

* ``spec.json``: how to make it (config folder and name, its overrides, what to evaluate);
* ``config.yaml``: the config it was composed to when it first started; the same command must
  compose the same config again (``check_recorded``), or the run is refused;
* solo's checkpoint folder ``<method>/<version>/`` (checkpoints, ``args.json``, ``metrics.csv``;
  a resumed run adds a version folder);
* ``run.json`` once training finished (steps, training time), ``eval.json`` once evaluated
  (a test folder added later is evaluated then, without training again: ``missing_evaluations``),
  ``error.txt`` if its last attempt failed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from solo_iclmsr.config.flat import config_changes
from solo_iclmsr.config.flat import flat_config as flatten

__all__ = ["Arm", "RunSpec", "Grid", "default_arms", "flat_config", "config_changes",
           "missing_evaluations",
           "check_recorded", "equal_time_epochs", "step_time", "write_json", "read_json", "EQUAL_TIME",
           "BASE", "ICLMSR"]

BASE, ICLMSR, EQUAL_TIME = "base", "iclmsr", "base_equal_time"
#: Keys of a run's config that say where and how it runs, not what it trains.
RUNTIME_KEYS = ("checkpoint.dir", "resume_from_checkpoint", "enable_progress_bar")
_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Arm:
    """One arm: a name and the overrides that make it (after the grid's own)."""

    name: str
    overrides: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _ARM_NAME.match(self.name):
            raise ValueError(f"--arm {self.name!r}: an arm's name is letters, digits, '_', '.' "
                             f"and '-' (it names a folder).")

    @classmethod
    def parse(cls, name: str, overrides: str) -> "Arm":
        """``--arm NAME "OVERRIDES"``: the ``iclmsr`` arm plus the overrides (shell-split)."""
        words = shlex.split(overrides)
        stray = [w for w in words if "=" not in w and not w.startswith("~")]
        if stray:
            raise ValueError(f"--arm {name}: {stray[0]!r} is not an override (key=value).")
        return cls(name, ("++iclmsr.enabled=true", *words))


def default_arms(method: str) -> List[Arm]:
    """``base`` and ``iclmsr``; for a config naming ``<method>_iclmsr``, the base arm names the
    method without the suffix (``iclmsr.enabled=false`` would contradict it)."""
    base = ["++iclmsr.enabled=false"]
    if method.endswith("_iclmsr"):
        base.append(f"method={method[:-len('_iclmsr')]}")
    return [Arm(BASE, tuple(base)), Arm(ICLMSR, ("++iclmsr.enabled=true",))]


@dataclass
class RunSpec:
    """Everything a job needs to make one run (``spec.json``)."""

    arm: str
    seed: int
    config_path: str
    config_name: str
    overrides: List[str]
    evaluation: Dict[str, Any]
    derived: Dict[str, Any] = field(default_factory=dict)  # e.g. how equal-time epochs came

    @property
    def key(self) -> str:
        return f"{self.arm}/seed{self.seed}"

    @classmethod
    def load(cls, folder: Path) -> "RunSpec":
        return cls(**read_json(folder / "spec.json"))

    def save(self, folder: Path) -> None:
        """Written when it says something new (a finished run's folder is left as it is)."""
        path = folder / "spec.json"
        if not path.exists() or read_json(path) != asdict(self):
            write_json(path, asdict(self))


@dataclass
class Grid:
    """A comparison: the config, the overrides common to every run, arms, seeds, evaluation.

    Attributes:
        config_path, config_name: the pretraining config (``solo-iclmsr pretrain``'s).
        overrides: Hydra overrides of every run.
        seeds: the seeds (solo's ``seed`` key).
        arms: the arms, ``base`` first.
        out: the grid's folder.
        name: the config's ``name``; run ``<arm>/seed<k>`` is named ``<name>-<arm>-seed<k>``.
        quiet: no progress bars inside the runs.
        evaluation: what ``evaluate.evaluate_run`` does after training (``eval``, ``knn_k``,
            the linear config and its epochs, ``tests``: the test folders {name: folder}).
        equal_time: add ``base_equal_time``.
    """

    config_path: str
    config_name: str
    overrides: List[str]
    seeds: List[int]
    arms: List[Arm]
    out: Path
    evaluation: Dict[str, Any]
    equal_time: bool = False
    name: str = "run"
    quiet: bool = False

    @property
    def runs_root(self) -> Path:
        return self.out / "runs"

    def folder(self, arm: str, seed: int) -> Path:
        return self.runs_root / arm / f"seed{seed}"

    def spec(self, arm: Arm, seed: int, derived: Optional[Dict[str, Any]] = None) -> RunSpec:
        """The run of ``arm`` and ``seed``: the grid's overrides, the arm's, then its seed, its
        name and what every run of a grid needs (checkpoints on, solo's auto-resume off: the
        grid resumes its runs itself)."""
        overrides = [*self.overrides, *arm.overrides, f"++seed={seed}",
                     f"++name={self.name}-{arm.name}-seed{seed}", "++checkpoint.enabled=True",
                     "++auto_resume.enabled=False"]
        overrides += ["++enable_progress_bar=False"] if self.quiet else []
        return RunSpec(arm.name, seed, self.config_path, self.config_name, overrides,
                       dict(self.evaluation), dict(derived or {}))


def missing_evaluations(done: Dict[str, Any], evaluation: Dict[str, Any]
                        ) -> Dict[str, Optional[List[str]]]:
    """What a run's ``eval.json`` (``done``; ``{}`` lacks all) lacks of ``evaluation``:
    {kind (``knn``, ``linear``): ``None`` to evaluate it on every test set (it was never made,
    or the k-NN lacks a k), or the test folders (``evaluation["tests"]``) it lacks, or whose
    folder is another than the one it was evaluated on}."""
    tests: Dict[str, str] = dict(evaluation.get("tests") or {})
    recorded = done.get("test_paths", {})
    missing: Dict[str, Optional[List[str]]] = {}
    for kind in ("knn", "linear"):
        if kind not in evaluation["eval"]:
            continue
        results = done.get(kind) or {}
        if kind == "knn":
            wanted = {f"knn{k}" for k in evaluation["knn_k"]}
            if any(not wanted <= set(v) for v in results.values()):
                results = {}
        if not results:
            missing[kind] = None
            continue
        lacking = [n for n, p in tests.items() if n not in results or recorded.get(n) != p]
        if lacking:
            missing[kind] = lacking
    return missing


def flat_config(cfg: DictConfig) -> Dict[str, Any]:
    """The config as {dotted key: value}, the run-location keys left out."""
    return flatten(cfg, leave_out=RUNTIME_KEYS)


def check_recorded(folder: Path, cfg: DictConfig, force: bool) -> None:
    """A run folder started before must have been composed to the same config.

    Raises:
        ValueError: one line naming the keys that differ, unless ``force``: then the old folder
            is kept beside as ``seed<k>.replaced-<time>`` and the run starts anew.
    """
    recorded = folder / "config.yaml"
    if not recorded.exists():
        return
    changes = config_changes(flat_config(OmegaConf.load(recorded)), flat_config(cfg))
    if not changes:
        return
    if not force:
        shown = ", ".join(changes[:4]) + (f" and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise ValueError(f"{folder} was run with another config: {shown}; use another --out, "
                         f"or --force to run it again (the old run is kept beside it).")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    shutil.move(str(folder), str(folder.with_name(f"{folder.name}.replaced-{stamp}")))


def step_time(run: Dict[str, Any]) -> float:
    """The time of one training step of a finished run (``run.json``) that equal time compares:
    the process's CPU time on a CPU (the work, whatever else the machine runs), else the wall
    time (on a GPU the CPU time says little)."""
    cpu = run.get("cpu_seconds_per_step")
    if run.get("accelerator", "cpu") == "cpu" and cpu is not None and math.isfinite(cpu):
        return float(cpu)
    return float(run["seconds_per_step"])


def equal_time_epochs(base_epochs: int, base_step_seconds: float,
                      iclmsr_step_seconds: float) -> int:
    """The epochs that give the base method the training time of ICL-MSR: its epochs scaled
    by the per-step time ratio of the two finished runs (never fewer than its own)."""
    if not (base_step_seconds > 0 and math.isfinite(iclmsr_step_seconds)):
        raise ValueError("equal time: the per-step times of the base and iclmsr runs are not "
                         "both recorded (run.json).")
    return max(int(base_epochs), int(round(base_epochs * iclmsr_step_seconds / base_step_seconds)))


def write_json(path: Path, data: Any) -> None:
    """Written whole or not at all (a killed process leaves the old file or none)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
