"""What an ICL-MSR step costs on 2 processes against 1 process with the same global batch.

SimCLR with ICL-MSR at its defaults (``configs/pretrain/builtin/simclr.yaml``, timm
``test_resnet`` with the CIFAR stem, 32 px), one training step as the plugin takes it: the method's
step and L_msr (stage 1), the backward, the gradients averaged over the processes as DDP
averages them, the meta step (stage 2, its collectives differentiated twice and in forward
mode), the optimizer step. The global batch is ``--batch`` images: one process takes all of them
(with 1 and with 2 CPU threads), two processes (gloo, 1 thread each) half each. Times are the
mean of ``--steps`` steps after a warm-up, the slower rank's on 2 processes.

    OMP_NUM_THREADS=1 python benchmarks/distributed_step.py [--batch 64] [--steps 6]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OVERRIDES = ["backbone.name=test_resnet", "++scheduler.warmup_epochs=0", "accelerator=cpu",
             "data.num_workers=0", "iclmsr.enabled=true", "++diagnostics.every_n_steps=0",
             "++data.builtin.n_train=256", "++data.builtin.n_test=32"]


def _model(batch: int):
    from solo_iclmsr.runs.pretrain import build_model
    from solo_iclmsr.config import compose
    from solo_iclmsr.plugin import prepare_pretrain

    cfg = compose(str(ROOT / "configs" / "pretrain" / "builtin"), "simclr",
                  [*OVERRIDES, f"optimizer.batch_size={batch}"])
    torch.manual_seed(0)
    model = build_model(prepare_pretrain(cfg))
    model.log = model.log_dict = lambda *a, **k: None
    return model.train()


def _batch(rows: slice, images: int) -> List[Any]:
    g = torch.Generator().manual_seed(1)
    raw = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=g)
    return [torch.arange(images)[rows], raw[rows], torch.randint(0, 10, (images,), generator=g)[rows]]


def timed_steps(rows: slice, images: int, steps: int, warmup: int = 2) -> float:
    """Mean seconds of one ICL-MSR training step on the images ``rows``."""
    model = _model(rows.stop - rows.start)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batch = model.on_after_batch_transfer(_batch(rows, images), 0)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model.training_step(batch, i).backward()
        if dist.is_initialized():
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= dist.get_world_size()
        pending = model._iclmsr_pending
        model._iclmsr_pending = None
        model.iclmsr_meta_step(pending["record"], pending["raw"], optimizer, reuse_grads=True)
        optimizer.step()
        times.append(time.perf_counter() - start)
    return sum(times[warmup:]) / steps


def _worker(rank: int, port: int, images: int, steps: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    half = images // 2
    seconds = torch.tensor(timed_steps(slice(rank * half, (rank + 1) * half), images, steps))
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    if rank == 0:
        torch.save(float(seconds), out)
    dist.destroy_process_group()


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)
    import torch.multiprocessing as mp

    results: Dict[str, float] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results[f"1 process, {threads} thread(s)"] = timed_steps(slice(0, args.batch), args.batch,
                                                                   args.steps)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "seconds.pt")
        mp.start_processes(_worker, args=(port, args.batch, args.steps, out), nprocs=2,
                           join=True, start_method="spawn")
        results["2 processes (gloo), 1 thread each"] = torch.load(out)
    base = results["1 process, 2 thread(s)"]
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, load "
          f"average {os.getloadavg()[0]:.2f}; SimCLR + ICL-MSR (defaults), test_resnet CIFAR "
          f"stem, 32 px, global batch {args.batch}, {args.steps} timed steps")
    print("| setting | s / step | x (1 process, 2 threads) |\n|---|---|---|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.3f} | {seconds / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
