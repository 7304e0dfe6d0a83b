"""One ICL-MSR step of a variant on 2 processes (gloo, CPU), each with half of a fixed batch, and
on 1 process with the whole batch: what tests/plugin/test_distributed.py compares.

BatchNorm is SyncBatchNorm on 2 processes (``convert_sync_batchnorm``), so that both sides
normalise with the statistics of the same images; the gradients of the model's parameters are
averaged over the processes as DDP averages them. In float64: in float32 the meta-gradient of
BYOL already moves by about 1e-2 (relative) when the images of one process are permuted.
"""

import os
import sys
from typing import Any, Dict, List

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plugin_kit import build, quiet  # noqa: E402

BATCH = 8  # per process; one process gets 2 * BATCH


def data(images: int = 2 * BATCH, size: int = 16) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    raw = torch.randn(images, 3, size, size, generator=g, dtype=torch.float64)
    return {"raw": raw, "views": [raw + 0.3 * torch.randn(raw.shape, generator=g),
                                  raw.flip(-1) + 0.3 * torch.randn(raw.shape, generator=g)],
            "targets": torch.randint(0, 10, (images,), generator=g)}


def step(method: str, rows: slice, sync_bn: bool, iclmsr: Dict[str, Any]) -> Dict[str, Any]:
    """Stage 1 and the meta step on the images ``rows`` of ``data()``: the losses, the model's
    gradients (averaged over the processes) and f_msr's meta-gradient."""
    torch.manual_seed(0)
    model = quiet(build(method, iclmsr=iclmsr)).double()
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    logged: Dict[str, float] = {}
    model.log_dict = lambda d, **k: logged.update({key: float(torch.as_tensor(v).detach())
                                                   for key, v in d.items()})
    d = data()
    batch = [torch.arange(2 * BATCH)[rows], [v[rows] for v in d["views"]], d["targets"][rows]]
    model._iclmsr_raw = d["raw"][rows]
    torch.manual_seed(1)
    loss = model.training_step(batch, 0)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    if dist.is_initialized():
        for p in params:
            dist.all_reduce(p.grad)
            p.grad.div_(dist.get_world_size())
        loss = loss.detach().clone()
        dist.all_reduce(loss)
        loss /= dist.get_world_size()
        msr = torch.tensor(logged["train_msr_loss"], dtype=torch.float64)
        dist.all_reduce(msr)
        logged["train_msr_loss"] = float(msr) / dist.get_world_size()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    pending = model._iclmsr_pending
    model.msr_optimizer.step = model.msr_optimizer.zero_grad = lambda *a, **k: None
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.iclmsr_meta_step(pending["record"], pending["raw"], optimizer, reuse_grads=True)
    meta = {n: p.grad.detach().clone() for n, p in model.msr.named_parameters()}
    return {"l_to": float(loss), "l_msr": logged["train_msr_loss"], "grads": grads, "meta": meta}


def _worker(rank: int, method: str, port: int, out: str, iclmsr: Dict[str, Any]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        result = step(method, slice(rank * BATCH, (rank + 1) * BATCH), True, iclmsr)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def two_processes(method: str, port: int, out: str, iclmsr: Dict[str, Any]) -> Dict[str, Any]:
    """``step`` on 2 processes, each half of the batch; what rank 0 saw."""
    import torch.multiprocessing as mp

    mp.start_processes(_worker, args=(method, port, out, iclmsr), nprocs=2, join=True,
                       start_method="spawn")
    return torch.load(out, weights_only=True)


def one_process(method: str, iclmsr: Dict[str, Any]) -> Dict[str, Any]:
    return step(method, slice(0, 2 * BATCH), False, iclmsr)


__all__: List[str] = ["two_processes", "one_process", "step", "data"]
