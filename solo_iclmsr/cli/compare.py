"""``solo-iclmsr compare``: paired reruns of a pretraining config with and without ICL-MSR (and
any other arms), over seeds, resumable, with a report.

    solo-iclmsr compare --config-path scripts/pretrain/cifar --config-name simclr \\
        --seeds 0 1 2 --out runs/cifar10-simclr [--arm NAME "OVERRIDES"] [--equal-time] \\
        [--eval knn linear] [--test NAME=PATH ...] [--test-suite in9 ROOT] [--jobs 2] \
        [hydra overrides of every run]

Every (arm, seed) is an ordinary ``solo-iclmsr pretrain`` run in ``OUT/runs/<arm>/seed<k>/``
(``compare/grid.py``), launched through a Hydra launcher (``compare/launch.py``), then
evaluated by the project's ``knn`` and ``linear`` on every test version of its data and on the
test folders of ``--test`` / ``--test-suite`` (``compare/evaluate.py``; the folders are checked
against the training set's classes before anything is trained). The same command finishes an
interrupted grid, and evaluates a test folder added to a finished one: finished runs are not
trained again, unfinished ones resume from their last checkpoint, and a run whose config the
command would now compose differently is refused unless ``--force``. ``OUT/results.csv``,
``OUT/diagnostics.csv``, ``OUT/report.md`` and ``OUT/report.png`` (``compare/report.py``) are
rebuilt from the run folders at the end, or alone with ``--report-only``.
"""

from __future__ import annotations

import fcntl
import shlex
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from solo_iclmsr.compare.evaluate import EVAL_KINDS
from solo_iclmsr.compare.grid import (BASE, EQUAL_TIME, ICLMSR, Arm, Grid, check_recorded,
                                      default_arms, equal_time_epochs, missing_evaluations,
                                      read_json, step_time, write_json)
from solo_iclmsr.runs.knn import add_test_arguments

__all__ = ["compare", "add_arguments", "CompareResult"]


def add_arguments(parser: Any) -> None:
    """The options of ``solo-iclmsr compare`` (the Hydra overrides are the rest of the line)."""
    parser.add_argument("--config-path", required=True, help="folder of the pretraining config")
    parser.add_argument("--config-name", required=True, help="its name, without .yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: 0)")
    parser.add_argument("--out", required=True, help="folder of the grid (runs and report)")
    parser.add_argument("--arm", nargs=2, action="append", default=[], metavar=("NAME", "OVERRIDES"),
                        help="another arm: the iclmsr arm plus these overrides (repeatable)")
    parser.add_argument("--equal-time", action="store_true",
                        help="add base_equal_time: the base method trained as long as iclmsr")
    parser.add_argument("--eval", nargs="+", default=list(EVAL_KINDS), choices=EVAL_KINDS,
                        help="evaluations of every run (default: knn linear)")
    parser.add_argument("--knn-k", type=int, nargs="+", default=[5, 20], help="k of the k-NN")
    parser.add_argument("--linear-config-path", help="a linear config's folder (default: derived)")
    parser.add_argument("--linear-config-name", help="the linear config's name")
    parser.add_argument("--linear-epochs", type=int, help="epochs of the derived linear config "
                                                          "(default 100)")
    add_test_arguments(parser)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time on this machine")
    parser.add_argument("--launcher", choices=["basic", "joblib", "submitit_local",
                                               "submitit_slurm"],
                        help="Hydra launcher (default: basic, joblib with --jobs > 1)")
    parser.add_argument("--launcher-override", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of the launcher's config (e.g. hydra.launcher.partition=gpu)")
    parser.add_argument("--force", action="store_true",
                        help="rerun runs whose recorded config differs (the old ones are kept)")
    parser.add_argument("--report-only", action="store_true",
                        help="no training: the report from the run folders")
    parser.add_argument("--quiet", action="store_true", help="no progress bars inside the runs")


class CompareResult(dict):
    """Paths of the report's files (``results``, ``diagnostics``, ``report``, ``figure``) and the
    runs that failed (``failed``: {run: message})."""


@contextmanager
def _only_writer(out: Path) -> Iterator[None]:
    """One comparison at a time per folder (released by the system when the process dies)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"--out {out}: another solo-iclmsr compare is running on this folder; "
                             f"wait for it, or use another --out.") from None
        yield


def compare(config_path: str, config_name: str, out: str, overrides: Sequence[str] = (),
            seeds: Sequence[int] = (0,), arms: Sequence[Tuple[str, str]] = (),
            equal_time: bool = False, eval: Sequence[str] = EVAL_KINDS,  # noqa: A002
            knn_k: Sequence[int] = (5, 20), linear_config_path: Optional[str] = None,
            linear_config_name: Optional[str] = None, linear_epochs: Optional[int] = None,
            jobs: int = 1, launcher: Optional[str] = None, launcher_overrides: Sequence[str] = (),
            force: bool = False, report_only: bool = False, quiet: bool = False,
            command: Optional[str] = None, tests: Sequence[str] = (),
            test_suites: Sequence[Sequence[str]] = ()) -> CompareResult:
    """Run (or finish) a comparison and write its report; see the module docstring. ``tests``:
    ``NAME=PATH`` values of ``--test``; ``test_suites``: (suite, root) pairs of
    ``--test-suite``.

    Raises:
        ValueError: one line for a bad argument, a config the runs cannot use (composed and
            checked before anything is trained), a test folder that does not fit the training
            set, or a run recorded with another config.
        OSError: an unreadable image of a test folder (named).
    """
    from solo_iclmsr.data.test_sets import collect_tests

    from solo_iclmsr.compare.launch import launcher_for
    from solo_iclmsr.compare.report import write_report

    root = Path(out).resolve()
    command = command or _command(config_path, config_name, out, overrides, seeds, arms,
                                  equal_time, eval, knn_k, jobs, tests, test_suites)
    with _only_writer(root):
        if report_only:
            meta = read_json(root / "compare.json") if (root / "compare.json").exists() else {}
            return CompareResult(write_report(root, meta.get("command", ""), meta.get("arms", [])),
                                 failed=_failed(root))
        if (linear_config_path is None) != (linear_config_name is None):
            raise ValueError("--linear-config-path and --linear-config-name go together.")
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"--seeds {list(seeds)}: give distinct seeds.")
        launcher = launcher_for(launcher, jobs)
        evaluation: Dict[str, Any] = {"eval": list(eval), "knn_k": list(knn_k),
                                      "linear_epochs": linear_epochs,
                                      "tests": collect_tests(tests, test_suites)}
        if linear_config_path:
            evaluation.update(linear_config_path=str(Path(linear_config_path).resolve()),
                              linear_config_name=linear_config_name)
        grid = _grid(config_path, config_name, root, overrides, seeds, arms, equal_time,
                     evaluation, quiet)
        planned = [f"{a.name}/seed{s}" for a in grid.arms for s in seeds]
        planned += [f"{EQUAL_TIME}/seed{s}" for s in seeds] if equal_time else []
        write_json(root / "grid_runs.json", planned)
        write_json(root / "compare.json", {"command": command, "arms": [a.name for a in grid.arms]
                                           + ([EQUAL_TIME] if equal_time else []),
                                           "seeds": list(seeds)})
        pending = [_prepare(grid, arm, seed, force) for arm in grid.arms for seed in seeds]
        _run(root, [key for key in pending if key], launcher, jobs, launcher_overrides)
        if equal_time:
            later = [_prepare_equal_time(grid, seed, force) for seed in seeds]
            _run(root, [key for key in later if key], launcher, jobs, launcher_overrides)
        paths = write_report(root, command, [a.name for a in grid.arms]
                             + ([EQUAL_TIME] if equal_time else []))
        return CompareResult(paths, failed=_failed(root, planned))


def _command(config_path: str, config_name: str, out: str, overrides: Sequence[str],
             seeds: Sequence[int], arms: Sequence[Tuple[str, str]], equal_time: bool,
             evals: Sequence[str], knn_k: Sequence[int], jobs: int, tests: Sequence[str] = (),
             test_suites: Sequence[Sequence[str]] = ()) -> str:
    words = ["solo-iclmsr", "compare", "--config-path", config_path, "--config-name", config_name,
             "--seeds", *map(str, seeds), "--out", out]
    for name, arm in arms:
        words += ["--arm", name, arm]
    for test in tests:
        words += ["--test", test]
    for suite, root in test_suites:
        words += ["--test-suite", suite, root]
    words += ["--equal-time"] if equal_time else []
    words += ["--eval", *evals, "--knn-k", *map(str, knn_k), "--jobs", str(jobs), *overrides]
    return " ".join(shlex.quote(str(w)) for w in words)


def _grid(config_path: str, config_name: str, root: Path, overrides: Sequence[str],
          seeds: Sequence[int], arms: Sequence[Tuple[str, str]], equal_time: bool,
          evaluation: Dict[str, Any], quiet: bool = False) -> Grid:
    """The grid, every arm's config composed and checked (one line on the first error), and
    the test folders checked against the training set's classes."""
    from solo_iclmsr.config import compose
    from solo_iclmsr.data.test_sets import check_test_sets, training_classes
    from solo_iclmsr.plugin import prepare_pretrain

    config_path = str(Path(config_path).resolve())
    cfg = compose(config_path, config_name, overrides)
    if evaluation.get("tests"):
        check_test_sets(training_classes(cfg), evaluation["tests"],
                        f"the training set data.train_path={str(cfg.data.train_path)!r}")
    all_arms = default_arms(str(cfg.method))
    for name, arm_overrides in arms:
        if name in (BASE, ICLMSR, EQUAL_TIME) or name in [a.name for a in all_arms]:
            raise ValueError(f"--arm {name}: that arm exists already; give it another name.")
        all_arms.append(Arm.parse(name, arm_overrides))
    grid = Grid(config_path, config_name, list(overrides), list(seeds), all_arms, root,
                evaluation, equal_time, str(cfg.name), quiet)
    for arm in all_arms:
        spec = grid.spec(arm, seeds[0])
        try:
            prepare_pretrain(compose(config_path, config_name, spec.overrides))
        except ValueError as error:
            raise ValueError(f"arm {arm.name}: {error}") from None
    return grid


def _prepare(grid: Grid, arm: Arm, seed: int, force: bool,
             derived: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """The run's folder with its ``spec.json`` and recorded ``config.yaml``; its key if it
    still has work to do."""
    from solo_iclmsr.config import compose

    spec = grid.spec(arm, seed, derived)
    folder = grid.folder(arm.name, seed)
    cfg = compose(spec.config_path, spec.config_name, spec.overrides)
    check_recorded(folder, cfg, force)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "config.yaml").exists():
        OmegaConf.save(cfg, folder / "config.yaml")
    spec.save(folder)
    done = read_json(folder / "eval.json") if (folder / "eval.json").exists() else {}
    if done and not missing_evaluations(done, spec.evaluation):
        return None
    (folder / "error.txt").unlink(missing_ok=True)
    return spec.key


def _prepare_equal_time(grid: Grid, seed: int, force: bool) -> Optional[str]:
    """``base_equal_time`` of one seed: the base arm with ``max_epochs`` scaled by the measured
    per-step time ratio of the seed's finished base and iclmsr runs (a step schedule's decay
    epochs scaled alike)."""
    from solo_iclmsr.config import compose

    runs = {name: grid.folder(name, seed) / "run.json" for name in (BASE, ICLMSR)}
    if not all(path.exists() for path in runs.values()):
        return None  # reported as missing: one of the two arms failed
    base, icl = (read_json(runs[name]) for name in (BASE, ICLMSR))
    epochs = equal_time_epochs(base["max_epochs"], step_time(base), step_time(icl))
    arm = next(a for a in grid.arms if a.name == BASE)
    extra = [f"++max_epochs={epochs}"]
    cfg = compose(grid.config_path, grid.config_name, [*grid.overrides, *arm.overrides])
    if OmegaConf.select(cfg, "scheduler.name") == "step":
        steps = [round(e * epochs / base["max_epochs"])
                 for e in OmegaConf.select(cfg, "scheduler.lr_decay_steps", default=[])]
        extra.append(f"++scheduler.lr_decay_steps=[{','.join(map(str, steps))}]")
    derived = {"from": f"{BASE}/seed{seed} and {ICLMSR}/seed{seed}",
               "base_seconds_per_step": step_time(base),
               "iclmsr_seconds_per_step": step_time(icl), "max_epochs": epochs}
    return _prepare(grid, Arm(EQUAL_TIME, (*arm.overrides, *extra)), seed, force, derived)


def _run(root: Path, keys: List[str], launcher: str, jobs: int,
         launcher_overrides: Sequence[str]) -> None:
    """The jobs through the launcher; a launcher that fails before a job ran leaves its exit code
    in the run's folder (the report then says so)."""
    if not keys:
        return
    from solo_iclmsr.compare.launch import launch

    code = launch(root, keys, launcher, jobs, launcher_overrides)
    if code != 0:
        for key in keys:
            folder = root / "runs" / key
            if not (folder / "eval.json").exists() and not (folder / "error.txt").exists():
                (folder / "error.txt").write_text(
                    f"the {launcher} launcher exited with code {code} (its message is above)\n")


def _failed(root: Path, planned: Sequence[str] = ()) -> Dict[str, str]:
    """{run: why} for every planned run without an evaluation."""
    keys = list(planned) or [f"{p.parent.name}/{p.name}" for p in (root / "runs").glob("*/seed*")
                             if p.name[4:].isdigit()]
    failed = {}
    for key in keys:
        folder = root / "runs" / key
        if (folder / "eval.json").exists():
            continue
        error = folder / "error.txt"
        failed[key] = error.read_text().strip() if error.exists() else "not finished"
    return failed
