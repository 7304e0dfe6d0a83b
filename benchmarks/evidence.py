"""Evidence for ICL-MSR, produced with ``solo-iclmsr compare``: one command regenerates every
table and plot of ``benchmarks/results/evidence.md``.

    python benchmarks/evidence.py --scale cpu --out runs/evidence --jobs 2
    python benchmarks/evidence.py --scale cpu --grids simclr-rho0.95 --report-only

Every grid is a ``solo-iclmsr compare`` of ``configs/pretrain/builtin/<method>.yaml`` on the
built-in set at one rho, with the scale's overrides (``grid_overrides``), seeds 0-2 and the
arms ``base``, ``iclmsr`` (the paper's reading) and ``base_equal_time`` (the base method
trained for the time ICL-MSR took), plus ``base_fg`` at the largest rho (the base method trained
on foreground-only images: the precondition, and the paper's 2x2 motivation table with the
``base`` arm), and for SimCLR the ablations and options of ``ARMS``. Each grid's report
(``report.md``, ``results.csv``, ``report.png``) is copied to ``benchmarks/results/evidence/
<grid>/``; this script adds only what compare does not do: the targets across grids, the 2x2
table, and the strata analyses (probe statistics on held-out images and stratum maps).

A grid is resumable as compare is: the same command after an interruption trains only what is
missing. ``--report-only`` rebuilds every report from the run folders.
"""

from __future__ import annotations

import argparse
import math
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
    projector sizes."""

    lr: float
    epochs: int
    kwargs: Dict[str, Any] = field(default_factory=dict)


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
SCALES: Dict[str, Scale] = {
    # 2 CPU cores: a narrow timm test_resnet with the CIFAR stem (a 4x4 last map at 32 px),
    # 3584 / 1000 images, batch 112. Epochs per method: the fewest with which the base method
    # trained on foreground-only images scores >= 2x chance on them (BENCHMARKS.md section 4).
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
        "byol": MethodScale(1.0, 8, {**_CPU_PROJ, "pred_hidden_dim": 512}),
        "barlow_twins": MethodScale(0.3, 4, {"proj_hidden_dim": 512, "proj_output_dim": 512,
                                             "scale_loss": 1.0}),
        "mocov3": MethodScale(0.3, 8, {**_CPU_PROJ, "pred_hidden_dim": 512}),
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
}
ABLATIONS = ("frozen", "random_fixed", "uniform", "meta_none", "softmax", "features_softmax")
CHEAPER = ("stages1", "stages1_batch50", "every4")


@dataclass(frozen=True)
class GridSpec:
    """One comparison: a method at one rho, and its extra arms."""

    method: str
    rho: float
    arms: Tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.method}-rho{self.rho:g}"


GRIDS: Tuple[GridSpec, ...] = (
    GridSpec("simclr", 0.95, ("base_fg", *ABLATIONS, *CHEAPER)),
    GridSpec("simclr", 0.0, (*ABLATIONS, *CHEAPER)),
    GridSpec("byol", 0.95, ("base_fg",)),
    GridSpec("byol", 0.0),
    GridSpec("barlow_twins", 0.95, ("base_fg",)),
    GridSpec("mocov3", 0.95, ("base_fg",)),
    GridSpec("vicreg", 0.95, ("base_fg",)),
)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


def grid_overrides(scale: Scale, method: str, rho: float) -> List[str]:
    """The Hydra overrides of every run of a grid (on ``configs/pretrain/builtin/<method>``)."""
    m = scale.methods[method]
    return [*scale.overrides, f"max_epochs={m.epochs}", f"optimizer.lr={m.lr:g}",
            f"++data.builtin.rho={rho:g}", f"++diagnostics.every_n_epochs={m.epochs}",
            *[f"++method_kwargs.{k}={_value(v)}" for k, v in m.kwargs.items()]]


def run_grid(scale: Scale, grid: GridSpec, seeds: Sequence[int], out: Path, jobs: int,
             report_only: bool = False) -> Dict[str, Any]:
    """One grid through ``solo-iclmsr compare``; its report copied beside this script's."""
    from solo_iclmsr.cli.compare import compare

    result = compare(str(CONFIGS), grid.method, str(out / grid.name),
                     grid_overrides(scale, grid.method, grid.rho), seeds,
                     [(name, ARMS[name]) for name in grid.arms], equal_time=True, eval=["knn"],
                     knn_k=[5, 20], jobs=jobs, report_only=report_only, quiet=True)
    target = RESULTS / "evidence" / grid.name
    target.mkdir(parents=True, exist_ok=True)
    for key in ("report", "results", "figure"):
        if key in result:
            shutil.copy(result[key], target / Path(result[key]).name)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument("--grids", default=",".join(g.name for g in GRIDS),
                   help="grids to run, comma-separated: " + ", ".join(g.name for g in GRIDS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    p.add_argument("--out", default="runs/evidence", help="folder of the grids' runs")
    p.add_argument("--report-only", action="store_true", help="no training: reports from --out")
    args = p.parse_args(argv)
    scale = SCALES[args.scale]
    names = [g for g in args.grids.split(",") if g]
    known = {g.name: g for g in GRIDS}
    bad = [g for g in names if g not in known]
    if bad:
        p.error(f"--grids {bad[0]!r}: expected names among {', '.join(known)}")
    out = Path(args.out)
    for name in names:
        print(f"[evidence] grid {name}", flush=True)
        run_grid(scale, known[name], args.seeds, out, args.jobs, args.report_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
