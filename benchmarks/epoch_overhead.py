"""What ICL-MSR costs per epoch, through the whole pipeline.

Every arm runs ``solo-iclmsr pretrain``'s steps (``compose`` + ``pretrain``) on the built-in
dataset with ``configs/pretrain/builtin/simclr.yaml`` and differs from ``base`` in its
``iclmsr.*`` keys only (``ARMS``: ``iclmsr`` is the shipped defaults; ``stages1``,
``stages1_batch50``, ``every4`` the cheaper meta steps): the device augmentation, solo's LARS and
schedule, the online classifier and the method's own step are in all. Each configuration times
the training batches of one epoch (a callback records the wall clock and the process CPU time of
every batch, data loading and augmentation included; the first batches are a warm-up) and
reports seconds per step and per epoch, every arm over the base arm. The arms alternate epoch by
epoch (``--rounds``), so a disturbance from other processes hits all alike; the ratio uses the
best round of each arm.

    python benchmarks/epoch_overhead.py                     # both configurations below
    python benchmarks/epoch_overhead.py --configs test_resnet --rounds 3
    python benchmarks/epoch_overhead.py --configs resnet18 --arms base,iclmsr,stages1

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

from solo_iclmsr.runs.pretrain import pretrain  # noqa: E402
from solo_iclmsr.config import compose  # noqa: E402

CONFIGS = {
    "resnet18": dict(backbone="resnet18", images=256 * 8, epoch_steps=50000 // 256),
    "test_resnet": dict(backbone="test_resnet", images=12800, epoch_steps=12800 // 256),
}
WARMUP = 2
#: arm -> its overrides of the config (``base`` is the method without ICL-MSR)
ARMS: Dict[str, List[str]] = {
    "base": ["iclmsr.enabled=false"],
    "iclmsr": ["iclmsr.enabled=true"],
    "stages1": ["iclmsr.enabled=true", "iclmsr.meta_stages=1"],
    "stages1_batch50": ["iclmsr.enabled=true", "iclmsr.meta_stages=1", "iclmsr.meta_batch=0.5"],
    "every4": ["iclmsr.enabled=true", "iclmsr.meta_every=4"],
}


class BatchClock(pl.Callback):
    """Wall-clock and process CPU seconds of every training batch (from its start to the next
    one's)."""

    def __init__(self) -> None:
        self.starts: List[tuple] = []

    def _mark(self) -> None:
        self.starts.append((time.perf_counter(), time.process_time()))

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._mark()

    def on_train_epoch_end(self, trainer, module) -> None:
        self._mark()

    def seconds(self, which: int = 0) -> List[float]:
        """Per batch: wall time (``which=0``) or process CPU time (1)."""
        return [b[which] - a[which] for a, b in zip(self.starts, self.starts[1:])]


def one_epoch(name: str, arm: str, steps: int, out: Path) -> BatchClock:
    """The clock of one epoch of ``steps`` batches of configuration ``name`` and ``arm``."""
    spec = CONFIGS[name]
    clock = BatchClock()
    cfg = compose(str(ROOT / "configs" / "pretrain" / "builtin"), "simclr", [
        f"backbone.name={spec['backbone']}", *ARMS[arm],
        f"++data.builtin.n_train={spec['images']}", "++data.builtin.n_test=256",
        "max_epochs=1", f"++limit_train_batches={steps}", "++limit_val_batches=0",
        "accelerator=cpu", "data.num_workers=0", f"checkpoint.dir={out}",
        "checkpoint.enabled=False", "auto_resume.enabled=False", "++enable_progress_bar=False",
        "++diagnostics.enabled=False", "++diagnostics.every_n_steps=0",
        "++scheduler.warmup_epochs=0"])
    pretrain(cfg, callbacks=[clock])
    return clock


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated")
    parser.add_argument("--steps", type=int, default=6, help="timed steps of resnet18")
    parser.add_argument("--rounds", type=int, default=2, help="epochs per arm, alternating")
    parser.add_argument("--arms", default="base,iclmsr", help="comma-separated: " + ", ".join(ARMS))
    args = parser.parse_args(list(argv))
    arms = [a for a in args.arms.split(",") if a]
    if "base" not in arms or any(a not in ARMS for a in arms):
        parser.error(f"--arms: base and names among {', '.join(ARMS)}")
    print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'default')}, "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    rows: List[Dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            spec = CONFIGS[name]
            steps = WARMUP + args.steps if name == "resnet18" else spec["epoch_steps"]
            best: Dict[str, List[float]] = {}
            for r in range(args.rounds):
                for arm in arms:
                    clock = one_epoch(name, arm, steps, Path(tmp) / f"{name}-{arm}-{r}")
                    per_step = [sum(s[WARMUP:]) / len(s[WARMUP:])
                                for s in (clock.seconds(0), clock.seconds(1))]
                    old = best.get(arm, [float("inf")] * 2)
                    best[arm] = [min(a, b) for a, b in zip(old, per_step)]
                    print(f"  {name} {arm} round {r + 1}: {per_step[0]:.3f} s/step, "
                          f"{per_step[1]:.3f} CPU s/step ({len(clock.seconds())} steps)",
                          flush=True)
            for arm in arms:
                rows.append({"config": name, "arm": arm, "s_step": best[arm][0],
                             "cpu_s_step": best[arm][1], "base_s_step": best["base"][0],
                             "base_cpu_s_step": best["base"][1],
                             "epoch_steps": spec["epoch_steps"]})
    print("\n| config | arm | steps per epoch | s/step | CPU s/step | s/epoch | x base (wall) "
          "| x base (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["epoch_steps"]
        print(f"| {r['config']} | {r['arm']} | {n} | {r['s_step']:.3f} | {r['cpu_s_step']:.3f} "
              f"| {r['s_step'] * n:.0f} | {r['s_step'] / r['base_s_step']:.2f} "
              f"| {r['cpu_s_step'] / r['base_cpu_s_step']:.2f} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
