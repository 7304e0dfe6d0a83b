"""The arithmetic of the meta step (``iclmsr.meta_precision``, ICLMSR.md section 9).

``float32``: the meta step runs outside autocast, whatever the training step ran in.
``autocast``: its forward passes, the backward passes they feed and the forward-mode pass run
under the run's autocast dtype. Two hazards of half precision are handled here, as a GradScaler
handles them for the training step:

* float16 gradients underflow (and, for large losses, overflow): every loss the meta step
  differentiates is multiplied by ``loss_scale`` (the run's GradScaler scale, which the
  training step's backward just passed without an overflow) and the gradients are divided by it.
* the tangent of the Jacobian-vector product, w_f = -alpha v_f, is tiny (alpha ~ 1e-2, v of
  the order of a gradient): in float16 most entries underflow. The tangent is rescaled to a root
  mean square of 1 before the pass and its output scaled back (J_f is linear in the tangent).

What still overflows shows as a non-finite meta-gradient, which the caller does not apply.
bfloat16 has float32's range: neither hazard applies, the scale is 1 and only the precision of the
products changes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager, Dict, Optional

import torch
from torch import Tensor

__all__ = ["MetaPrecision", "MetaLossScale", "precision_dtype"]


def precision_dtype(precision: Any) -> Optional[torch.dtype]:
    """The half type of a Lightning ``precision``: float16 for ``16``, ``16-mixed`` and
    ``16-true``, bfloat16 for ``bf16*``; ``None`` for float32 (and ``None``)."""
    text = "" if precision is None else str(precision)
    if text.startswith("bf16"):
        return torch.bfloat16
    if text.startswith("16"):
        return torch.float16
    return None


@dataclass(frozen=True)
class MetaPrecision:
    """How one meta step computes.

    Attributes:
        device_type: ``cuda``, ``cpu``, ...: the device of the autocast region.
        dtype: the autocast dtype (``torch.float16`` / ``torch.bfloat16``), or ``None`` for
            float32 outside autocast.
        loss_scale: the factor the meta step's losses are multiplied by before a backward pass
            (1 but for float16).
    """

    device_type: str
    dtype: Optional[torch.dtype] = None
    loss_scale: float = 1.0

    @classmethod
    def of(cls, mode: str, device_type: str, autocast_dtype: Optional[torch.dtype] = None,
           loss_scale: Optional[float] = None) -> "MetaPrecision":
        """The meta step's precision for ``iclmsr.meta_precision`` = ``mode`` in a run whose
        training step autocasts to ``autocast_dtype`` (``None``: it does not) and whose
        GradScaler has the scale ``loss_scale`` (``None``: no scaler)."""
        if mode not in ("float32", "autocast"):
            raise ValueError(f"iclmsr.meta_precision={mode!r} is invalid: expected one of "
                             f"float32, autocast.")
        if mode == "float32" or autocast_dtype is None or autocast_dtype == torch.float32:
            return cls(device_type)
        scale = float(loss_scale) if autocast_dtype == torch.float16 and loss_scale else 1.0
        if not scale > 0 or scale == float("inf"):
            raise ValueError(f"meta_step: loss_scale={loss_scale!r} is invalid: expected a "
                             f"positive finite number.")
        return cls(device_type, autocast_dtype, scale)

    @property
    def half(self) -> bool:
        """Whether the meta step runs under autocast."""
        return self.dtype is not None

    def autocast(self) -> ContextManager[None]:
        """The region of the meta step's passes: autocast to ``dtype``, or autocast off."""
        if self.dtype is None:
            return torch.autocast(self.device_type, enabled=False)
        return torch.autocast(self.device_type, dtype=self.dtype)

    def full(self) -> ContextManager[None]:
        """A region that stays in float32 inside an autocast one (finite differences, whose
        steps are below half precision's resolution)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, enabled=False)

    def scaled(self, loss: Tensor) -> Tensor:
        """``loss`` times the loss scale, before a backward pass."""
        return loss if self.loss_scale == 1.0 else loss * self.loss_scale

    def unscaled(self, grad: Tensor) -> Tensor:
        """A gradient of a ``scaled`` loss back to the loss's own scale, in float32."""
        if self.loss_scale == 1.0:
            return grad
        return grad.float() / self.loss_scale

    def tangent_scale(self, tangents: Dict[str, Tensor]) -> Optional[Tensor]:
        """The factor that brings ``tangents`` to a root mean square of 1 (``None`` in float32:
        the tangents are used as they are). A zero tangent keeps the factor 1."""
        if self.dtype is None or not tangents:
            return None
        count = sum(t.numel() for t in tangents.values())
        square = sum(t.float().pow(2).sum() for t in tangents.values())
        rms = (square / max(count, 1)).sqrt()
        return torch.where(rms > 0, rms.reciprocal(), torch.ones_like(rms))


class MetaLossScale:
    """The meta step's own dynamic loss scale in float16, kept as GradScaler keeps the training
    step's: halved after a meta-gradient that is not finite (that update is not applied),
    doubled after ``growth_interval`` finite ones in a row.

    Args:
        init_scale: the first scale.
        growth_interval: finite meta-gradients in a row before the scale doubles.
    """

    def __init__(self, init_scale: float = 2.0 ** 10, growth_interval: int = 100) -> None:
        self.scale, self.growth_interval, self.clean = float(init_scale), int(growth_interval), 0

    def update(self, finite: bool) -> None:
        """After a meta step: its meta-gradient was finite, or not."""
        if not finite:
            self.scale, self.clean = max(self.scale / 2.0, 1.0), 0
            return
        self.clean += 1
        if self.clean >= self.growth_interval:
            self.scale, self.clean = min(self.scale * 2.0, 2.0 ** 24), 0

    def state_dict(self) -> Dict[str, float]:
        return {"scale": self.scale, "clean": self.clean}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.scale, self.clean = float(state["scale"]), int(state["clean"])
