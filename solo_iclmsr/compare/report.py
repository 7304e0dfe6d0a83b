"""The report of a comparison, rebuilt from its run folders alone.

* ``results.csv``: one row per run x test set x metric, with the run's training time and time
  per step;
* ``report.md``: per metric, mean +- std over the seeds of every arm and test set; the
  seed-paired difference of every arm to ``base`` with its 95% t-interval and n; the training
  time of every arm and its ratio to ``base``; the runs' diagnostics (last epoch of their
  ``metrics.csv``); the machine, torch, Lightning and solo-learn versions and the command;
* ``diagnostics.csv``: per arm, the mean over its runs of every column of their ``metrics.csv``
  (last logged value): with ``results.csv``, all that a summary across grids needs
  (``read_report``), without the run folders;
* ``report.png``: per test set, each seed as a point and the mean as a bar (the first metric);
  below, that metric against the training time of every run.
"""

from __future__ import annotations

import csv
import math
import os
import platform
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from solo_iclmsr.compare.grid import BASE, read_json

__all__ = ["Row", "collect", "write_report", "read_report", "arm_means", "paired_difference",
           "mean_std", "machine"]

#: Columns of the runs' metrics.csv shown in the diagnostics tables (those present): of the
#: training step, and of the strata probe on held-out images.
DIAGNOSTICS = ("train_msr_loss", "strata/cross_image_cos", "strata/within_image_cos",
               "strata/effective_channels", "train_meta_grad_norm_ct", "train_meta_grad_norm_uni",
               "diag/grad_cos_msr_ct", "diag/meta_first_order_cos", "diag/meta_first_order_norm",
               "diag/meta_curvature_norm")
PROBE = ("strata_probe/cross_image_cos", "strata_probe/within_image_cos",
         "strata_probe/explained_by_class_over_chance",
         "strata_probe/explained_by_background_over_chance", "strata_probe/fg_share",
         "strata_probe/fg_share_uniform")


@dataclass
class Row:
    """One line of ``results.csv``."""

    arm: str
    seed: int
    test_set: str
    metric: str
    value: float
    train_seconds: float
    seconds_per_step: float
    cpu_seconds_per_step: float
    steps: int
    max_epochs: int

    FIELDS = ("arm", "seed", "test_set", "metric", "value", "train_seconds", "seconds_per_step",
              "cpu_seconds_per_step", "steps", "max_epochs")


def _runs(out: Path) -> List[Path]:
    return sorted(p for p in (out / "runs").glob("*/seed*") if p.name[4:].isdigit())


def collect(out: Path) -> Tuple[List[Row], Dict[Tuple[str, int], Dict[str, float]]]:
    """The rows of every evaluated run under ``out/runs``, and each run's diagnostics."""
    rows: List[Row] = []
    diagnostics: Dict[Tuple[str, int], Dict[str, float]] = {}
    for folder in _runs(out):
        if not (folder / "eval.json").exists():
            continue
        run, scores = read_json(folder / "run.json"), read_json(folder / "eval.json")
        arm, seed = folder.parent.name, int(folder.name[4:])
        common = dict(arm=arm, seed=seed, train_seconds=run["train_seconds"],
                      seconds_per_step=run["seconds_per_step"],
                      cpu_seconds_per_step=run.get("cpu_seconds_per_step", float("nan")),
                      steps=run["steps"], max_epochs=run["max_epochs"])
        for kind in ("knn", "linear"):
            for test, metrics in scores.get(kind, {}).items():
                named = metrics.items() if kind == "knn" else [("linear", metrics)]
                for name, topk in named:
                    for k in ("top1", "top5"):
                        rows.append(Row(test_set=test, metric=f"{name}_{k}", value=topk[k],
                                        **common))
        diagnostics[(arm, seed)] = _last_metrics(folder / run["checkpoint"])
    return rows, diagnostics


def _last_metrics(checkpoint: Path) -> Dict[str, float]:
    """The last value of every column of the ``metrics.csv`` beside the run's final checkpoint
    (``_epoch`` suffixes dropped)."""
    out: Dict[str, float] = {}
    path = checkpoint.parent / "metrics.csv"
    if not path.exists():
        return out
    with open(path) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and key not in ("epoch", "step") and value not in ("", None):
                    out[key.removesuffix("_epoch")] = float(value)
    return out


def arm_means(diagnostics: Dict[Tuple[str, int], Dict[str, float]]
              ) -> Dict[str, Dict[str, Tuple[float, int]]]:
    """Per arm and key, (mean over the arm's runs, how many runs logged it)."""
    values: Dict[str, Dict[str, List[float]]] = defaultdict(lambda: defaultdict(list))
    for (arm, _), metrics in diagnostics.items():
        for key, value in metrics.items():
            values[arm][key].append(value)
    return {arm: {k: (statistics.mean(v), len(v)) for k, v in keys.items()}
            for arm, keys in values.items()}


def read_report(out: Path) -> Tuple[List[Row], Dict[str, Dict[str, float]]]:
    """The rows of ``out/results.csv`` and the per-arm diagnostic means of
    ``out/diagnostics.csv`` (empty where absent), as ``write_report`` wrote them."""
    rows: List[Row] = []
    with open(out / "results.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows.append(Row(arm=r["arm"], seed=int(r["seed"]), test_set=r["test_set"],
                            metric=r["metric"], value=float(r["value"]),
                            train_seconds=float(r["train_seconds"]),
                            seconds_per_step=float(r["seconds_per_step"]),
                            cpu_seconds_per_step=float(r["cpu_seconds_per_step"]),
                            steps=int(r["steps"]), max_epochs=int(r["max_epochs"])))
    means: Dict[str, Dict[str, float]] = defaultdict(dict)
    if (out / "diagnostics.csv").exists():
        with open(out / "diagnostics.csv", newline="") as f:
            for r in csv.DictReader(f):
                means[r["arm"]][r["key"]] = float(r["mean"])
    return rows, dict(means)


def mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` (sample std), or the value alone for one run."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def paired_difference(pairs: Sequence[Tuple[float, float]]) -> Tuple[float, Optional[float], int]:
    """(mean of arm - base over seeds, half-width of its 95% t-interval or None, n)."""
    diffs = [a - b for a, b in pairs]
    n = len(diffs)
    if n == 0:
        return float("nan"), None, 0
    mean = statistics.mean(diffs)
    if n < 2:
        return mean, None, n
    from scipy.stats import t

    return mean, float(t.ppf(0.975, n - 1)) * statistics.stdev(diffs) / math.sqrt(n), n


def machine() -> str:
    """CPU (or GPU) of this machine, and the versions that matter."""
    import importlib.metadata as md

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = f"{os.cpu_count()} CPU cores ({cpu})"
    if torch.cuda.is_available():
        where = f"{torch.cuda.get_device_name(0)}, " + where

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "absent"

    return (f"{where}; torch {torch.__version__}, lightning {version('lightning')}, solo-learn "
            f"{version('solo-learn')}, solo-iclmsr {version('solo-iclmsr')}, Python "
            f"{platform.python_version()}")


def _ordered(values: Sequence[str], first: Sequence[str]) -> List[str]:
    """The distinct ``values``: those named in ``first`` in its order, then the rest by name."""
    seen = [v for v in dict.fromkeys(first) if v in values]
    return seen + sorted(v for v in set(values) if v not in seen)


def _table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def write_report(out: Path, command: str = "", arms: Sequence[str] = ()) -> Dict[str, Path]:
    """Write ``results.csv``, ``diagnostics.csv``, ``report.md`` and ``report.png`` into
    ``out``; returns their paths. ``arms`` orders the arms (the others follow by name)."""
    rows, diagnostics = collect(out)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(Row.FIELDS)
        for r in rows:
            writer.writerow([getattr(r, k) for k in Row.FIELDS])
    with open(out / "diagnostics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("arm", "key", "mean", "runs"))
        for arm, keys in sorted(arm_means(diagnostics).items()):
            writer.writerows((arm, k, repr(m), n) for k, (m, n) in sorted(keys.items()))
    text = report_text(rows, diagnostics, command, arms)
    (out / "report.md").write_text(text)
    paths = {"results": out / "results.csv", "diagnostics": out / "diagnostics.csv",
             "report": out / "report.md"}
    if rows:
        paths["figure"] = _figure(rows, _ordered([r.arm for r in rows], [BASE, *arms]),
                                  out / "report.png")
    return paths


def report_text(rows: List[Row], diagnostics: Dict[Tuple[str, int], Dict[str, float]],
                command: str = "", arms: Sequence[str] = ()) -> str:
    """The markdown of ``report.md`` (see the module docstring)."""
    arm_names = _ordered([r.arm for r in rows], [BASE, *arms])
    tests = _ordered([r.test_set for r in rows], ["full", "fg", "decorrelated", "bg", "val"])
    metrics = [m for m in _ordered([r.metric for r in rows], ["knn5_top1", "knn20_top1",
                                                                "linear_top1"])
               if m.endswith("top1")]
    values: Dict[Tuple[str, str, str], Dict[int, float]] = defaultdict(dict)
    runs: Dict[str, Dict[int, Row]] = defaultdict(dict)
    for r in rows:
        values[(r.metric, r.arm, r.test_set)][r.seed] = r.value
        runs[r.arm][r.seed] = r
    lines = ["# Comparison", ""]
    if command:
        lines += [f"* command: `{command}`"]
    lines += [f"* report written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} "
              f"on {machine()}", f"* runs evaluated: {sum(len(v) for v in runs.values())} "
              f"({', '.join(f'{a}: {len(runs[a])}' for a in arm_names)})", ""]
    for metric in metrics:
        lines += [f"## {metric.replace('_top1', '')} top-1 (%)", "",
                  "Mean ± std over the seeds (n seeds in brackets).", ""]
        table = [[arm] + [f"{mean_std(list(values[(metric, arm, t)].values()))} "
                          f"({len(values[(metric, arm, t)])})" for t in tests]
                 for arm in arm_names]
        lines += [_table(["arm", *tests], table), ""]
        if BASE in arm_names and len(arm_names) > 1:
            lines += [f"Seed-paired difference to `{BASE}` (arm - base, same seed): mean, 95% "
                      f"t-interval, n.", ""]
            table = []
            for arm in arm_names:
                if arm == BASE:
                    continue
                cells = []
                for t in tests:
                    a, b = values[(metric, arm, t)], values[(metric, BASE, t)]
                    d, half, n = paired_difference([(a[s], b[s]) for s in a if s in b])
                    cells.append("-" if n == 0 else f"{d:+.1f}" + (
                        f" [{d - half:+.1f}, {d + half:+.1f}]" if half is not None else "")
                        + f" (n={n})")
                table.append([arm, *cells])
            lines += [_table(["arm", *tests], table), ""]
    lines += ["## Training time", "",
              "Per run: wall time of the training epochs, and the wall and process CPU time of "
              "one training step (the CPU time measures a step's work on a machine shared with "
              "other jobs); mean over the seeds, and the ratio to the base arm's mean.", ""]

    def mean_of(rs: List[Row], key: str) -> float:
        vals = [getattr(r, key) for r in rs if not math.isnan(getattr(r, key))]
        return statistics.mean(vals) if vals else float("nan")

    def ratio(value: float, base: float) -> str:
        return f"{value / base:.2f}x" if base and not math.isnan(value / base) else "-"

    base_runs = list(runs.get(BASE, {}).values())
    base = {k: mean_of(base_runs, k) if base_runs else float("nan")
            for k in ("train_seconds", "seconds_per_step", "cpu_seconds_per_step")}
    table = []
    for arm in arm_names:
        rs = list(runs[arm].values())
        means = {k: mean_of(rs, k) for k in base}
        table.append([arm, str(len(rs)), f"{statistics.mean(r.max_epochs for r in rs):g}",
                      f"{statistics.mean(r.steps for r in rs):.0f}",
                      f"{means['train_seconds']:.0f}", f"{means['seconds_per_step']:.3f}",
                      f"{means['cpu_seconds_per_step']:.3f}",
                      ratio(means["train_seconds"], base["train_seconds"]),
                      ratio(means["seconds_per_step"], base["seconds_per_step"]),
                      ratio(means["cpu_seconds_per_step"], base["cpu_seconds_per_step"])])
    lines += [_table(["arm", "runs", "epochs", "steps", "train s", "s / step", "CPU s / step",
                      "train s / base", "s/step / base", "CPU s/step / base"], table), ""]
    means = arm_means(diagnostics)
    for keys, title, text in (
            (DIAGNOSTICS, "Diagnostics",
             "Last logged epoch of each run's metrics.csv, mean over the seeds: L_msr; the "
             "cross-image cosine of a_t (1: the same strata for every image), the cosine of "
             "two strata of one image and the effective channels of a_t; the norms of the "
             "meta-gradient's L_ct(theta') and gamma L_uni parts; the cosine between grad L_msr "
             "and grad L_ct on the batch; the cosine of the meta-gradient's first-order "
             "(alignment) term with its L_ct(theta') part, and the norms of that term and of the "
             "rest (ICLMSR.md section 8)."),
            (PROBE, "Strata on held-out images",
             "The strata probe of the last epoch (``diagnostics.*``): cross-image and "
             "within-image cosine of a_t; the share of A's variation across images explained "
             "by the class and by the background type, over its chance level; the share of "
             "a_t's weight on the channels that prefer the foreground, and a uniform "
             "weighting's.")):
        present = [k for k in keys if any(k in d for d in diagnostics.values())]
        if not present:
            continue
        lines += [f"## {title}", "", text, ""]
        table = [[arm, *(f"{means[arm][k][0]:.3g}" if k in means.get(arm, {}) else "-"
                         for k in present)] for arm in arm_names]
        lines += [_table(["arm", *present], table), ""]
    return "\n".join(lines)


def _figure(rows: List[Row], arms: List[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = next((m for m in ("knn5_top1", "knn20_top1", "linear_top1")
                   if any(r.metric == m for r in rows)), rows[0].metric)
    rows = [r for r in rows if r.metric == metric]
    tests = _ordered([r.test_set for r in rows], ["full", "fg", "decorrelated", "bg", "val"])
    fig, axes = plt.subplots(2, len(tests), figsize=(3.2 * len(tests) + 1, 6.0), squeeze=False)
    colors = {arm: f"C{i % 10}" for i, arm in enumerate(arms)}
    for j, test in enumerate(tests):
        ax = axes[0][j]
        for i, arm in enumerate(arms):
            vals = [r.value for r in rows if r.arm == arm and r.test_set == test]
            if not vals:
                continue
            ax.bar(i, statistics.mean(vals), 0.7, color=colors[arm], alpha=0.45)
            ax.plot([i] * len(vals), vals, "o", color=colors[arm], ms=4)
        ax.set_xticks(range(len(arms)), arms, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{metric}, test {test}", fontsize=8)
        ax = axes[1][j]
        for arm in arms:
            pts = [(r.train_seconds, r.value) for r in rows if r.arm == arm and r.test_set == test]
            if pts:
                ax.plot(*zip(*pts), "o", color=colors[arm], ms=4, label=arm)
        ax.set_xlabel("training time (s)", fontsize=7)
        ax.set_ylabel(metric, fontsize=7)
    axes[1][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
