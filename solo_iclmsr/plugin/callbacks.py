"""Lightning callbacks of a run: the non-finite loss guard, the strata probe and the training
clock."""

from __future__ import annotations

import math
import time
from typing import Any, Dict, Optional

import lightning.pytorch as pl
import torch
from torch import nn

from solo_iclmsr.core import (foreground_channels, foreground_share, strata_diagnostics,
                              variance_explained)
from solo_iclmsr.data.builtin import NEUTRAL_GRAY
from solo_iclmsr.data.probe import ProbeSet

__all__ = ["NonFiniteLossError", "NonFiniteLossGuard", "StrataProbe", "strata_probe_stats",
           "TrainClock"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped."""


class NonFiniteLossGuard(pl.Callback):
    """Stops the run, with one line, at the first non-finite training loss.

    The check runs after each batch; solo's checkpointer writes only at epoch ends, so the last
    good checkpoint (of a completed epoch) is never overwritten by a broken state.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or math.isfinite(float(loss)):
            return
        kept = next((f"the last good checkpoint is {c.last_ckpt}" for c in trainer.callbacks
                     if getattr(c, "last_ckpt", None)), "no checkpoint of this run was written yet")
        raise NonFiniteLossError(
            f"the training loss became {float(loss)} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}, batch {batch_idx}); the run stopped and {kept}. Try a "
            f"lower optimizer.lr or iclmsr.lambda_msr.")


def _gray_out(images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Pixels where ``keep`` is off set to the neutral gray of the foreground variants."""
    return torch.where(keep[:, None].bool(), images, torch.full_like(images, NEUTRAL_GRAY))


@torch.no_grad()
def strata_probe_stats(module: nn.Module, probe: ProbeSet, batch_size: int = 256
                       ) -> Dict[str, float]:
    """What f_msr proposes on held-out images, in eval mode (``core.diagnostics``): how
    image-dependent and how distinct the strata are, how much of their variation each grouping
    of the images explains against its chance level, and, with masks, the share of a_t's weight
    on the channels that prefer the foreground.

    Args:
        module: a variant with ICL-MSR enabled (``msr``, ``backbone``, the device augmentation's
            ``raw_view`` for f_msr's input).
        probe: the images.
    """
    was_training = module.training
    module.eval()
    try:
        device = next(module.backbone.parameters()).device
        raw_view = module.device_augmentation.raw_view

        def batches(images: torch.Tensor):
            for start in range(0, len(images), batch_size):
                yield raw_view(images[start:start + batch_size].to(device))

        weights = torch.cat([module._proposals(x) for x in batches(probe.images)]).float().cpu()
        stats = strata_diagnostics(weights).as_dict()
        for name, groups in probe.groups.items():
            eta, chance = variance_explained(weights, groups)
            stats[f"explained_by_{name}"] = eta
            stats[f"explained_by_{name}_over_chance"] = eta / chance if chance > 0 else float("nan")
        if probe.masks is not None:
            feats = {part: torch.cat([module.backbone(x) for x in batches(_gray_out(probe.images, keep))])
                     for part, keep in (("fg", probe.masks), ("bg", 1 - probe.masks))}
            channels = foreground_channels(feats["fg"].float().cpu(), feats["bg"].float().cpu())
            share = foreground_share(weights, channels)  # (N, n)
            stats.update(fg_share=float(share.mean()), fg_share_best_stratum=float(
                share.max(1).values.mean()), fg_share_uniform=float(channels.float().mean()))
        return stats
    finally:
        module.train(was_training)


class StrataProbe(pl.Callback):
    """Logs ``strata_probe_stats`` as ``strata_probe/<name>`` every ``every_n_epochs`` epochs."""

    def __init__(self, probe: ProbeSet, every_n_epochs: int = 1) -> None:
        super().__init__()
        self.probe, self.every_n_epochs = probe, every_n_epochs
        self.last: Optional[Dict[str, float]] = None

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.last = strata_probe_stats(module, self.probe)
        module.log_dict({f"strata_probe/{k}": v for k, v in self.last.items()}, sync_dist=False,
                        rank_zero_only=True)


class TrainClock(pl.Callback):
    """The training time of a run, kept in its checkpoints so that a resumed run adds to it.

    Attributes:
        train_seconds: wall time of the training epochs (data loading and steps; validation and
            checkpoint writing excluded).
        step_seconds: wall time inside the training steps (forward, backward, ICL-MSR's meta
            step, the optimizer step): what the per-step time of two methods compares.
        step_cpu_seconds: the process's CPU time inside the training steps: on a CPU shared with
            other jobs it measures the work of a step better than the wall time does.
        steps: training steps timed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.train_seconds = 0.0
        self.step_seconds = 0.0
        self.step_cpu_seconds = 0.0
        self.steps = 0
        self._mark: Optional[float] = None
        self._step_start: Optional[tuple] = None

    @property
    def seconds_per_step(self) -> float:
        return self.step_seconds / self.steps if self.steps else float("nan")

    @property
    def cpu_seconds_per_step(self) -> float:
        return self.step_cpu_seconds / self.steps if self.steps else float("nan")

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._mark = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step_start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        if self._step_start is not None:
            self.step_seconds += now - self._step_start[0]
            self.step_cpu_seconds += cpu - self._step_start[1]
            self.steps += 1
        if self._mark is not None:
            self.train_seconds += now - self._mark
        self._mark, self._step_start = now, None

    def state_dict(self) -> Dict[str, Any]:
        return {"train_seconds": self.train_seconds, "step_seconds": self.step_seconds,
                "step_cpu_seconds": self.step_cpu_seconds, "steps": self.steps}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.train_seconds = float(state_dict.get("train_seconds", 0.0))
        self.step_seconds = float(state_dict.get("step_seconds", 0.0))
        # a checkpoint written before the CPU time was kept: that part of it is unknown
        self.step_cpu_seconds = float(state_dict.get("step_cpu_seconds", float("nan")))
        self.steps = int(state_dict.get("steps", 0))
