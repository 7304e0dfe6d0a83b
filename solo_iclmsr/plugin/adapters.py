"""Per-method adapters: what ICL-MSR needs to know about a solo-learn method beyond its code.

The method's own loss is replayed (``replay.py``), so the ``mean`` reading of L_msr needs nothing
per method. What cannot be derived from the code is data in ``ADAPTERS``: whether the loss is an
InfoNCE-type temperature softmax over a positive and negatives (then ``msr_loss: auto`` picks the
``mixture`` reading, the literal backdoor likelihood, which needs the log-probability of every
positive: ``positive_log_probs``) and the attribute that holds its temperature.

Every SSL method of ``solo.methods.METHODS`` is in the table or in ``EXCLUDED`` with its reason; a
method another package adds later gets a derived adapter (``mean`` reading) when it is a solo
``BaseMethod`` with its own ``training_step``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from solo_iclmsr.plugin import collectives
from solo_iclmsr.plugin.replay import StepRecord, method_outputs, momentum_outputs

__all__ = [
    "MethodAdapter",
    "ADAPTERS",
    "EXCLUDED",
    "register_adapter",
    "derive_adapter",
    "adapter_for",
    "head_module_names",
]

#: positive_log_probs(module, outputs, record, tau) -> log P of every positive, (M,).
#: ``outputs``: the method's forward output per crop on one stratum's features. Called inside
#: ``replay.replaying``; what stays fixed across strata comes from ``record.cached``.
PositiveLogProbs = Callable[[nn.Module, List[Dict[str, Any]], StepRecord, float], Tensor]

# Children of a solo method that are not part of f_ph (the head side trained by the SSL loss).
_NOT_HEAD = ("backbone", "classifier", "msr", "knn")


@dataclass(frozen=True)
class MethodAdapter:
    """What ICL-MSR needs to know about one method beyond its code.

    Attributes:
        name: the method's key in ``solo.methods.METHODS``.
        contrastive: its loss is -log of a temperature softmax of positives against negatives
            (``msr_loss: auto`` then means ``mixture``).
        temperature_attr: attribute holding the method's temperature (default of ``tau_msr``).
        positive_log_probs: for the ``mixture`` reading, log P of each positive from one
            stratum's outputs; ``None`` allows only the ``mean`` reading.
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
                             f"(its loss is not -log P of one positive): use mean or auto.")
        return requested

    def tau_msr(self, module: nn.Module, requested: Optional[float]) -> float:
        """tau of the mixture reading: ``iclmsr.tau_msr``, else the method's, else 0.2."""
        if requested is not None:
            return float(requested)
        return float(getattr(module, self.temperature_attr, 0.2)) if self.temperature_attr else 0.2


def head_module_names(module: nn.Module) -> List[str]:
    """Children that form f_ph: trainable, and neither backbone, classifier nor momentum branch."""
    return [name for name, child in module.named_children()
            if name not in _NOT_HEAD and not name.startswith("momentum")
            and any(p.requires_grad for p in child.parameters())]


# --------------------------------------------------------------------------------------------
# log P of every positive, per method, from one stratum's outputs. Each mirrors its solo loss
# function, with its negatives from every rank (``collectives.gather``, which the meta step can
# differentiate twice); the anchors are this rank's.
# --------------------------------------------------------------------------------------------
def _positive_set_log_probs(z: Tensor, indexes: Tensor, tau: float) -> Tensor:
    """solo's ``simclr_loss_func`` per anchor: log(pos / (pos + neg)), pos summing over the other
    crops with the same index (one positive for two crops), neg over different indexes; the
    candidates are every rank's crops."""
    z = F.normalize(z, dim=-1)
    logits = z @ collectives.gather(z).T / tau  # (M, world * M)
    same = indexes[:, None] == collectives.gather(indexes)[None, :]
    self_mask = torch.zeros_like(same)
    offset = collectives.rank() * len(z)
    self_mask[:, offset:offset + len(z)] = torch.eye(len(z), dtype=torch.bool, device=z.device)
    pos = torch.logsumexp(logits.masked_fill(~same | self_mask, float("-inf")), dim=1)
    return pos - torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1)


def _momentum(module: nn.Module, record: StepRecord) -> List[Dict[str, Any]]:
    """The momentum branch's outputs on the recorded momentum features (fixed across strata)."""
    return record.cached("momentum", lambda: momentum_outputs(module, record))


def _simclr(module: nn.Module, outputs: List[Dict[str, Any]], record: StepRecord,
            tau: float) -> Tensor:
    z = torch.cat([out["z"] for out in outputs])
    return _positive_set_log_probs(z, record.batch[0].repeat(len(outputs)), tau)


def _supcon(module: nn.Module, outputs: List[Dict[str, Any]], record: StepRecord,
            tau: float) -> Tensor:
    z = torch.cat([out["z"] for out in outputs])
    return _positive_set_log_probs(z, record.batch[-1].repeat(len(outputs)), tau)


def _mocov2plus(module: nn.Module, outputs: List[Dict[str, Any]], record: StepRecord,
                tau: float) -> Tensor:
    # q of view j against the momentum key of the other view and the queue of its past keys
    # (solo's loss: this rank's keys; the queue holds every rank's).
    keys = [out["z"] for out in _momentum(module, record)]
    queue = module.queue.detach()
    log_probs = []
    for q, key, negatives in ((outputs[0]["z"], keys[1], queue[1]),
                              (outputs[1]["z"], keys[0], queue[0])):
        logits = torch.cat([(q * key).sum(-1, keepdim=True), q @ negatives], dim=1) / tau
        log_probs.append(logits[:, 0] - torch.logsumexp(logits, dim=1))
    return torch.cat(log_probs)


def _diagonal_log_probs(logits: Tensor) -> Tensor:
    """log softmax of each row's own entry among every rank's columns (this rank's block)."""
    offset = collectives.rank() * len(logits)
    own = logits[torch.arange(len(logits), device=logits.device), offset + torch.arange(
        len(logits), device=logits.device)]
    return own - torch.logsumexp(logits, dim=1)


def _mocov3(module: nn.Module, outputs: List[Dict[str, Any]], record: StepRecord,
            tau: float) -> Tensor:
    # q of view j against the momentum keys of the other view from every rank; the positive is
    # the same image.
    keys = [F.normalize(out["k"], dim=1) for out in _momentum(module, record)]
    log_probs = []
    for q, key in ((outputs[0]["q"], keys[1]), (outputs[1]["q"], keys[0])):
        logits = F.normalize(q, dim=1) @ collectives.gather(key.detach()).T / tau
        log_probs.append(_diagonal_log_probs(logits))
    return torch.cat(log_probs)


def _nnclr(module: nn.Module, outputs: List[Dict[str, Any]], record: StepRecord,
           tau: float) -> Tensor:
    # The positive of the prediction p of one view is the support-set neighbour of the other
    # view's embedding, found from the unweighted embeddings (a constant, as in NNCLR's step);
    # the predictions of every rank are the candidates.
    neighbours = record.cached("nnclr_neighbours", lambda: _nnclr_neighbours(module, record))
    log_probs = []
    for nn_other, out in ((neighbours[0], outputs[1]), (neighbours[1], outputs[0])):
        p = collectives.gather(F.normalize(out["p"], dim=-1))
        log_probs.append(_diagonal_log_probs(F.normalize(nn_other, dim=-1) @ p.T / tau))
    return torch.cat(log_probs)


@torch.no_grad()
def _nnclr_neighbours(module: nn.Module, record: StepRecord) -> List[Tensor]:
    """NNCLR's support-set neighbours of the plain (unweighted) embeddings of the two views."""
    plain = method_outputs(module, record, [f.detach() for f in record.feats])
    return [module.find_nn(out["z"])[1] for out in plain[:2]]


ADAPTERS: Dict[str, MethodAdapter] = {}


def register_adapter(adapter: MethodAdapter) -> MethodAdapter:
    """Add an adapter to the table; overwriting an existing name warns (as timm's registry)."""
    if adapter.name in ADAPTERS and ADAPTERS[adapter.name] != adapter:
        warnings.warn(f"Overwriting the ICL-MSR adapter of method {adapter.name!r}.")
    ADAPTERS[adapter.name] = adapter
    return adapter


for _adapter in (
    MethodAdapter("simclr", True, "temperature", _simclr),
    MethodAdapter("supcon", True, "temperature", _supcon),
    MethodAdapter("mocov2plus", True, "temperature", _mocov2plus),
    MethodAdapter("mocov3", True, "temperature", _mocov3),
    MethodAdapter("nnclr", True, "temperature", _nnclr),
    # Temperature softmaxes between distributions, not one positive against negatives: the
    # backdoor mixture of a positive's probability is undefined, so they use the mean reading.
    MethodAdapter("ressl", False, "temperature_q"),
    MethodAdapter("swav", False, "temperature"),
    MethodAdapter("deepclusterv2", False, "temperature"),
    MethodAdapter("dino", False, None),
    MethodAdapter("all4one", False, "temperature"),
    MethodAdapter("barlow_twins"),
    MethodAdapter("byol"),
    MethodAdapter("nnbyol"),
    MethodAdapter("nnsiam"),
    MethodAdapter("simsiam"),
    MethodAdapter("vibcreg"),
    MethodAdapter("vicreg"),
    MethodAdapter("wmse"),
):
    register_adapter(_adapter)

#: Methods of METHODS that get no variant, with the reason (printed when someone asks for one).
EXCLUDED: Dict[str, str] = {
    "base": "the shared base class of solo's methods has no SSL loss",
    "linear": "linear evaluation has no SSL loss",
    "mae": ("MAE reconstructs masked pixels of a single view: there is no positive pair whose "
            "shared background the backdoor adjustment removes, and its loss reads patch tokens "
            "through a decoder, not the pooled channels a_t weights (ICLMSR.md section 2)"),
}


def derive_adapter(name: str, method_cls: type) -> Tuple[Optional[MethodAdapter], str]:
    """An adapter for a method missing from the table, or None and the reason it cannot be."""
    from solo.methods.base import BaseMethod, BaseMomentumMethod

    if not isinstance(method_cls, type) or not issubclass(method_cls, BaseMethod):
        return None, "not a subclass of solo's BaseMethod"
    if method_cls in (BaseMethod, BaseMomentumMethod) or "training_step" not in vars(method_cls):
        return None, "defines no training_step of its own (no SSL loss to replay)"
    return MethodAdapter(name, derived=True), "derived: mean reading through the replayed step"


def adapter_for(name: str, method_cls: type) -> Tuple[Optional[MethodAdapter], str]:
    """The adapter of ``name`` (table, else derived), or None and the reason it has none."""
    if name in EXCLUDED:
        return None, EXCLUDED[name]
    if name in ADAPTERS:
        return ADAPTERS[name], "in the table"
    return derive_adapter(name, method_cls)
