"""The report of a comparison, rebuilt from its run folders alone.

* ``results.csv``: one row per run x test set x metric, with the run's training time and time
  per step;
* ``report.md``: per metric, mean +- std over the seeds of every arm and test set (the run's own
  test versions, then the test folders of ``--test`` / ``--test-suite``); the seed-paired
  difference of every arm to ``base`` with its 95% t-interval and n; with ImageNet-9's
  ``mixed_same`` and ``mixed_rand``, the BG-Gap of every arm (and its accuracy on ``only_fg``)
  with its seed-paired difference; the evaluation time against the training time; the training
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
from solo_iclmsr.data.test_sets import BG_GAP, IN9_VARIANTS

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
    eval_seconds: float = float("nan")

    FIELDS = ("arm", "seed", "test_set", "metric", "value", "train_seconds", "seconds_per_step",
              "cpu_seconds_per_step", "steps", "max_epochs", "eval_seconds")


#: The order of the test sets in the tables (the others follow by name).
TEST_ORDER = ("full", "fg", "decorrelated", "bg", "val", *IN9_VARIANTS)


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
                      steps=run["steps"], max_epochs=run["max_epochs"],
                      eval_seconds=float(scores.get("seconds", float("nan"))))
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
                            steps=int(r["steps"]), max_epochs=int(r["max_epochs"]),
                            eval_seconds=float(r.get("eval_seconds") or "nan")))
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
    tests = _ordered([r.test_set for r in rows], TEST_ORDER)
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
                    cells.append(_paired_cell([(a[s], b[s]) for s in a if s in b]))
                table.append([arm, *cells])
            lines += [_table(["arm", *tests], table), ""]
    lines += bg_gap_section(values, arm_names, metrics)
    lines += ["## Training time", "",
              "Per run: wall time of the training epochs, and the wall and process CPU time of "
              "one training step (the CPU time measures a step's work on a machine shared with "
              "other jobs); mean over the seeds, and the ratio to the base arm's mean; the wall "
              "time of the run's evaluations (k-NN and linear probe on every test set).", ""]

    def mean_of(rs: List[Row], key: str) -> float:
        vals = [getattr(r, key) for r in rs if not math.isnan(getattr(r, key))]
        return statistics.mean(vals) if vals else float("nan")

    def ratio(value: float, base: float) -> str:
        return f"{value / base:.2f}x" if base and not math.isnan(value / base) else "-"

    base_runs = list(runs.get(BASE, {}).values())
    base = {k: mean_of(base_runs, k) if base_runs else float("nan")
            for k in ("train_seconds", "seconds_per_step", "cpu_seconds_per_step")}
    evals = {arm: mean_of(list(runs[arm].values()), "eval_seconds") for arm in arm_names}
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
                      ratio(means["cpu_seconds_per_step"], base["cpu_seconds_per_step"]),
                      "-" if math.isnan(evals[arm]) else f"{evals[arm]:.0f}"])
    lines += [_table(["arm", "runs", "epochs", "steps", "train s", "s / step", "CPU s / step",
                      "train s / base", "s/step / base", "CPU s/step / base", "eval s"], table),
              ""]
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


def _paired_cell(pairs: Sequence[Tuple[float, float]]) -> str:
    """A seed-paired difference as a table cell: mean [95% t-interval] (n=...), ``-`` for none."""
    d, half, n = paired_difference(pairs)
    return "-" if n == 0 else f"{d:+.1f}" + (
        f" [{d - half:+.1f}, {d + half:+.1f}]" if half is not None else "") + f" (n={n})"


def bg_gap_section(values: Dict[Tuple[str, str, str], Dict[int, float]], arms: Sequence[str],
                   metrics: Sequence[str]) -> List[str]:
    """The ImageNet-9 section of ``report.md`` (none without both ``mixed_same`` and
    ``mixed_rand``): per metric and arm, the accuracy on ``only_fg``, ``mixed_same`` and
    ``mixed_rand``, the BG-Gap (``mixed_same`` - ``mixed_rand``, per seed) as mean ± std, and
    the seed-paired difference to ``base`` of the ``only_fg`` accuracy and of the BG-Gap."""
    same, rand = BG_GAP
    if not any(t == same for _, _, t in values) or not any(t == rand for _, _, t in values):
        return []
    lines = ["## Background gap (ImageNet-9)", "",
             f"BG-Gap = top-1 on `{same}` (the foreground on a background of its own class) "
             f"minus top-1 on `{rand}` (on a random class's background), per seed (Xiao et al. "
             f"2020): the accuracy the background carries; `only_fg`: the foreground alone. "
             f"Mean ± std over the seeds (n seeds in brackets); then the seed-paired difference "
             f"to `{BASE}` (arm - base, same seed): mean, 95% t-interval, n.", ""]
    table, paired = [], []
    for metric in metrics:
        name = metric.replace("_top1", "")
        for arm in arms:
            a, b = values.get((metric, arm, same), {}), values.get((metric, arm, rand), {})
            gap = {s: a[s] - b[s] for s in a if s in b}
            if not gap:
                continue
            fg = values.get((metric, arm, "only_fg"), {})
            table.append([arm, name, f"{mean_std(list(fg.values()))} ({len(fg)})",
                          f"{mean_std(list(a.values()))} ({len(a)})",
                          f"{mean_std(list(b.values()))} ({len(b)})",
                          f"{mean_std(list(gap.values()))} ({len(gap)})"])
            if arm == BASE or BASE not in arms:
                continue
            base_fg = values.get((metric, BASE, "only_fg"), {})
            bs, br = values.get((metric, BASE, same), {}), values.get((metric, BASE, rand), {})
            base_gap = {s: bs[s] - br[s] for s in bs if s in br}
            paired.append([arm, name,
                           _paired_cell([(fg[s], base_fg[s]) for s in fg if s in base_fg]),
                           _paired_cell([(gap[s], base_gap[s]) for s in gap if s in base_gap])])
    lines += [_table(["arm", "metric", "only_fg", same, rand, "BG-Gap"], table), ""]
    if paired:
        lines += [_table(["arm", "metric", "only_fg - base", "BG-Gap - base"], paired), ""]
    return lines


def _figure(rows: List[Row], arms: List[str], path: Path, per_row: int = 6) -> Path:
    """Per test set (and the BG-Gap where there is one), the first metric of every run as a
    point and each arm's mean as a bar, and below it that metric against the training time;
    ``per_row`` test sets to a row of panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = next((m for m in ("knn5_top1", "knn20_top1", "linear_top1")
                   if any(r.metric == m for r in rows)), rows[0].metric)
    points: Dict[str, Dict[str, List[Tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    by_run: Dict[Tuple[str, int, str], Row] = {}
    for r in rows:
        if r.metric == metric:
            points[r.test_set][r.arm].append((r.train_seconds, r.value))
            by_run[(r.arm, r.seed, r.test_set)] = r
    tests = _ordered(list(points), TEST_ORDER)
    same, rand = BG_GAP
    for (arm, seed, test), r in by_run.items():
        if test == same and (arm, seed, rand) in by_run:
            gap = r.value - by_run[(arm, seed, rand)].value
            points["BG-Gap"][arm].append((r.train_seconds, gap))
    tests += ["BG-Gap"] if "BG-Gap" in points else []
    columns = min(per_row, len(tests))
    blocks = (len(tests) + columns - 1) // columns
    fig, axes = plt.subplots(2 * blocks, columns, figsize=(3.2 * columns + 1, 6.0 * blocks),
                             squeeze=False)
    colors = {arm: f"C{i % 10}" for i, arm in enumerate(arms)}
    for j, test in enumerate(tests):
        row, column = 2 * (j // columns), j % columns
        top, bottom = axes[row][column], axes[row + 1][column]
        for i, arm in enumerate(arms):
            pts = points[test].get(arm, [])
            if not pts:
                continue
            vals = [v for _, v in pts]
            top.bar(i, statistics.mean(vals), 0.7, color=colors[arm], alpha=0.45)
            top.plot([i] * len(vals), vals, "o", color=colors[arm], ms=4)
            bottom.plot(*zip(*pts), "o", color=colors[arm], ms=4, label=arm)
        top.set_xticks(range(len(arms)), arms, rotation=45, ha="right", fontsize=7)
        top.set_title(f"{metric}, {'test ' if test != 'BG-Gap' else ''}{test}", fontsize=8)
        bottom.set_xlabel("training time (s)", fontsize=7)
        bottom.set_ylabel(metric if test != "BG-Gap" else f"BG-Gap ({metric})", fontsize=7)
    for j in range(len(tests), blocks * columns):
        axes[2 * (j // columns)][j % columns].axis("off")
        axes[2 * (j // columns) + 1][j % columns].axis("off")
    axes[1][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
