"""Where the jobs of a comparison run: Hydra's launcher plugins, not a scheduler of our own.

* ``basic`` (Hydra's own): one run after another, in one process (the default for one job);
* ``joblib`` (``hydra-joblib-launcher``): ``--jobs N`` runs at a time on this machine, each in
  its own process, the CPU threads shared out between them (the default for ``--jobs`` > 1);
* ``submitit_local`` / ``submitit_slurm`` (``hydra-submitit-launcher``, the ``slurm`` extra):
  through submitit on this machine (its local executor starts every job at once) or as a SLURM
  job array of ``--jobs`` jobs at a time (``--launcher-override hydra.launcher.partition=...``
  and the like go to the launcher as they are).

Each call runs ``python -m solo_iclmsr.compare.job --multirun run=<arm>/seed<k>,...`` with the
launcher's overrides; the command is printed, so a person can run it (or part of it) alone.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

from solo_iclmsr.compare.grid import write_json
from solo_iclmsr.compare.job import die_with_parent

__all__ = ["LAUNCHERS", "launch", "launcher_for", "threads_per_job"]

#: launcher -> (the Hydra plugin package it needs, what installs it)
LAUNCHERS: Dict[str, tuple] = {
    "basic": (None, None),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "pip install hydra-joblib-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher",
                       "pip install 'solo-iclmsr[slurm]' (hydra-submitit-launcher)"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher",
                       "pip install 'solo-iclmsr[slurm]' (hydra-submitit-launcher)"),
}


def launcher_for(name: str, jobs: int) -> str:
    """The launcher of ``--launcher`` (``None``: basic for one job, joblib for more), checked
    to be installed."""
    name = name or ("basic" if jobs <= 1 else "joblib")
    if name not in LAUNCHERS:
        raise ValueError(f"--launcher {name!r} is unknown: expected one of "
                         f"{', '.join(LAUNCHERS)}.")
    module, install = LAUNCHERS[name]
    if module is not None and importlib.util.find_spec(module) is None:
        raise ValueError(f"--launcher {name} needs Hydra's {name.split('_')[0]} launcher plugin, "
                         f"which is not installed: {install}.")
    if name == "basic" and jobs > 1:
        raise ValueError(f"--jobs {jobs} with --launcher basic: the basic launcher runs one job "
                         f"at a time; use --launcher joblib.")
    return name


def threads_per_job(jobs: int) -> int:
    """The CPU threads of each of ``jobs`` concurrent runs (``OMP_NUM_THREADS``, else the
    machine's cores, shared out)."""
    total = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    return max(1, total // max(1, jobs))


def _launcher_overrides(name: str, jobs: int, threads: int) -> List[str]:
    if name == "joblib":
        return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    if name == "submitit_slurm":
        return [f"hydra/launcher={name}", f"hydra.launcher.array_parallelism={jobs}",
                f"hydra.launcher.cpus_per_task={threads}", "hydra.launcher.tasks_per_node=1",
                "hydra.launcher.timeout_min=10080"]
    if name == "submitit_local":  # submitit's local executor starts every job at once
        return [f"hydra/launcher={name}", f"hydra.launcher.cpus_per_task={threads}",
                "hydra.launcher.tasks_per_node=1", "hydra.launcher.timeout_min=10080"]
    return []


def launch(out: Path, runs: Sequence[str], launcher: str, jobs: int,
           extra: Sequence[str] = ()) -> int:
    """Run the jobs ``runs`` (``<arm>/seed<k>``) through ``launcher``; returns the exit code of
    the Hydra application (the runs' own states are in their folders)."""
    threads = threads_per_job(jobs if launcher != "submitit_slurm" else 1)
    write_json(out / "launch.json", {"launcher": launcher, "jobs": jobs, "threads": threads})
    sweep = out / "launcher" / time.strftime("%Y%m%d-%H%M%S")
    # -P: the current folder is not put first on sys.path (a solo-learn checkout's solo/ there
    # would shadow the patched install in the jobs; solo_check refuses that).
    safe = ["-P"] if sys.version_info >= (3, 11) else []
    command = [sys.executable, *safe, "-m", "solo_iclmsr.compare.job", "--multirun",
               f"runs_root='{(out / 'runs').resolve()}'", "run=" + ",".join(runs),
               f"threads={threads}", *_launcher_overrides(launcher, jobs, threads),
               f"hydra.sweep.dir='{sweep.resolve()}'", "hydra.output_subdir=null",
               "hydra/job_logging=disabled", "hydra/hydra_logging=disabled", *extra]
    print("[compare] " + " ".join(shlex.quote(c) for c in command), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    return subprocess.run(command, env=env, preexec_fn=die_with_parent).returncode
