"""Per-method adapters: each solo-learn method's SSL loss as a function of per-view outputs.

ICL-MSR needs a method's loss evaluated on other features than the ones its training step saw:
a_t-weighted features for L_msr (stage 1) and features of the virtual parameters theta' for the
meta step (stage 2), both without side effects. Rather than rewriting 14 losses, the adapter
*replays* the method's own ``training_step``: a variant class puts ``ReplayPoint`` between the
method and solo's ``BaseMethod``/``BaseMomentumMethod`` in the MRO, so the method's
``super().training_step(...)`` returns prepared outputs (``feats``, ``momentum_feats``) instead of
running the encoders. Around a replay, ``side_effects_suppressed`` turns logging off and restores
every buffer (MoCo/NNCLR/ReSSL queues, SwAV's queue, DINO's centre, DeepCluster's memory banks)
and the random state afterwards; momentum encoders are never stepped by a training step.

What cannot be derived from the method's code is data in ``ADAPTERS``: whether its loss is an
InfoNCE-type temperature softmax (then ``msr_loss: auto`` picks the ``mixture`` reading, which
needs the log-probability of each positive, ``positive_log_probs``), and the attribute holding its
temperature. Methods missing from the table get a derived adapter (``mean`` reading) when they
are solo ``BaseMethod`` subclasses with their own ``training_step``.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from solo_iclmsr._solo_check import require_solo

require_solo()

from solo.methods.base import BaseMethod, BaseMomentumMethod  # noqa: E402

#: positive_log_probs(module, weighted_feats, outputs) -> log P of every positive, shape (M,)
PositiveLogProbs = Callable[[nn.Module, Sequence[Tensor], Mapping[str, Any]], Tensor]

# Children of a solo method that are not part of f_ph (the head side trained by the SSL loss).
_NOT_HEAD = ("encoder", "classifier", "msr", "knn")


# --------------------------------------------------------------------------------------------
# Replaying a method's training step
# --------------------------------------------------------------------------------------------
class ReplayPoint(BaseMethod):
    """Sits right above ``BaseMethod`` in a variant's MRO (see module docstring).

    In a normal step it records the method's buffers as they are before the method's loss code
    runs (``self._iclmsr_state``) and the shared outputs (per-view ``feats`` with their graph,
    ``momentum_feats``) in ``self._iclmsr_outputs``; during a replay it returns prepared outputs.
    """

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> Dict[str, Any]:
        replay = self.__dict__.get("_iclmsr_replay")
        if replay is not None:
            return replay
        recording = getattr(getattr(self, "iclmsr", None), "enabled", False)
        if recording:
            self._iclmsr_state = buffer_state(self)
        outputs = super().training_step(batch, batch_idx)
        if recording:
            self._iclmsr_outputs = outputs
        return outputs


class MomentumReplayPoint(ReplayPoint, BaseMomentumMethod):
    """``ReplayPoint`` for methods built on ``BaseMomentumMethod``."""


def replay_point_for(method_cls: type) -> type:
    return MomentumReplayPoint if issubclass(method_cls, BaseMomentumMethod) else ReplayPoint


def shared_forward(module: nn.Module, batch: Sequence[Any], batch_idx: int) -> Dict[str, Any]:
    """solo's shared step alone (encoders and online classifiers on every crop), as the
    ``BaseMethod``/``BaseMomentumMethod`` above the variant's ``ReplayPoint`` computes it."""
    return super(ReplayPoint, module).training_step(batch, batch_idx)


# Subtrees whose buffers are not the method's state (BatchNorm statistics of the encoders,
# classifiers and f_msr): left out of ``buffer_state``.
_NOT_STATE = ("encoder.", "momentum_encoder.", "classifier.", "momentum_classifier.", "msr.")


def buffer_state(module: nn.Module) -> Dict[str, Tensor]:
    """Copies of the method's own buffers (queues, centres, memory banks, ...), by name."""
    return {name: buf.detach().clone() for name, buf in module.named_buffers()
            if not name.startswith(_NOT_STATE)}


def _no_log(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def side_effects_suppressed(module: nn.Module,
                            state: Optional[Mapping[str, Tensor]] = None) -> Iterator[None]:
    """No logging inside; every buffer (value and identity) and the RNG state restored after.

    Args:
        module: the method.
        state: buffer values to load for the duration (``buffer_state`` taken before the method's
            real step updated its queues), so replays see what the method's own loss saw.
    """
    saved = [(owner, name, buf, buf.detach().clone())
             for owner in module.modules() for name, buf in owner._buffers.items() if buf is not None]
    rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    module.log, module.log_dict = _no_log, _no_log  # instance attributes shadow the methods
    try:
        if state:
            buffers = dict(module.named_buffers())
            for name, value in state.items():
                buffers[name].data.copy_(value)
        yield
    finally:
        del module.log, module.log_dict
        for owner, name, buf, copy in saved:
            owner._buffers[name] = buf
            # .data: restoring a queue must not bump the version seen by autograd; the values
            # restored are the ones the replay read before writing.
            buf.data.copy_(copy)
        torch.random.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def method_loss(module: nn.Module, feats: Sequence[Tensor], outputs: Mapping[str, Any]) -> Tensor:
    """The method's own SSL loss (online-classifier loss excluded) on the given per-view features.

    Args:
        module: a variant instance (its class has a ``ReplayPoint``).
        feats: one pooled feature tensor (B, c) per crop, in solo's order.
        outputs: what ``ReplayPoint`` recorded in the real step (batch, momentum_feats, ...).
    """
    replay = dict(outputs["shared"])
    replay["feats"] = list(feats)
    replay["loss"] = feats[0].new_zeros(())  # the online classifier's loss is not the SSL loss
    module._iclmsr_replay = replay
    try:
        loss = module._iclmsr_method_cls.training_step(module, outputs["batch"], outputs["batch_idx"])
    finally:
        del module._iclmsr_replay
    if isinstance(loss, Mapping):
        loss = loss["loss"]
    return loss


# --------------------------------------------------------------------------------------------
# The adapters
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodAdapter:
    """What ICL-MSR needs to know about one method beyond its code.

    Attributes:
        name: the method's key in ``solo.methods.METHODS``.
        contrastive: its loss is a temperature softmax over one positive and negatives
            (``msr_loss: auto`` then means ``mixture``).
        temperature_attr: attribute holding the method's temperature (default of ``tau_msr``).
        positive_log_probs: for the ``mixture`` reading, log P of each positive computed from
            weighted features; ``None`` allows only the ``mean`` reading.
        derived: built by ``derive_adapter`` rather than written in the table.
    """

    name: str
    contrastive: bool = False
    temperature_attr: Optional[str] = None
    positive_log_probs: Optional[PositiveLogProbs] = None
    derived: bool = False

    def msr_form(self, requested: str) -> str:
        """Resolve ``msr_loss`` (``auto``, ``mixture`` or ``mean``) for this method."""
        if requested == "auto":
            return "mixture" if self.contrastive and self.positive_log_probs is not None else "mean"
        if requested == "mixture" and self.positive_log_probs is None:
            raise ValueError(f"iclmsr.msr_loss=mixture is not available for method {self.name!r} "
                             f"(no temperature-softmax loss): use mean or auto.")
        return requested

    def tau_msr(self, module: nn.Module, requested: Optional[float]) -> float:
        if requested is not None:
            return float(requested)
        return float(getattr(module, self.temperature_attr, 0.2)) if self.temperature_attr else 0.2


def head_module_names(module: nn.Module) -> List[str]:
    """Children that form f_ph: trainable, and neither encoder, classifier nor momentum branch."""
    return [name for name, child in module.named_children()
            if name not in _NOT_HEAD and not name.startswith("momentum")
            and any(p.requires_grad for p in child.parameters())]


def _simclr_log_probs(module: nn.Module, feats: Sequence[Tensor], outputs: Mapping[str, Any],
                      tau: float) -> Tensor:
    # NT-Xent over the 2N anchors of the two large crops: 1 positive, 2N - 2 negatives.
    from solo_iclmsr.core.losses import info_nce_log_prob

    z1, z2 = module.projector(feats[0]), module.projector(feats[1])
    return info_nce_log_prob(z1, z2, tau)


def _moco_log_probs(module: nn.Module, feats: Sequence[Tensor], outputs: Mapping[str, Any],
                    tau: float) -> Tensor:
    # q from the weighted online branch; keys from the momentum branch and the queue, unweighted
    # constants as in MoCo's own step (queue[1] holds past keys of view 2, queue[0] of view 1).
    keys = outputs["constants"]["moco_keys"]
    queue = module.queue.detach()
    log_probs = []
    for q_feats, key, negatives in ((feats[0], keys[1], queue[1]), (feats[1], keys[0], queue[0])):
        q = F.normalize(module.projector(q_feats), dim=-1)
        logits = torch.cat([(q * key).sum(-1, keepdim=True), q @ negatives], dim=1) / tau
        log_probs.append(logits[:, 0] - torch.logsumexp(logits, dim=1))
    return torch.cat(log_probs)


def _nnclr_log_probs(module: nn.Module, feats: Sequence[Tensor], outputs: Mapping[str, Any],
                     tau: float) -> Tensor:
    # Positive of the prediction p_j of view 2 is the support-set neighbour of view 1 (found from
    # the unweighted embeddings, a constant as in NNCLR's own step); negatives: the other rows.
    nn1, nn2 = outputs["constants"]["nnclr_neighbours"]
    log_probs = []
    for neighbours, p_feats in ((nn1, feats[1]), (nn2, feats[0])):
        p = F.normalize(module.predictor(module.projector(p_feats)), dim=-1)
        logits = F.normalize(neighbours, dim=-1) @ p.T / tau
        log_probs.append(logits.diagonal() - torch.logsumexp(logits, dim=1))
    return torch.cat(log_probs)


def _with_tau(fn: Callable[..., Tensor], attr: str) -> PositiveLogProbs:
    def positive_log_probs(module: nn.Module, feats: Sequence[Tensor],
                           outputs: Mapping[str, Any]) -> Tensor:
        return fn(module, feats, outputs, outputs.get("tau_msr", getattr(module, attr)))

    return positive_log_probs


ADAPTERS: Dict[str, MethodAdapter] = {}


def register_adapter(adapter: MethodAdapter) -> MethodAdapter:
    """Add an adapter to the table; overwriting an existing name warns (as timm's registry)."""
    if adapter.name in ADAPTERS and ADAPTERS[adapter.name] != adapter:
        warnings.warn(f"Overwriting the ICL-MSR adapter of method {adapter.name!r}.")
    ADAPTERS[adapter.name] = adapter
    return adapter


for _adapter in (
    MethodAdapter("simclr", True, "temperature", _with_tau(_simclr_log_probs, "temperature")),
    MethodAdapter("mocov2plus", True, "temperature", _with_tau(_moco_log_probs, "temperature")),
    MethodAdapter("nnclr", True, "temperature", _with_tau(_nnclr_log_probs, "temperature")),
    # Temperature softmaxes between distributions, not one positive against negatives: the
    # backdoor mixture of a positive's probability is undefined, so they use the mean reading.
    MethodAdapter("ressl", False, "temperature_q"),
    MethodAdapter("swav", False, "temperature"),
    MethodAdapter("deepclusterv2", False, "temperature"),
    MethodAdapter("dino", False, None),
    MethodAdapter("barlow_twins"),
    MethodAdapter("byol"),
    MethodAdapter("nnbyol"),
    MethodAdapter("nnsiam"),
    MethodAdapter("simsiam"),
    MethodAdapter("vicreg"),
    MethodAdapter("wmse"),
):
    register_adapter(_adapter)

#: Methods of METHODS that are not self-supervised methods, with the reason.
EXCLUDED = {"base": "the shared base class, no SSL loss", "linear": "linear evaluation, no SSL loss"}


def derive_adapter(name: str, method_cls: type) -> Tuple[Optional[MethodAdapter], str]:
    """An adapter for a method missing from the table, or None and the reason it cannot be."""
    if not isinstance(method_cls, type) or not issubclass(method_cls, BaseMethod):
        return None, "not a subclass of solo's BaseMethod"
    if method_cls in (BaseMethod, BaseMomentumMethod) or "training_step" not in vars(method_cls):
        return None, "defines no training_step of its own (no SSL loss to replay)"
    return MethodAdapter(name, derived=True), "derived: mean reading through the replayed step"


def constants_for(name: str, module: nn.Module, shared: Mapping[str, Any]) -> Dict[str, Any]:
    """Unweighted quantities the mixture readings hold fixed, computed without side effects."""
    constants: Dict[str, Any] = {}
    with torch.no_grad():
        if name == "mocov2plus":
            constants["moco_keys"] = [F.normalize(module.momentum_projector(f), dim=-1)
                                      for f in shared["momentum_feats"][:2]]
        elif name == "nnclr":
            neighbours = []
            for f in shared["feats"][:2]:
                z = F.normalize(module.projector(f.detach()), dim=-1)
                neighbours.append(module.find_nn(z)[1])
            constants["nnclr_neighbours"] = neighbours
    return constants
