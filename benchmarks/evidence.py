"""Evidence for ICL-MSR, produced with ``solo-iclmsr compare``: one command regenerates every
table and plot of ``benchmarks/results/evidence.md``.

    python benchmarks/evidence.py --scale cpu --out runs/evidence --jobs 2
    python benchmarks/evidence.py --scale cpu --grids simclr-rho0.95 --report-only

Every grid is a ``solo-iclmsr compare`` of ``configs/pretrain/builtin/<method>.yaml`` on the
built-in set at one rho, with the scale's overrides (``grid_overrides``), seeds 0-2 and the arms
``base``, ``iclmsr`` (the paper's reading) and ``base_equal_time`` (the base method trained for
the time ICL-MSR took), plus ``base_fg`` at the largest rho (the base method trained on
foreground-only images: the precondition, and the paper's 2x2 motivation table with the ``base``
arm), for SimCLR the ablations and options of ``ARMS``, and for BYOL at rho 0 and Barlow Twins
at rho 0.95 the low-cost mode (``random_fixed``) against the base trained as long
(``base_x1.25``). Each grid's report (``report.md``, ``results.csv``, ``diagnostics.csv``,
``report.png``, ``compare.json``) is copied to ``benchmarks/results/evidence/<grid>/``; this
script adds only what compare does not do: the targets across grids, the 2x2 table, and the
strata analyses (probe statistics on held-out images and stratum maps). The summary is built
from those copies, so every committed grid stays in it when its run folders are gone (a grid
spans several machines or sessions).

A dataset with real foreground masks (``--masks coco --annotations FILE --image-root DIR``, or
``--masks folder --image-root DIR [--masks-root DIR]``) gives one more grid, ``masked``: SimCLR
trained on the full (``base``, ``iclmsr``) and foreground-only (``base_fg``) images of four fifths
of the set, written once as ImageFolder trees of PNGs and trained on as solo's ``custom`` dataset,
and tested by compare on the held-out fifth in its full / fg / bg versions
(``data.loaders.evaluation_sets``): the paper's 2x2 table on real masks.

A grid is resumable as compare is: the same command after an interruption trains only what is
missing. ``--report-only`` rebuilds the reports of the grids whose run folders are in ``--out``
and the summary from every committed report; ``--set KEY=VALUE`` adds a
Hydra override to every run (after the scale's), e.g. to shrink a scale for a smoke test.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIGS = ROOT / "configs" / "pretrain" / "builtin"
RESULTS = ROOT / "benchmarks" / "results"
CHANCE = 10.0  # the built-in set has 10 classes
TESTS = ("full", "fg", "decorrelated")
PRIMARY = "knn5_top1"


@dataclass
class MethodScale:
    """One method at one scale: learning rate (before solo's batch/256 scaling), epochs,
    projector sizes, and Hydra overrides of this method's runs alone (after the scale's)."""

    lr: float
    epochs: int
    kwargs: Dict[str, Any] = field(default_factory=dict)
    overrides: Tuple[str, ...] = ()


@dataclass
class Scale:
    """Sizes shared by every run of a scale, as Hydra overrides of the built-in configs."""

    name: str
    overrides: List[str]
    methods: Dict[str, MethodScale]
    probe_images: int = 1000

    def describe(self) -> str:
        return ", ".join(self.overrides)


_CPU_PROJ = {"proj_hidden_dim": 512, "proj_output_dim": 128}
_CPU_TWICE = ("++data.builtin.n_train=7168",)
SCALES: Dict[str, Scale] = {
    # 2 CPU cores: a narrow timm test_resnet with the CIFAR stem (a 4x4 last map at 32 px),
    # 3584 / 1000 images, batch 112. Per method, the smallest run with which the base method
    # trained on foreground-only images scores >= 2x chance on them (BENCHMARKS.md section 4).
    # BYOL and MoCo v3 fell short with 3584 images at 8 and at 12 epochs (18.9 / 19.0, then
    # 19.1 / 19.6 over three seeds): they train on twice the images for 6 epochs, the same steps
    # as 12 (20.0 / 21.4).
    "cpu": Scale("cpu", [
        "backbone.name=test_resnet", "++backbone.kwargs.cifar=true",
        "++backbone.kwargs.stem_width=8", "++backbone.kwargs.channels=[16,32,48,96]",
        "optimizer.batch_size=112", "++scheduler.warmup_epochs=0", "accelerator=cpu",
        "data.num_workers=0", "augmentations.0.rrc.crop_min_scale=0.2",
        "augmentations.0.crop_size=32", "++data.builtin.image_size=32",
        "++data.builtin.n_train=3584", "++data.builtin.n_test=1000", "++data.builtin.seed=0",
        "++limit_val_batches=0", "++iclmsr.msr_width=32", "++iclmsr.msr_depth=3",
        "++diagnostics.every_n_steps=16", "++diagnostics.images=1000"], {
        "simclr": MethodScale(0.4, 4, _CPU_PROJ),
        "byol": MethodScale(1.0, 6, {**_CPU_PROJ, "pred_hidden_dim": 512}, _CPU_TWICE),
        "barlow_twins": MethodScale(0.3, 4, {"proj_hidden_dim": 512, "proj_output_dim": 512,
                                             "scale_loss": 1.0}),
        "mocov3": MethodScale(0.3, 6, {**_CPU_PROJ, "pred_hidden_dim": 512}, _CPU_TWICE),
        "vicreg": MethodScale(0.3, 4, {"proj_hidden_dim": 512, "proj_output_dim": 512}),
    }),
    # A GPU: ResNet-18 with the CIFAR stem, the built-in set at CIFAR's size, the methods'
    # default projectors and f_msr. Not run yet.
    "gpu": Scale("gpu", [
        "backbone.name=resnet18", "optimizer.batch_size=256", "++scheduler.warmup_epochs=10",
        "accelerator=gpu", "data.num_workers=4", "++data.builtin.n_train=50000",
        "++data.builtin.n_test=10000", "++data.builtin.seed=0", "++limit_val_batches=0",
        "++diagnostics.every_n_steps=50", "++diagnostics.images=1000"], {
        name: MethodScale(lr, 200) for name, lr in (("simclr", 0.4), ("byol", 1.0),
                                                     ("barlow_twins", 0.3), ("mocov3", 0.3),
                                                     ("vicreg", 0.3))}),
}

#: Arms beyond base / iclmsr / base_equal_time (``--arm NAME "OVERRIDES"`` of compare).
ARMS: Dict[str, str] = {
    # the precondition: the base method trained on foreground-only images
    "base_fg": "++iclmsr.enabled=false ++data.builtin.variant=fg",
    # ablations of the strata (ICLMSR.md section 8)
    "frozen": "++iclmsr.strata=frozen",
    "random_fixed": "++iclmsr.strata=random_fixed",
    "uniform": "++iclmsr.strata=uniform",
    "meta_none": "++iclmsr.meta_grad=none",
    # the options that moved the strata in the previous round
    "softmax": "++iclmsr.weight_head=softmax",
    "features_softmax": "++iclmsr.msr_input=features ++iclmsr.weight_head=softmax",
    # cheaper meta steps (BENCHMARKS.md section 1): the virtual step on the last stage, with and
    # without a meta sub-batch of half the batch, against the meta step every fourth batch
    "stages1": "++iclmsr.meta_stages=1",
    "stages1_batch50": "++iclmsr.meta_stages=1 ++iclmsr.meta_batch=0.5",
    "every4": "++iclmsr.meta_every=4",
    # the base trained as long as the cheap ablations take (1.2-1.3x the base's step)
    "base_x1.25": "++iclmsr.enabled=false max_epochs={epochs_x1_25}",
}
ABLATIONS = ("frozen", "random_fixed", "uniform", "meta_none", "softmax", "features_softmax")
CHEAPER = ("stages1", "stages1_batch50", "every4")


@dataclass(frozen=True)
class GridSpec:
    """One comparison: a method at one rho (or on a masked set), and its extra arms."""

    method: str
    rho: float
    arms: Tuple[str, ...] = ()
    masked: bool = False

    @property
    def name(self) -> str:
        return "masked" if self.masked else f"{self.method}-rho{self.rho:g}"


GRIDS: Tuple[GridSpec, ...] = (
    GridSpec("simclr", 0.95, ("base_fg", *ABLATIONS, *CHEAPER)),
    GridSpec("simclr", 0.0, (*ABLATIONS, *CHEAPER, "base_x1.25")),
    GridSpec("byol", 0.95, ("base_fg",)),
    # the low-cost mode (random_fixed) on a second method, against the base trained as long
    GridSpec("byol", 0.0, ("random_fixed", "base_x1.25")),
    # the one gain beyond the seed noise at rho 0.95: does the low-cost mode carry it?
    GridSpec("barlow_twins", 0.95, ("base_fg", "random_fixed", "base_x1.25")),
    GridSpec("mocov3", 0.95, ("base_fg",)),
    GridSpec("vicreg", 0.95, ("base_fg",)),
)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


def grid_overrides(scale: Scale, method: str, rho: float,
                   epochs: Optional[int] = None) -> List[str]:
    """The Hydra overrides of every run of a grid (on ``configs/pretrain/builtin/<method>``);
    ``epochs``: other than the scale's (the diagnostics then still come at the last epoch)."""
    m = scale.methods[method]
    epochs = epochs or m.epochs
    return [*scale.overrides, *m.overrides, f"max_epochs={epochs}", f"optimizer.lr={m.lr:g}",
            f"++data.builtin.rho={rho:g}", f"++diagnostics.every_n_epochs={epochs}",
            *[f"++method_kwargs.{k}={_value(v)}" for k, v in m.kwargs.items()]]


def override_values(overrides: Sequence[str]) -> Dict[str, str]:
    """{key: value} of Hydra overrides (``+``/``++`` dropped; the last of a key wins)."""
    values = {}
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep:
            values[key.lstrip("+")] = value
    return values


def command_overrides(command: str) -> Dict[str, str]:
    """The overrides a recorded ``solo-iclmsr compare`` command gave every run of its grid."""
    from solo_iclmsr.cli.compare import add_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    _, rest = parser.parse_known_args(shlex.split(command)[2:])
    return override_values(rest)


def run_epochs(scale: Scale, method: str, extra: Sequence[str] = ()) -> int:
    """The epochs of a grid of ``method``: the scale's, unless ``extra`` (``--set``) sets them."""
    return int(override_values([f"max_epochs={scale.methods[method].epochs}", *extra])
               ["max_epochs"])


def run_overrides(scale: Scale, grid: GridSpec, extra: Sequence[str] = ()) -> List[str]:
    """What every run of a built-in ``grid`` gets: the scale's overrides, then ``--set``'s."""
    epochs = run_epochs(scale, grid.method, extra)
    return [*grid_overrides(scale, grid.method, grid.rho, epochs), *extra]


def has_runs(folder: Path) -> bool:
    """Whether the grid in ``folder`` was ever run (compare's ``runs/`` folder exists)."""
    return (folder / "runs").is_dir()


def run_grid(scale: Scale, grid: GridSpec, seeds: Sequence[int], out: Path, jobs: int,
             report_only: bool = False, extra: Sequence[str] = (),
             arms: Optional[Dict[str, str]] = None, only: Optional[Sequence[str]] = None,
             equal_time: bool = True) -> Dict[str, Any]:
    """One grid through ``solo-iclmsr compare``; its report copied beside this script's.

    ``only`` keeps those of the grid's extra arms (None: all); ``equal_time=False`` leaves out
    ``base_equal_time`` (a later run with it adds the arm, the finished runs reused)."""
    from solo_iclmsr.cli.compare import compare

    epochs = run_epochs(scale, grid.method, extra)
    arms = {k: v.replace("{epochs_x1_25}", str(round(1.25 * epochs)))
            for k, v in {**ARMS, **(arms or {})}.items()}
    names = [a for a in grid.arms if only is None or a in only]
    result = compare(os.path.relpath(CONFIGS), grid.method, str(out / grid.name),
                     run_overrides(scale, grid, extra), seeds,
                     [(name, arms[name]) for name in names],
                     equal_time=equal_time and not grid.masked,
                     eval=["knn"], knn_k=[5, 20], jobs=jobs, report_only=report_only, quiet=True)
    target = committed(grid.name)
    target.mkdir(parents=True, exist_ok=True)
    for key in ("report", "results", "diagnostics", "figure"):
        if key in result:
            shutil.copy(result[key], target / Path(result[key]).name)
    shutil.copy(out / grid.name / "compare.json", target / "compare.json")
    return result


def committed(name: str) -> Path:
    """Where the report of grid ``name`` is kept (and read back by the summary)."""
    return RESULTS / "evidence" / name


@dataclass
class MaskSource:
    """A dataset with foreground masks (``solo_iclmsr.data.masks``), as ``diagnostics.*`` keys."""

    kind: str  # coco or folder
    image_root: str
    annotations: Optional[str] = None
    masks_root: Optional[str] = None

    def overrides(self) -> List[str]:
        out = [f"++diagnostics.masks={self.kind}", f"++diagnostics.image_root='{self.image_root}'"]
        if self.annotations:
            out.append(f"++diagnostics.annotations='{self.annotations}'")
        if self.masks_root:
            out.append(f"++diagnostics.masks_root='{self.masks_root}'")
        return out


def materialise(cfg: Any, variant: str, folder: Path) -> Path:
    """The training part (``masks.held_out_split``) of the masked set of ``cfg`` in one variant,
    as an ImageFolder tree of PNGs (``folder/<label>/<index>.png``, labels zero-padded so that
    folder order is label order); written once (a ``complete`` marker), then reused."""
    from PIL import Image

    from solo_iclmsr.data.loaders import masked_dataset
    from solo_iclmsr.data.masks import held_out_split

    if (folder / "complete").exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    dataset = masked_dataset(cfg, variant)
    train, _ = held_out_split(dataset.labels)
    for i in train:
        _, image, label = dataset[i]
        target = folder / f"{int(label):04d}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(target / f"{int(i):06d}.png")
    (folder / "complete").write_text(f"{len(train)}\n")
    return folder


def run_masked_grid(scale: Scale, masks: MaskSource, seeds: Sequence[int], out: Path, jobs: int,
                    report_only: bool = False, extra: Sequence[str] = ()) -> Dict[str, Any]:
    """SimCLR on the masked set's full and fg training images, tested on its held-out images."""
    from omegaconf import OmegaConf

    size = next((int(o.split("=")[1]) for o in scale.overrides
                 if o.startswith("augmentations.0.crop_size=")), 32)
    base = OmegaConf.create({"data": {"image_size": size}, "diagnostics": {
        "masks": masks.kind, "image_root": masks.image_root, "annotations": masks.annotations,
        "masks_root": masks.masks_root, "mask_suffix": "_mask"}})
    trees = {v: materialise(base, v, out / "_masked" / v) for v in ("full", "fg")}
    overrides = ["data.dataset=custom", f"data.train_path='{os.path.relpath(trees['full'])}'",
                 "++data.val_path=null", f"++data.image_size={size}", *masks.overrides(), *extra]
    fg = f"++iclmsr.enabled=false data.train_path='{os.path.relpath(trees['fg'])}'"
    return run_grid(scale, GridSpec("simclr", 0.0, ("base_fg",), masked=True), seeds, out, jobs,
                    report_only, overrides, {"base_fg": fg})


# ----------------------------------------------------------------------------------------------
# What compare does not do: the targets across grids, the 2x2 table, the strata analyses
# ----------------------------------------------------------------------------------------------
NOTES = "## Reading"


class GridResults:
    """The finished runs of one grid, from its committed report (``folder``: ``results.csv``,
    ``diagnostics.csv``, ``compare.json``); ``runs``, the grid's compare folder where it is
    still here (the stratum maps need a checkpoint)."""

    def __init__(self, grid: GridSpec, folder: Path, runs: Optional[Path] = None) -> None:
        from solo_iclmsr.compare.grid import read_json
        from solo_iclmsr.compare.report import read_report

        self.grid, self.folder, self.runs = grid, folder, runs
        rows, self.diagnostics = (read_report(folder) if (folder / "results.csv").exists()
                                  else ([], {}))
        meta = folder / "compare.json"
        self.command = read_json(meta)["command"] if meta.exists() else ""
        self.values: Dict[Tuple[str, str, str], Dict[int, float]] = {}
        self.rows = rows
        for r in rows:
            self.values.setdefault((r.metric, r.arm, r.test_set), {})[r.seed] = r.value

    def seeds(self, arm: str, test: str = "fg", metric: str = PRIMARY) -> Dict[int, float]:
        return self.values.get((metric, arm, test), {})

    def has(self, arm: str) -> bool:
        return bool(self.seeds(arm))

    def epochs(self, arm: str = "base") -> Optional[int]:
        """The epochs the arm's runs trained (the most common, where they differ)."""
        epochs = [r.max_epochs for r in self.rows if r.arm == arm]
        return statistics.mode(epochs) if epochs else None

    def cell(self, arm: str, test: str = "fg", metric: str = PRIMARY) -> str:
        from solo_iclmsr.compare.report import mean_std

        vals = list(self.seeds(arm, test, metric).values())
        return mean_std(vals) if vals else "-"

    def paired(self, arm: str, other: str, test: str = "fg") -> Tuple[float, Optional[float], int]:
        from solo_iclmsr.compare.report import paired_difference

        a, b = self.seeds(arm, test), self.seeds(other, test)
        return paired_difference([(a[s], b[s]) for s in a if s in b])

    def paired_cell(self, arm: str, other: str, test: str = "fg") -> str:
        d, half, n = self.paired(arm, other, test)
        if n == 0:
            return "-"
        return f"{d:+.1f}" + (f" [{d - half:+.1f}, {d + half:+.1f}]" if half else "") + f" (n={n})"

    def step_ratio(self, arm: str, other: str = "base") -> Optional[float]:
        """CPU time per step of ``arm`` over ``other`` (means over seeds)."""
        def mean(a: str) -> Optional[float]:
            vals = {r.seed: r.cpu_seconds_per_step for r in self.rows
                    if r.arm == a and not math.isnan(r.cpu_seconds_per_step)}
            return statistics.mean(vals.values()) if vals else None

        a, b = mean(arm), mean(other)
        return a / b if a and b else None

    def train_ratio(self, arm: str, other: str = "base") -> Optional[float]:
        def mean(a: str) -> Optional[float]:
            vals = {r.seed: r.train_seconds for r in self.rows if r.arm == a}
            return statistics.mean(vals.values()) if vals else None

        a, b = mean(arm), mean(other)
        return a / b if a and b else None

    def diagnostic(self, arm: str, key: str) -> Optional[float]:
        """The mean over the arm's runs of the last logged ``key``, None where not logged."""
        return self.diagnostics.get(arm, {}).get(key)


def _fmt(value: Optional[float], spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def _pooled_gain(g: GridResults, arm: str = "iclmsr", base: str = "base") -> Tuple[float, float, int]:
    """(mean(arm) - mean(base), pooled sample std, min n) on fg 5-NN."""
    a, b = list(g.seeds(arm).values()), list(g.seeds(base).values())
    if not a or not b:
        return float("nan"), float("nan"), 0
    d = statistics.mean(a) - statistics.mean(b)
    pooled = (math.sqrt((statistics.variance(a) + statistics.variance(b)) / 2)
              if len(a) > 1 and len(b) > 1 else float("nan"))
    return d, pooled, min(len(a), len(b))


def precondition_section(grids: Dict[str, GridResults]) -> List[str]:
    lines = ["## 1. Precondition and the paper's 2x2 table", "",
             f"`base_fg`: the base method trained on foreground-only images. Precondition "
             f"(ICLMSR.md section 5): it scores >= 2x chance ({2 * CHANCE:g}) on foreground-only "
             f"test images. With `base` (trained on full images) it gives the 2x2 table of the "
             f"paper's motivation: train {{full, fg}} x test {{full, fg}} (5-NN top-1, bank in "
             f"the training variant, mean ± std over the seeds), and the test on images whose "
             f"background is drawn independently of the class.", ""]
    rows = []
    for name, g in grids.items():
        if not g.has("base_fg") or g.grid.masked:
            continue
        fg = list(g.seeds("base_fg").values())
        ok = statistics.mean(fg) >= 2 * CHANCE
        rows.append([g.grid.method, f"{g.grid.rho:g}", str(g.epochs("base_fg")),
                     g.cell("base", "full"), g.cell("base", "fg"),
                     g.cell("base", "decorrelated"), g.cell("base_fg", "full"),
                     g.cell("base_fg", "fg"), g.cell("base_fg", "decorrelated"),
                     "yes" if ok else "NO"])
    lines += [_table(["method", "rho", "epochs", "trF/teF", "trF/teFG", "trF/teDecor", "trFG/teF",
                      "trFG/teFG", "trFG/teDecor", ">= 2x chance"], rows), ""]
    masked = grids.get("masked")
    if masked is not None and masked.has("base") and masked.has("base_fg"):
        lines += ["On the dataset with real masks (SimCLR; tested on its held-out fifth; 'bg': the "
                  "background alone, the foreground painted gray):", "",
                  _table(["arm", "teF", "teFG", "teBG"],
                         [[arm] + [masked.cell(arm, t) for t in ("full", "fg", "bg")]
                          for arm in ("base", "base_fg", "iclmsr") if masked.has(arm)]), ""]
    return lines


def effect_section(grids: Dict[str, GridResults]) -> Tuple[List[str], Dict[str, Any]]:
    lines = ["## 2. ICL-MSR against the base method, and against the base method trained as long",
             "", "5-NN top-1 on foreground-only test images (mean ± std over the seeds); "
             "seed-paired differences with their 95% t-interval; `base_equal_time` is the base "
             "method trained for the time ICL-MSR took (its epochs scaled by the measured "
             "per-step CPU time ratio of the two runs of the same seed). Full-image and "
             "background-decorrelated test sets in the grids' reports.", ""]
    rows, verdict = [], {"gains": [], "rho0": [], "equal_time": []}
    for name, g in grids.items():
        if not (g.has("base") and g.has("iclmsr")) or g.grid.masked:
            continue
        d, pooled, n = _pooled_gain(g)
        rows.append([g.grid.method, f"{g.grid.rho:g}", str(g.epochs()), g.cell("base"),
                     g.cell("iclmsr"),
                     g.cell("base_equal_time"), g.paired_cell("iclmsr", "base"),
                     g.paired_cell("iclmsr", "base_equal_time"),
                     g.paired_cell("iclmsr", "base", "full"),
                     g.paired_cell("iclmsr", "base", "decorrelated"),
                     _fmt(g.step_ratio("iclmsr"), ".2f", "x"),
                     f"{statistics.mean(r.max_epochs for r in g.rows if r.arm == 'base_equal_time'):.1f}"
                     if g.has("base_equal_time") else "-"])
        if g.grid.rho >= 0.95:
            verdict["gains"].append((g.grid.method, d, pooled, n))
        if g.grid.rho == 0.0:
            verdict["rho0"].append((g.grid.method, g.paired("iclmsr", "base")[0]))
        if g.has("base_equal_time"):
            verdict["equal_time"].append((g.grid.method, g.grid.rho,
                                          g.paired("iclmsr", "base_equal_time")[0], d))
    lines += [_table(["method", "rho", "epochs", "base fg", "iclmsr fg", "base_equal_time fg",
                      "iclmsr - base, fg", "iclmsr - base_equal_time, fg",
                      "iclmsr - base, full", "iclmsr - base, decorrelated",
                      "CPU s/step, iclmsr / base", "equal-time epochs"], rows), ""]
    met = [m for m, d, pooled, n in verdict["gains"] if n >= 3 and d >= 2 and d > pooled]
    lines += ["Targets (5-NN top-1 on foreground-only test images, 3 seeds):", ""]
    lines.append(f"* ICL-MSR >= +2 over `base` at rho 0.95, beyond the pooled std, for at least 3 "
                 f"of the 5 methods: {len(met)} of {len(verdict['gains'])} ("
                 + ", ".join(f"{m} {d:+.1f} vs pooled std {pooled:.1f}"
                             for m, d, pooled, _ in verdict["gains"])
                 + f"): {'MET' if len(met) >= 3 else 'NOT MET'}")
    if verdict["rho0"]:
        lost = [m for m, d in verdict["rho0"] if d < -0.5]
        lines.append("* no method loses more than 0.5 at rho 0 (fg): "
                     + ", ".join(f"{m} {d:+.1f}" for m, d in verdict["rho0"])
                     + f": {'MET' if not lost else 'NOT MET'}")
    gaining = [(m, r, e) for m, r, e, d in verdict["equal_time"] if d > 0]
    if verdict["equal_time"]:
        lines.append("* ICL-MSR >= `base_equal_time` where it gains over `base`: "
                     + (", ".join(f"{m} rho {r:g}: {e:+.1f}" for m, r, e in gaining) or "no gain")
                     + (f": {'MET' if all(e >= 0 for _, _, e in gaining) else 'NOT MET'}"
                        if gaining else ""))
    lines.append("")
    return lines, verdict


def arms_section(grids: Dict[str, GridResults], arms: Sequence[str], title: str,
                 text: str) -> List[str]:
    lines = [title, "", text, ""]
    for name, g in grids.items():
        present = [a for a in ("iclmsr", *arms) if g.has(a)]
        if len(present) < 2:
            continue
        rows = [["base"] + [g.cell("base", t) for t in TESTS] + ["-", "-", "1.00x"]]
        for arm in present:
            rows.append([arm] + [g.cell(arm, t) for t in TESTS]
                        + [g.paired_cell(arm, "base"),
                           g.paired_cell(arm, "iclmsr") if arm != "iclmsr" else "-",
                           _fmt(g.step_ratio(arm), ".2f", "x")])
        lines += [f"### {g.grid.method}, rho {g.grid.rho:g}", "",
                  _table(["arm", "5-NN full", "5-NN fg", "5-NN decorrelated",
                          "arm - base, fg (seed-paired)", "arm - iclmsr, fg (seed-paired)",
                          "CPU s/step / base"], rows), ""]
    return lines


def ablation_verdict(grids: Dict[str, GridResults]) -> List[str]:
    """Per grid with strata that are not learned (``frozen``, ``random_fixed``): do the learned
    strata beat each of them by >= 1 point (fg 5-NN, seed-paired)?"""
    lines = []
    for name, g in grids.items():
        others = [a for a in ("frozen", "random_fixed") if g.has(a)]
        if not others or not g.has("iclmsr"):
            continue
        ok = all(g.paired("iclmsr", a)[0] >= 1 for a in others)
        lines.append(f"* {g.grid.method} rho {g.grid.rho:g}: " + ", ".join(
            f"learned - {a} {g.paired_cell('iclmsr', a)}" for a in others)
            + f" (fg 5-NN, seed-paired): the learned strata beat {' and '.join(others)} by >= 1 "
            f"point: {'yes' if ok else 'NO: the learned strata add nothing at this scale'}")
    return lines + [""] if lines else []


def diagnostics_section(grids: Dict[str, GridResults]) -> List[str]:
    lines = ["## 5. The first-order reading of the meta objective (ICLMSR.md section 8)", "",
             "Mean over the seeds of the last epoch of each ICL-MSR run (logged every 16 steps): "
             "the cosine between grad_theta L_msr and grad_theta L_ct on the batch; the cosine of "
             "the meta-gradient's first-order (alignment) term with its exact L_ct(theta') part, "
             "and the norms of that term, of the rest (curvature) and of the gamma L_uni part; "
             "on held-out images the largest per-stratum cross-image cosine of a_t, the "
             "variation of A explained by the class over chance, and the share of a_t's weight "
             "on foreground-preferring channels against a uniform weighting's.", ""]
    rows = []
    for name, g in grids.items():
        for arm in ("iclmsr", "softmax", "features_softmax"):
            if not g.has(arm):
                continue
            d = lambda key: g.diagnostic(arm, key)  # noqa: E731
            fg, uniform = d("strata_probe/fg_share"), d("strata_probe/fg_share_uniform")
            rows.append([g.grid.method, f"{g.grid.rho:g}", arm,
                         _fmt(d("diag/grad_cos_msr_ct")), _fmt(d("diag/meta_first_order_cos")),
                         _fmt(d("diag/meta_first_order_norm"), ".2e"),
                         _fmt(d("diag/meta_curvature_norm"), ".2e"),
                         _fmt(d("train_meta_grad_norm_uni"), ".2e"),
                         _fmt(d("strata_probe/cross_image_cos")),
                         _fmt(d("strata_probe/explained_by_class_over_chance"), ".1f"),
                         "-" if fg is None else f"{100 * fg:.1f} ({100 * uniform:.1f})"])
    lines += [_table(["method", "rho", "arm", "cos(grad L_msr, grad L_ct)",
                      "cos(first-order, exact)", "first-order norm", "rest norm",
                      "gamma L_uni part norm", "cross-image cos", "class / chance",
                      "fg share % (uniform)"], rows), ""]
    return lines


def strata_maps(grids: Dict[str, GridResults]) -> List[str]:
    """Stratum maps of the first ICL-MSR run of SimCLR at rho 0.95 (rendered from its
    checkpoint where the run is here, else the committed figure kept)."""
    from solo_iclmsr.cli.strata import render_strata
    from solo_iclmsr.compare.grid import read_json

    g = grids.get("simclr-rho0.95")
    figure = RESULTS / "evidence_strata.png"
    folder = None if g is None or g.runs is None else g.runs / "runs" / "iclmsr" / "seed0"
    if folder is not None and (folder / "run.json").exists():
        checkpoint = folder / read_json(folder / "run.json")["checkpoint"]
        render_strata(str(checkpoint), str(figure), images=6,
                      title="SimCLR + ICL-MSR, rho 0.95, seed 0: stratum maps on test images")
    elif g is None or not g.has("iclmsr") or not figure.exists():
        return []
    return ["## 6. Stratum maps", "", "![strata](evidence_strata.png)", "",
            "Each row: a test image, its mask, and per stratum a_t the map ReLU(sum_r a_{t,r} "
            "Z_r) of the 4x4 last feature map, upsampled (`solo-iclmsr strata`).", ""]


def not_run(grids: Dict[str, GridResults],
            now: Optional[Dict[str, Sequence[str]]] = None) -> List[str]:
    """The grids and arms of ``GRIDS`` with no finished run, and the committed grids whose
    recorded command set other overrides than ``now`` gives (per grid: what the command gives
    now; an older scale), so that a partial report says what it leaves out."""
    missing = []
    for name, g in grids.items():
        if name not in (now or {}) or not g.command:
            continue
        old, new = command_overrides(g.command), override_values(now[name])
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if changed:
            missing.append(f"{name}: trained with " + ", ".join(
                f"{k}={old.get(k, '(unset)')}" for k in changed) + "; the scale now gives "
                + ", ".join(f"{k}={new.get(k, '(unset)')}" for k in changed))
    for spec in GRIDS:
        g = grids.get(spec.name)
        arms = ["base", "iclmsr", "base_equal_time", *spec.arms]
        if g is None or not any(g.has(a) for a in arms):
            missing.append(f"{spec.name} (the whole grid)")
            continue
        absent = [a for a in arms if not g.has(a)]
        most = max(len(g.seeds(a)) for a in arms)
        short = [f"{a} ({len(g.seeds(a))} of {most} seeds)" for a in arms
                 if g.has(a) and len(g.seeds(a)) < most]
        if absent or short:
            missing.append(f"{spec.name}: " + ", ".join([*absent, *short]))
    if not missing:
        return [""]
    return ["* not run at this scale (the same command without `--grids` / `--arms` / "
            "`--no-equal-time` trains them, the finished runs reused):"] + [
        f"  * {m}" for m in missing] + [""]


def write_summary(scale: Scale, grids: Dict[str, GridResults], command: str,
                  extra: Sequence[str] = ()) -> Path:
    """``benchmarks/results/evidence.md`` from the grids' results (a hand-written reading
    headed ``## Reading`` survives regeneration)."""
    from solo_iclmsr.compare.report import machine

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# ICL-MSR evidence", "", f"* this report: `{command}`", f"* written {now} on "
             f"{machine()}", f"* scale `{scale.name}`: {scale.describe()}; per method: "
             + "; ".join(f"{m} lr {s.lr:g}, {s.epochs} epochs, {s.kwargs}"
                         + "".join(f", {o}" for o in s.overrides)
                         for m, s in scale.methods.items()),
             "* every grid is one `solo-iclmsr compare` (its command and full report: "
             "`benchmarks/results/evidence/<grid>/report.md`):"]
    lines += [f"  * {name}: `{g.command}`" for name, g in grids.items() if g.command]
    lines += not_run(grids, {name: run_overrides(scale, g.grid, extra)
                             for name, g in grids.items() if not g.grid.masked})
    lines += precondition_section(grids)
    effect, _ = effect_section(grids)
    lines += effect
    lines += arms_section(grids, (*ABLATIONS, "base_x1.25"),
                          "## 3. Which part of ICL-MSR: the ablations",
                          "SimCLR at both rhos; BYOL at rho 0 and Barlow Twins at rho 0.95 "
                          "`random_fixed` and `base_x1.25` only (the low-cost mode on other "
                          "methods). "
                          "`frozen`: f_msr kept at its initialisation; `random_fixed`: n "
                          "fixed random non-negative strata; `uniform`: a_t = 1/sqrt(c), L_msr = "
                          "L_ct; `meta_none`: f_msr trained by gamma L_uni alone; `softmax`, "
                          "`features_softmax`: the options that moved the strata last round; "
                          "`base_x1.25`: the base method trained 1.25x the epochs, about as long "
                          "as the ablations without a meta step take.")
    lines += ablation_verdict(grids)
    lines += arms_section(grids, CHEAPER, "## 4. Cheaper meta steps",
                          "SimCLR. `stages1`: the virtual step on the last stage of the encoder "
                          "(`iclmsr.meta_stages=1`); `stages1_batch50`: and the meta objective on "
                          "half of the batch (`iclmsr.meta_batch=0.5`); `every4`: the full meta "
                          "step every fourth batch (`iclmsr.meta_every=4`).")
    lines += diagnostics_section(grids)
    lines += strata_maps(grids)
    text = "\n".join(lines)
    report = RESULTS / "evidence.md"
    if report.exists() and NOTES in report.read_text():
        old = report.read_text()
        text += "\n" + old[old.index(NOTES):].rstrip("\n")
    report.write_text(text + "\n")
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument("--grids", default=",".join(g.name for g in GRIDS),
                   help="grids to run, comma-separated: " + ", ".join(g.name for g in GRIDS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", help="keep only these of each grid's extra arms, comma-separated "
                   f"(default all: {', '.join(ARMS)})")
    p.add_argument("--no-equal-time", action="store_true",
                   help="leave out base_equal_time (rerun without the flag to add it)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    p.add_argument("--out", default="runs/evidence", help="folder of the grids' runs")
    p.add_argument("--report-only", action="store_true", help="no training: reports from --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a Hydra override of every run, after the scale's (repeatable)")
    p.add_argument("--masks", choices=("coco", "folder"),
                   help="also the grid on a dataset with real foreground masks")
    p.add_argument("--annotations", help="COCO instances JSON (--masks coco)")
    p.add_argument("--image-root", help="images of the masked set")
    p.add_argument("--masks-root", help="mask PNG tree parallel to --image-root (--masks folder)")
    args = p.parse_args(argv)
    scale = SCALES[args.scale]
    names = [g for g in args.grids.split(",") if g]
    known = {g.name: g for g in GRIDS}
    bad = [g for g in names if g not in known]
    if bad:
        p.error(f"--grids {bad[0]!r}: expected names among {', '.join(known)}")
    only = None if args.arms is None else [a for a in args.arms.split(",") if a]
    if only is not None and any(a not in ARMS for a in only):
        p.error(f"--arms {next(a for a in only if a not in ARMS)!r}: expected names among "
                f"{', '.join(ARMS)}")
    out = Path(args.out)
    for name in names:
        if args.report_only and not has_runs(out / name):
            continue  # never run: nothing to report
        print(f"[evidence] grid {name}", flush=True)
        run_grid(scale, known[name], args.seeds, out, args.jobs, args.report_only, args.set,
                 only=only, equal_time=not args.no_equal_time)
    grids = {g.name: GridResults(g, committed(g.name), out / g.name) for g in GRIDS
             if (committed(g.name) / "results.csv").exists()}
    if args.masks:
        if not args.image_root or (args.masks == "coco" and not args.annotations):
            p.error("--masks coco needs --annotations and --image-root; folder --image-root")
        print("[evidence] grid masked", flush=True)
        run_masked_grid(scale, MaskSource(args.masks, args.image_root, args.annotations,
                                          args.masks_root), args.seeds, out, args.jobs,
                        args.report_only, args.set)
        grids["masked"] = GridResults(GridSpec("simclr", 0.0, masked=True), committed("masked"),
                                      out / "masked")
    command = "python benchmarks/evidence.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(f"summary: {write_summary(scale, grids, command, args.set)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
