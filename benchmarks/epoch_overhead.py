"""What ICL-MSR costs per epoch with the shipped defaults, through the whole pipeline.

Both arms run ``solo-iclmsr pretrain``'s steps (``compose`` + ``pretrain``) on the built-in
dataset with ``configs/pretrain/builtin/simclr.yaml`` and differ in ``iclmsr.enabled`` only: the
device augmentation, solo's LARS and schedule, the online classifier and the method's own step
are in both. Each configuration times the training batches of one epoch (a callback records
the wall clock of every batch, data loading and augmentation included; the first batches are a
warm-up) and reports seconds per step and per epoch, the ICL-MSR arm over the base arm. The arms
alternate epoch by epoch (``--rounds``), so a disturbance from other processes hits both alike;
the ratio uses the best round of each arm.

    python benchmarks/epoch_overhead.py                     # both configurations below
    python benchmarks/epoch_overhead.py --configs test_resnet --rounds 3

Configurations:

* ``resnet18``: solo's ResNet-18 with its CIFAR stem at 32 px, batch 256, a few steps
  (``--steps``, default 6), extrapolated to one CIFAR-10-sized epoch (195 steps).
* ``test_resnet``: timm's ``test_resnet`` with the CIFAR stem at 32 px (a 4x4 last map),
  batch 256, one whole epoch of 12 800 built-in images (50 steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import lightning.pytorch as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from solo_iclmsr.cli.pretrain import pretrain  # noqa: E402
from solo_iclmsr.config import compose  # noqa: E402

CONFIGS = {
    "resnet18": dict(backbone="resnet18", images=256 * 8, epoch_steps=50000 // 256),
    "test_resnet": dict(backbone="test_resnet", images=12800, epoch_steps=12800 // 256),
}
WARMUP = 2


class BatchClock(pl.Callback):
    """Wall-clock seconds of every training batch (from its start to the next one's)."""

    def __init__(self) -> None:
        self.starts: List[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_epoch_end(self, trainer, module) -> None:
        self.starts.append(time.perf_counter())

    def seconds(self) -> List[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])]


def one_epoch(name: str, enabled: bool, steps: int, out: Path) -> List[float]:
    """Per-batch seconds of one epoch of ``steps`` batches of configuration ``name``."""
    spec = CONFIGS[name]
    clock = BatchClock()
    cfg = compose(str(ROOT / "configs" / "pretrain" / "builtin"), "simclr", [
        f"backbone.name={spec['backbone']}", f"iclmsr.enabled={str(enabled).lower()}",
        f"++data.builtin.n_train={spec['images']}", "++data.builtin.n_test=256",
        "max_epochs=1", f"++limit_train_batches={steps}", "++limit_val_batches=0",
        "accelerator=cpu", "data.num_workers=0", f"checkpoint.dir={out}",
        "checkpoint.enabled=False", "auto_resume.enabled=False", "++enable_progress_bar=False",
        "++diagnostics.enabled=False", "++scheduler.warmup_epochs=0"])
    pretrain(cfg, callbacks=[clock])
    return clock.seconds()


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated")
    parser.add_argument("--steps", type=int, default=6, help="timed steps of resnet18")
    parser.add_argument("--rounds", type=int, default=2, help="epochs per arm, alternating")
    args = parser.parse_args(list(argv))
    print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'default')}, "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    rows: List[Dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            spec = CONFIGS[name]
            steps = WARMUP + args.steps if name == "resnet18" else spec["epoch_steps"]
            best: Dict[bool, float] = {}
            for r in range(args.rounds):
                for enabled in (False, True):
                    seconds = one_epoch(name, enabled, steps, Path(tmp) / f"{name}-{enabled}-{r}")
                    per_step = sum(seconds[WARMUP:]) / len(seconds[WARMUP:])
                    best[enabled] = min(best.get(enabled, float("inf")), per_step)
                    print(f"  {name} iclmsr={enabled} round {r + 1}: {per_step:.3f} s/step "
                          f"({len(seconds)} steps)", flush=True)
            row = {"config": name, "base_s_step": best[False], "iclmsr_s_step": best[True],
                   "epoch_steps": spec["epoch_steps"]}
            rows.append(row)
    print("\n| config | steps per epoch | base s/step | ICL-MSR s/step | base s/epoch | "
          "ICL-MSR s/epoch | x base |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["epoch_steps"]
        print(f"| {r['config']} | {n} | {r['base_s_step']:.3f} | {r['iclmsr_s_step']:.3f} | "
              f"{r['base_s_step'] * n:.0f} | {r['iclmsr_s_step'] * n:.0f} | "
              f"{r['iclmsr_s_step'] / r['base_s_step']:.2f} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
