"""Re-evaluating a solo-learn method on other backbone features, without side effects.

ICL-MSR needs a method's loss on features its training step never saw: the a_t-weighted features
(L_msr, stage 1) and the features at the virtual parameters theta' (the meta step). Rather than
rewriting 18 losses, the method's own code is *replayed*: every solo method reaches its backbones
only through ``self.backbone(X)`` (``BaseMethod.forward`` / ``multicrop_forward``) and
``self.momentum_backbone(X)`` (``BaseMomentumMethod.momentum_forward``), so

* in the real step, forward hooks on the two backbones record their outputs, crop by crop
  (:func:`recording`), together with the method's buffers as they were before the step;
* in a replay, the backbones are stood in for by :class:`FeatureReplay` modules that hand out
  prepared features in the same order, and the method's ``training_step`` (or ``forward``) runs
  as written: heads, predictors, queues, centres, prototypes, all of it.

Around a replay (:func:`replaying`) logging is off, the online k-NN is not fed, the online
classifiers' losses are left out (they are not the SSL loss), every buffer (queues, DINO's centre,
SwAV's queue, BatchNorm statistics of the heads) holds the values the real step started from and
gets its own values back afterwards, and the random state is restored.

Distributed training [ICLMSR.md section 4]: a replay sees the process group, as the method's own
step does, so every ICL-MSR term (L_msr and the meta objective) takes its negatives and its
statistics from the global batch; inside a replay solo's losses gather and all-reduce with the
collectives of ``collectives.py``, which can be differentiated twice and in forward mode
(solo's gather layer backpropagates once only).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from solo_iclmsr.plugin.collectives import solo_collectives

__all__ = [
    "StepRecord",
    "FeatureReplay",
    "recording",
    "replaying",
    "method_loss",
    "method_outputs",
    "momentum_outputs",
    "method_state",
]

# Buffers that are not the method's own state: BatchNorm statistics of the backbones and
# classifiers, and f_msr's. Left out of ``method_state``.
_NOT_STATE = ("backbone.", "momentum_backbone.", "classifier.", "momentum_classifier.", "msr.")


@dataclass
class StepRecord:
    """What the real training step of one batch saw.

    Attributes:
        batch: solo's batch ``[indexes, [crop, ...], targets]``.
        batch_idx: its index.
        feats: the online backbone's output for every crop, in solo's order (with graph).
        momentum_feats: the momentum backbone's output for every large crop (no graph).
        state: the method's buffers (queues, centres, ...) before its loss code ran.
        constants: quantities ICL-MSR's terms hold fixed, computed once per step when first
            needed (``cached``): the momentum branch's outputs, NNCLR's neighbours.
        cut_activations: with ``iclmsr.meta_stages``, the online backbone's activation at the
            cut of every crop (``truncation.EncoderTail``), no graph.
    """

    batch: Sequence[Any]
    batch_idx: int
    feats: List[Tensor] = field(default_factory=list)
    momentum_feats: List[Tensor] = field(default_factory=list)
    state: Dict[str, Tensor] = field(default_factory=dict)
    constants: Dict[str, Any] = field(default_factory=dict)
    cut_activations: List[Tensor] = field(default_factory=list)

    def subset(self, index: Tensor) -> "StepRecord":
        """The record of the images ``index`` of the batch alone (``iclmsr.meta_batch``): the
        batch, the recorded features and activations restricted to them; the method's state as
        it is; the per-step constants computed anew on the subset when needed."""
        rows = lambda tensors: [t[index] for t in tensors]  # noqa: E731
        indexes, crops, *rest = self.batch
        crops = rows(crops) if isinstance(crops, (list, tuple)) else crops[index]
        return StepRecord([indexes[index], crops, *rows(rest)], self.batch_idx, rows(self.feats),
                          rows(self.momentum_feats), self.state, {}, rows(self.cut_activations))

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """``constants[key]``, computed by ``compute()`` the first time."""
        if key not in self.constants:
            self.constants[key] = compute()
        return self.constants[key]

    @property
    def views(self) -> List[Tensor]:
        """The crops of the batch."""
        crops = self.batch[1]
        return list(crops) if isinstance(crops, (list, tuple)) else [crops]


class FeatureReplay(nn.Module):
    """Stands in for a backbone: returns the prepared features, one per call, in order."""

    def __init__(self, features: Sequence[Tensor]) -> None:
        super().__init__()
        self._queue = list(features)

    def forward(self, x: Tensor) -> Tensor:
        if not self._queue:
            raise RuntimeError("FeatureReplay: the method called its backbone more often than "
                               "it did in the recorded step.")
        return self._queue.pop(0)


def method_state(module: nn.Module) -> Dict[str, Tensor]:
    """Copies of the method's own buffers (queues, centres, memory banks, ...), by name."""
    return {name: buf.detach().clone() for name, buf in module.named_buffers()
            if not name.startswith(_NOT_STATE)}


@contextlib.contextmanager
def recording(module: nn.Module, batch: Sequence[Any], batch_idx: int) -> Iterator[StepRecord]:
    """Records, during the real step run inside the block, every backbone output."""
    record = StepRecord(batch, batch_idx, state=method_state(module))
    hooks = [module.backbone.register_forward_hook(
        lambda _m, _i, out: record.feats.append(out))]
    if getattr(module, "momentum_backbone", None) is not None:
        hooks.append(module.momentum_backbone.register_forward_hook(
            lambda _m, _i, out: record.momentum_feats.append(out.detach())))
    try:
        yield record
    finally:
        for hook in hooks:
            hook.remove()


def _no_log(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def replaying(module: nn.Module, record: StepRecord) -> Iterator[None]:
    """Replays inside the block see the method's pre-step state and leave no trace."""
    # Every buffer is replaced by a copy for the duration, so that what a replay writes in place
    # (queues, centres, running statistics) never touches a tensor the real step saved for its
    # backward; the originals are put back afterwards, untouched.
    originals = [(owner, name, buf) for owner in module.modules()
                 for name, buf in owner._buffers.items() if buf is not None]
    for owner, name, buf in originals:
        owner._buffers[name] = buf.detach().clone()
    rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    knn_eval, channel_last = getattr(module, "knn_eval", False), getattr(module, "no_channel_last", True)
    module.knn_eval, module.no_channel_last = False, True
    # Instance attributes shadow the methods for the duration: no logging, no classifier losses.
    shadowed = ("log", "log_dict", "_base_shared_step", "_shared_step_momentum")
    before = {name: module.__dict__[name] for name in shadowed if name in module.__dict__}
    module.log, module.log_dict = _no_log, _no_log
    module._base_shared_step = lambda X, targets: _without_classifier_loss(module(X))
    if hasattr(type(module), "_shared_step_momentum"):
        module._shared_step_momentum = (
            lambda X, targets: _without_classifier_loss(module.momentum_forward(X)))
    try:
        buffers = dict(module.named_buffers())
        for name, value in record.state.items():
            buffers[name].copy_(value)
        with solo_collectives():
            yield
    finally:
        for name in shadowed:
            module.__dict__.pop(name, None)
        module.__dict__.update(before)
        module.knn_eval, module.no_channel_last = knn_eval, channel_last
        for owner, name, buf in originals:
            owner._buffers[name] = buf
        torch.random.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _without_classifier_loss(out: Dict[str, Any]) -> Dict[str, Any]:
    zero = out["feats"].new_zeros(())
    return {**out, "loss": zero, "acc1": zero, "acc5": zero}


@contextlib.contextmanager
def _backbones(module: nn.Module, feats: Sequence[Tensor],
               momentum_feats: Optional[Sequence[Tensor]]) -> Iterator[None]:
    """The backbones stood in for by ``FeatureReplay`` modules."""
    swapped = {"backbone": FeatureReplay(feats)}
    if momentum_feats is not None and getattr(module, "momentum_backbone", None) is not None:
        swapped["momentum_backbone"] = FeatureReplay(momentum_feats)
    real = {name: module._modules[name] for name in swapped}
    module._modules.update(swapped)
    try:
        yield
    finally:
        module._modules.update(real)


def method_loss(module: nn.Module, method_cls: type, record: StepRecord,
                feats: Sequence[Tensor]) -> Tensor:
    """The method's own SSL loss (online classifiers excluded) on the given per-crop features.

    Call inside :func:`replaying`. ``method_cls`` is the solo method class whose
    ``training_step`` runs (the variant's base class).
    """
    with _backbones(module, feats, record.momentum_feats):
        loss = method_cls.training_step(module, record.batch, record.batch_idx)
    return loss["loss"] if isinstance(loss, Mapping) else loss


def method_outputs(module: nn.Module, record: StepRecord, feats: Sequence[Tensor]
                   ) -> List[Dict[str, Any]]:
    """The method's ``forward`` output (heads on the given features) for every large crop, and
    ``multicrop_forward`` for the small ones. Call inside :func:`replaying`."""
    views = record.views
    large = getattr(module, "num_large_crops", len(views))
    with _backbones(module, feats, None):
        return [module(x) if k < large else module.multicrop_forward(x)
                for k, x in enumerate(views)]


@torch.no_grad()
def momentum_outputs(module: nn.Module, record: StepRecord) -> List[Dict[str, Any]]:
    """The method's ``momentum_forward`` output for every large crop, from the recorded momentum
    features (constants of ICL-MSR's terms). Call inside :func:`replaying`."""
    n = len(record.momentum_feats)
    with _backbones(module, [], record.momentum_feats):
        return [module.momentum_forward(x) for x in record.views[:n]]
