"""One job of a comparison: train one run (or resume it) and evaluate it; a Hydra application,
so that Hydra's launchers run the grid.

    python -m solo_iclmsr.compare.job --multirun runs_root=OUT/runs \\
        run=base/seed0,iclmsr/seed0 [hydra/launcher=joblib hydra.launcher.n_jobs=2]

``solo-iclmsr compare`` writes each run's ``spec.json`` and calls this (``launch.py``); a person
may call it too. A job is idempotent: a run with ``run.json`` is not trained again, one with
``eval.json`` not evaluated again; an unfinished run resumes from its newest readable
checkpoint. Bad input (a missing dataset, a non-finite loss) ends the job with one line and an
``error.txt`` in the run's folder; the other jobs go on.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from solo_iclmsr.compare.grid import RunSpec, missing_evaluations, read_json, write_json
from solo_iclmsr.errors import USER_ERRORS, one_line
from solo_iclmsr.plugin.callbacks import TrainClock

__all__ = ["run_job", "merge_evaluation", "newest_checkpoint", "die_with_parent",
           "grid_progress"]


@dataclass
class JobConfig:
    """The job's config: where the runs are, which one, how many CPU threads it may use."""

    runs_root: str = MISSING
    run: str = MISSING
    threads: int = 0


ConfigStore.instance().store(name="compare_job", node=JobConfig)


def die_with_parent() -> None:
    """On Linux, this process is killed when the process that started it dies (a comparison
    killed with ``kill -9`` takes its jobs with it, so that the same command, run again, is the
    only writer of its runs)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def newest_checkpoint(folder: Path) -> Optional[Path]:
    """The newest checkpoint under a run's folder that can be read (a file cut short by a kill
    is passed over, and left where it is)."""
    from solo_iclmsr.runs.checkpoints import read_checkpoint

    for path in sorted(folder.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True):
        if path.parent.name == "linear" or "linear" in path.relative_to(folder).parts:
            continue
        try:
            read_checkpoint(path, "resume_from_checkpoint")
        except Exception:  # noqa: BLE001 - unreadable: try the one before
            continue
        return path
    return None


def _train(spec: RunSpec, folder: Path) -> Dict[str, Any]:
    """Pretrain (or resume) the run with ``solo-iclmsr pretrain`` in a process of its own (so that
    Lightning's DDP launcher, which starts the other ranks by running the command again, runs
    that command and not this job); returns what ``run.json`` records, read from the final
    checkpoint (its ``TrainClock`` holds the training time, resumed parts added up)."""
    from solo_iclmsr.runs.checkpoints import read_checkpoint
    from solo_iclmsr.config import compose

    resume = newest_checkpoint(folder)
    overrides = [*spec.overrides, f"++checkpoint.dir='{folder}'"]
    if resume is not None:
        overrides.append(f"++resume_from_checkpoint='{resume}'")
    cfg = compose(spec.config_path, spec.config_name, overrides)  # the errors of a bad config here
    safe = ["-P"] if sys.version_info >= (3, 11) else []
    _run_command([sys.executable, *safe, "-m", "solo_iclmsr.cli", "pretrain", "--config-path",
                  spec.config_path, "--config-name", spec.config_name, *overrides], "pretrain")
    checkpoint = newest_checkpoint(folder)
    if checkpoint is None:
        raise RuntimeError(f"{folder}: training wrote no checkpoint.")
    state = read_checkpoint(checkpoint, "the run's last checkpoint")
    clock = TrainClock()
    clock.load_state_dict(next((v for k, v in state.get("callbacks", {}).items()
                                if k.startswith("TrainClock")), {}))
    import torch

    return {"arm": spec.arm, "seed": spec.seed, "checkpoint": str(checkpoint.relative_to(folder)),
            "global_step": int(state["global_step"]), "steps": clock.steps,
            "train_seconds": clock.train_seconds, "step_seconds": clock.step_seconds,
            "seconds_per_step": clock.seconds_per_step,
            "cpu_seconds_per_step": clock.cpu_seconds_per_step, "accelerator": str(cfg.accelerator),
            "max_epochs": int(cfg.max_epochs),
            "resumed_from": None if resume is None else str(resume.relative_to(folder)),
            "threads": torch.get_num_threads(), "host": socket.gethostname(),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _run_command(command: List[str], what: str) -> None:
    """Run a command of the project, its output passed through as it comes; a failure raises
    ``ValueError`` with the command's last error line."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    tail = b""
    while True:
        chunk = os.read(process.stderr.fileno(), 4096)
        if not chunk:
            break
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
        tail = (tail + chunk)[-8192:]
    if process.wait() != 0:
        lines = [line for line in tail.decode(errors="replace").splitlines() if line.strip()]
        last = next((line for line in reversed(lines) if line.startswith("error:")),
                    lines[-1] if lines else f"exit code {process.returncode}")
        raise ValueError(f"{what} failed: {last.removeprefix('error: ')}")


def run_job(folder: Path, threads: int = 0) -> str:
    """Train and evaluate the run in ``folder`` as far as it is not done; returns ``done`` or
    ``failed`` (then ``error.txt`` holds the one line)."""
    from solo_iclmsr.compare.evaluate import evaluate_run
    from solo_iclmsr.plugin.callbacks import NonFiniteLossError

    die_with_parent()
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    spec = RunSpec.load(folder)
    root = folder.parents[1]
    print(f"[compare] {grid_progress(root)} start {spec.key}", flush=True)
    start = time.perf_counter()
    try:
        (folder / "error.txt").unlink(missing_ok=True)
        if not (folder / "run.json").exists():
            write_json(folder / "run.json", _train(spec, folder))
        done = read_json(folder / "eval.json") if (folder / "eval.json").exists() else {}
        missing = missing_evaluations(done, spec.evaluation)
        if missing:
            run = read_json(folder / "run.json")
            new = evaluate_run(folder / run["checkpoint"], folder, spec.evaluation, missing,
                               done)
            write_json(folder / "eval.json", merge_evaluation(done, new, spec.evaluation))
    except (*USER_ERRORS, NonFiniteLossError) as error:
        message = one_line(error)
        (folder / "error.txt").write_text(message + "\n")
        print(f"[compare] {grid_progress(root)} FAILED {spec.key}: {message}", flush=True)
        return "failed"
    print(f"[compare] {grid_progress(root)} end {spec.key} "
          f"({time.perf_counter() - start:.0f} s){_eta(root)}", flush=True)
    return "done"


def merge_evaluation(done: Dict[str, Any], new: Dict[str, Any],
                     evaluation: Dict[str, Any]) -> Dict[str, Any]:
    """The run's ``eval.json`` after an evaluation: a kind evaluated on every test set replaces
    its results, one evaluated on some test sets adds them; the test folders of ``evaluation``
    are recorded (all of them are evaluated now), and the evaluation time added up."""
    out = dict(done)
    for kind in ("knn", "linear"):
        if new.get(kind) or kind in new.get("complete", ()):
            out[kind] = dict(new[kind]) if kind in new["complete"] else {
                **(done.get(kind) or {}), **new[kind]}
    if new.get("linear_checkpoint"):
        out["linear_checkpoint"] = new["linear_checkpoint"]
    out["test_paths"] = {**done.get("test_paths", {}), **(evaluation.get("tests") or {})}
    out["seconds"] = done.get("seconds", 0.0) + new["seconds"]
    by_kind = dict(done.get("seconds_by_kind", {}))
    for kind, seconds in new.get("seconds_by_kind", {}).items():
        by_kind[kind] = by_kind.get(kind, 0.0) + seconds
    out["seconds_by_kind"] = by_kind
    return out


def _grid_runs(root: Path) -> Iterator[Path]:
    """The run folders of the grid's current command (``OUT/grid_runs.json``), else all."""
    listed = root.parent / "grid_runs.json"
    if listed.exists():
        for key in read_json(listed):
            yield root / key
        return
    yield from sorted(p for p in root.glob("*/seed*") if p.name[4:].isdigit())


def _states(root: Path) -> Tuple[List[Path], List[Path], List[Path]]:
    done, failed, todo = [], [], []
    for folder in _grid_runs(root):
        if (folder / "eval.json").exists():
            done.append(folder)
        elif (folder / "error.txt").exists():
            failed.append(folder)
        else:
            todo.append(folder)
    return done, failed, todo


def grid_progress(root: Path) -> str:
    """``3/12 done, 1 failed``: the counts of the grid."""
    done, failed, todo = _states(root)
    total = len(done) + len(failed) + len(todo)
    return f"{len(done)}/{total} done" + (f", {len(failed)} failed" if failed else "")


def _eta(root: Path) -> str:
    """The time left, from the runs finished so far (training and evaluation) and the number
    of jobs running at once (``OUT/grid_runs.json``'s sibling ``launch.json``)."""
    done, _, todo = _states(root)
    seconds = []
    for folder in done:
        try:
            seconds.append(read_json(folder / "run.json")["train_seconds"]
                           + read_json(folder / "eval.json").get("seconds", 0.0))
        except (OSError, KeyError, ValueError):
            continue
    if not seconds or not todo:
        return ""
    jobs = 1
    launch = root.parent / "launch.json"
    if launch.exists():
        jobs = max(1, int(read_json(launch).get("jobs", 1)))
    left = sum(seconds) / len(seconds) * len(todo) / jobs
    return f"; about {left / 60:.0f} min left for {len(todo)} runs"


@hydra.main(version_base=None, config_path=None, config_name="compare_job")
def main(cfg: JobConfig) -> str:
    """The Hydra application: one job per ``run=`` value."""
    return run_job(Path(cfg.runs_root) / cfg.run, int(cfg.threads))


if __name__ == "__main__":
    main()
