"""Mixed precision as Lightning runs it, read from the meta step's side (ICLMSR.md section 9).

With ``precision: 16-mixed`` Lightning's ``MixedPrecision`` plugin runs, per optimizer step:
the closure (the training step under float16 autocast, a scaled backward), ``scaler.unscale_``,
the ``on_before_optimizer_step`` hooks (where the meta step runs), then ``scaler.step``, which
skips the step when the unscaled gradients hold inf or NaN, and ``scaler.update``. The meta step
follows the scaler's decision: ``step_gradients`` tells whether this step will be skipped and
whether the gradients the hook sees are still scaled (an optimizer that unscales inside its own
``step``, ``_step_supports_amp_scaling``). Without a scaler (float32, ``bf16-mixed``) a step whose
gradients are not finite is treated the same way.

On a CPU, Lightning turns ``precision: 16-mixed`` into ``bf16-mixed`` (no scaler): a run that
asks for float16 would silently get another arithmetic. ``trainer_precision`` gives it what it
asked for instead: float16 autocast with a real ``torch.amp.GradScaler("cpu")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional

import torch
from torch import Tensor

from solo_iclmsr.core.meta_precision import precision_dtype

__all__ = ["StepGradients", "step_gradients", "autocast_dtype", "grad_scaler",
           "trainer_precision", "all_finite"]


@dataclass(frozen=True)
class StepGradients:
    """What the gradients of one optimizer step are, as the meta step needs to know.

    Attributes:
        skipped: the optimizer step will not happen (the scaler found inf/NaN, or, without a
            scaler, a gradient is not finite): no meta step and no f_msr update.
        scale: the factor the gradients in ``.grad`` still carry (1.0 once unscaled); the true
            gradient is ``.grad / scale``.
    """

    skipped: bool
    scale: float = 1.0


def grad_scaler(trainer: Any) -> Optional[torch.amp.GradScaler]:
    """The run's GradScaler (``16-mixed``), or ``None``."""
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def autocast_dtype(trainer: Any) -> Optional[torch.dtype]:
    """The dtype the run's training step autocasts to (``16-mixed``, ``bf16-mixed``), or ``None``
    (float32, a ``-true`` precision without autocast, or no trainer)."""
    precision = str(getattr(getattr(trainer, "precision_plugin", None), "precision", None))
    return precision_dtype(precision) if precision.endswith("-mixed") else None


def all_finite(tensors: Iterable[Optional[Tensor]]) -> bool:
    """Whether every given tensor (``None`` skipped) holds only finite values (one sync)."""
    flags = [torch.isfinite(t).all() for t in tensors if t is not None]
    return bool(torch.stack(flags).all()) if flags else True


def step_gradients(trainer: Any, optimizer: torch.optim.Optimizer,
                   params: Iterable[Tensor]) -> StepGradients:
    """Whether this optimizer step will be skipped, and the scale ``.grad`` still carries, from
    inside ``on_before_optimizer_step``; ``params`` are the parameters the meta step reads the
    gradients of. Under data parallelism the answer is agreed by every process (an all-reduce of
    the flag), so no process enters the meta step's collectives alone."""
    from torch.amp.grad_scaler import OptState

    scaler = grad_scaler(trainer)
    scale = 1.0
    if scaler is None:
        skipped = not all_finite(p.grad for p in params)
    else:
        state: Dict[str, Any] = scaler._per_optimizer_states[id(optimizer)]
        if state["stage"] is OptState.UNSCALED:  # Lightning unscaled: the scaler's own record
            found = state["found_inf_per_device"].values()
            skipped = bool(sum(float(f) for f in found) > 0)
        else:  # the optimizer unscales in its own step: .grad still carries the scale
            scale = float(scaler.get_scale())
            skipped = not all_finite(p.grad for p in params)
    return StepGradients(_agreed(skipped), scale)


def _agreed(flag: bool) -> bool:
    """``flag`` or-ed over the processes (the flag itself with one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    backend = torch.distributed.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def trainer_precision(precision: Any, accelerator: Any) -> Dict[str, Any]:
    """The ``Trainer`` arguments that give a run the precision it asks for: ``{"precision": ...}``
    as it is, except ``16-mixed`` on a CPU, which becomes ``{"plugins": [MixedPrecision("16-mixed",
    "cpu", scaler=GradScaler("cpu"))]}`` (float16 autocast with a real scaler at torch's default
    initial scale, 65536) instead of Lightning's silent ``bf16-mixed``."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    on_cpu = accelerator == "cpu" or (accelerator in (None, "auto")
                                      and not torch.cuda.is_available())
    if str(precision) not in ("16", "16-mixed") or not on_cpu:
        return {} if precision is None else {"precision": precision}
    return {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}
