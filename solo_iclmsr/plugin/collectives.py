"""Collectives that every derivative of the meta step can go through: the global batch in every
ICL-MSR term under DDP.

The meta-gradient differentiates the method's head twice (reverse over reverse) and runs the
encoder in forward mode (``torch.func.jvp``). solo's ``GatherLayer`` backpropagates once: its
backward sums the gradients of the ranks with an ``all_reduce`` that autograd does not record, so
a second derivative through gathered negatives misses the other ranks' terms, and it has no
forward-mode rule; torch's ``SyncBatchNorm`` likewise. Here:

* :func:`all_reduce_sum` is an autograd function whose backward is itself (the gradient of a
  sum over ranks is the sum of the ranks' gradients) and whose forward-mode rule is itself;
* :func:`gather` concatenates every rank's tensor; its backward sums the gradients of all ranks
  and keeps this rank's slice (through :func:`all_reduce_sum`, so it can be differentiated
  again), its forward-mode rule gathers the tangents;
* :func:`global_batch_statistics` gives the statistics of the global batch, written with
  :func:`all_reduce_sum`, and :func:`normalise` normalises with them, so that SyncBatchNorm
  inside the meta step keeps its meaning in every mode of differentiation.

:func:`solo_collectives` puts them where solo's losses gather (``solo.losses.simclr``,
``nnclr``, ``vicreg``, ``vibcreg``) and where Barlow Twins all-reduces its correlation matrix.
Gathers without gradient (queues, MoCo v3's keys, DINO's centre) stay solo's. Without a process
group (or with one process) everything is the identity.

The conventions are DDP's: a rank's loss is the mean over its own anchors (or a replicated
global quantity), gradients of the model's parameters are averaged over the ranks
(:func:`average`), so that the result equals one process on the global batch.
"""

from __future__ import annotations

import contextlib
import types
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["distributed", "rank", "world_size", "all_reduce_sum", "gather", "average",
           "global_batch_statistics", "normalise", "solo_collectives"]


def distributed() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if distributed() else 1


class _AllReduceSum(torch.autograd.Function):
    """sum over ranks; backward and forward-mode rule: the same sum (see the module docstring)."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        out = x.detach().clone().contiguous()
        dist.all_reduce(out)
        return out

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        pass

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        return _AllReduceSum.apply(grad)

    @staticmethod
    def jvp(ctx, tangent: Tensor) -> Tensor:  # noqa: ANN001
        return _AllReduceSum.apply(tangent)


class _AllGather(torch.autograd.Function):
    """Every rank's tensor, concatenated along dim 0 in rank order."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        x = x.detach().contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        ctx.rows = inputs[0].shape[0]

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        start = dist.get_rank() * ctx.rows
        return _AllReduceSum.apply(grad)[start:start + ctx.rows]

    @staticmethod
    def jvp(ctx, tangent: Tensor) -> Tensor:  # noqa: ANN001
        return _AllGather.apply(tangent)


def all_reduce_sum(x: Tensor) -> Tensor:
    """The sum of ``x`` over the ranks (the identity for one process), differentiable in every
    mode."""
    return _AllReduceSum.apply(x) if distributed() else x


def gather(x: Tensor, dim: int = 0) -> Tensor:
    """Every rank's ``x`` concatenated along ``dim`` (solo's ``gather``), differentiable in every
    mode; tensors without gradient (indexes, labels) are gathered as data."""
    if not distributed():
        return x
    moved = x.movedim(dim, 0) if dim else x
    if moved.is_floating_point() or moved.is_complex():
        out = _AllGather.apply(moved)
    else:
        parts = [torch.empty_like(moved) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, moved.contiguous())
        out = torch.cat(parts)
    return out.movedim(0, dim) if dim else out


def average(tensors: Sequence[Optional[Tensor]]) -> List[Optional[Tensor]]:
    """Gradients of parameters averaged over the ranks, as DDP averages the model's;
    differentiable (the double-backward meta step averages a gradient that keeps its graph);
    ``None`` stays ``None`` (on every rank alike)."""
    if not distributed():
        return list(tensors)
    n = dist.get_world_size()
    return [None if t is None else all_reduce_sum(t) / n for t in tensors]


def global_batch_statistics(x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``x`` centred on the global batch's mean, that mean and the (biased) variance, over every
    dimension but 1, and the number of values per channel they are taken over; differentiable
    in every mode."""
    dims = [0] + list(range(2, x.dim()))
    count = all_reduce_sum(x.new_tensor(float(x.numel() // x.shape[1])))
    mean = all_reduce_sum(x.sum(dims)) / count
    centred = x - mean.view((1, -1) + (1,) * (x.dim() - 2))
    return centred, mean, all_reduce_sum(centred.pow(2).sum(dims)) / count, count


def normalise(centred: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
              eps: float) -> Tensor:
    """``centred`` scaled to unit variance per channel (dimension 1), then the affine map."""
    shape = (1, -1) + (1,) * (centred.dim() - 2)
    y = centred * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return y


class _DistProxy(types.ModuleType):
    """``torch.distributed`` as a solo loss module sees it, with ``all_reduce`` of a tensor that
    requires grad made differentiable (Barlow Twins all-reduces its correlation matrix in place:
    the result is written back in place, with its graph)."""

    def __init__(self) -> None:
        super().__init__("torch.distributed")

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(dist, name)

    @staticmethod
    def all_reduce(tensor: Tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):  # noqa: ANN001
        if not tensor.requires_grad or op != dist.ReduceOp.SUM or group is not None:
            return dist.all_reduce(tensor, op=op, group=group, async_op=async_op)
        tensor.copy_(_AllReduceSum.apply(tensor))
        return None


#: solo's modules whose collectives carry gradients: module -> {name: replacement}.
_SOLO_COLLECTIVES = {
    "solo.losses.simclr": {"gather": gather},
    "solo.losses.nnclr": {"gather": gather},
    "solo.losses.vicreg": {"gather": gather},
    "solo.losses.vibcreg": {"gather": gather},
    "solo.losses.barlow": {"dist": _DistProxy()},
}


@contextlib.contextmanager
def solo_collectives() -> Iterator[None]:
    """Inside the block, solo's losses gather and all-reduce with the functions above."""
    import importlib

    if not distributed():
        yield
        return
    saved = []
    for module_name, names in _SOLO_COLLECTIVES.items():
        module = importlib.import_module(module_name)
        for name, replacement in names.items():
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)
