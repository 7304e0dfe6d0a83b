"""The virtual step theta' = U(theta, g) of the meta step (ICLMSR.md sections 4 and 7).

The paper writes the virtual step as plain SGD, theta' = theta - alpha * grad_theta L_to
(``sgd_step``, the default, ``iclmsr.virtual_step: sgd``). solo-learn's recipes train with LARS
and momentum 0.9, whose real update is several times larger than alpha * grad and points
elsewhere, so L_ct(theta') is then read where training does not go. ``optimizer_step`` is the
update the real optimizer would take from the gradient g (its momentum buffer, weight decay,
LARS trust ratio or Adam moments), written with torch operations so that autograd can
differentiate it with respect to g; the optimizer and its state are only read
(``iclmsr.virtual_step: optimizer``; MetaMask, by the same authors, copies momentum and weight
decay into its virtual step).

A virtual step maps two dicts of tensors keyed alike (parameters and their gradients) to the
virtual parameters; it must be differentiable in the gradients.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Optional

import torch
from torch import Tensor

__all__ = ["VirtualStep", "sgd_step", "optimizer_step"]

ParamDict = Dict[str, Tensor]
#: virtual_step(params, grads) -> virtual params, differentiable in ``grads``.
VirtualStep = Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], ParamDict]

_LARS_KEYS = ("eta", "clip_lr", "exclude_bias_n_norm")


def sgd_step(alpha: float) -> VirtualStep:
    """theta' = theta - alpha * g [paper, equation (1) of ``meta_step``]."""
    if not (isinstance(alpha, (int, float)) and alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"meta_step: alpha={alpha!r} is invalid: expected a finite number > 0.")

    def step(params: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> ParamDict:
        return {k: p - alpha * grads[k] for k, p in params.items()}

    step.alpha = alpha  # type: ignore[attr-defined]
    return step


def optimizer_step(optimizer: torch.optim.Optimizer, params: Mapping[str, Tensor],
                   lr: Optional[float] = None) -> VirtualStep:
    """The update ``optimizer.step()`` would apply, as a function of the gradients.

    Supported: ``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay), LARS parameter
    groups (groups with ``eta``, ``clip_lr`` and ``exclude_bias_n_norm``, as solo-learn's LARS:
    trust ratio eta ||p|| / (||g|| + wd ||p|| + eps), optionally clipped by lr, then SGD with
    momentum), ``torch.optim.Adam`` and ``AdamW`` (without amsgrad).

    Args:
        optimizer: the real optimizer; its param groups and state are read, never written.
        params: the parameters the virtual step moves, by the names the meta step uses; each
            must belong to one of the optimizer's groups.
        lr: replaces every group's learning rate (``iclmsr.alpha``); ``None`` keeps them.

    Returns:
        ``virtual_step(params, grads) -> params'`` for dicts keyed like ``params``.

    Raises:
        ValueError: an optimizer it cannot mirror, or a parameter outside its groups.
    """
    kind = _kind(optimizer)
    where: Dict[int, Dict[str, Any]] = {id(p): group for group in optimizer.param_groups
                                        for p in group["params"]}
    groups: Dict[str, Dict[str, Any]] = {}
    for name, p in params.items():
        if id(p) not in where:
            raise ValueError(f"iclmsr.virtual_step=optimizer: parameter {name!r} is not in the "
                             f"optimizer's param groups; use iclmsr.virtual_step=sgd.")
        groups[name] = where[id(p)]
    states = {name: optimizer.state.get(p, {}) for name, p in params.items()}

    def step(theta: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> ParamDict:
        out: ParamDict = {}
        for name, p in theta.items():
            group = groups[name]
            rate = group["lr"] if lr is None else lr
            update = _UPDATES[kind](p, grads[name], group, states[name], rate)
            out[name] = p - rate * update
        return out

    return step


def _kind(optimizer: torch.optim.Optimizer) -> str:
    groups = optimizer.param_groups
    if all(all(k in g for k in _LARS_KEYS) for g in groups):
        return "lars"
    if isinstance(optimizer, torch.optim.AdamW):
        kind = "adamw"
    elif isinstance(optimizer, torch.optim.Adam):
        kind = "adam"
    elif isinstance(optimizer, torch.optim.SGD):
        kind = "sgd"
    else:
        raise ValueError(f"iclmsr.virtual_step=optimizer cannot mirror {type(optimizer).__name__}: "
                         f"SGD, LARS, Adam and AdamW are supported; use iclmsr.virtual_step=sgd.")
    if any(g.get("amsgrad") or g.get("maximize") for g in groups):
        raise ValueError(f"iclmsr.virtual_step=optimizer cannot mirror {type(optimizer).__name__} "
                         f"with amsgrad or maximize; use iclmsr.virtual_step=sgd.")
    return kind


def _momentum(d: Tensor, group: Mapping[str, Any], state: Mapping[str, Any]) -> Tensor:
    """The SGD momentum part (torch's and solo's LARS's convention): the direction to scale by lr."""
    momentum = group.get("momentum", 0.0)
    if momentum == 0:
        return d
    buf = state.get("momentum_buffer")
    buf = d if buf is None else momentum * buf + (1.0 - group.get("dampening", 0.0)) * d
    return d + momentum * buf if group.get("nesterov", False) else buf


def _sgd(p: Tensor, g: Tensor, group: Mapping[str, Any], state: Mapping[str, Any],
         lr: float) -> Tensor:
    wd = group.get("weight_decay", 0.0)
    return _momentum(g + wd * p if wd else g, group, state)


def _lars(p: Tensor, g: Tensor, group: Mapping[str, Any], state: Mapping[str, Any],
          lr: float) -> Tensor:
    # solo-learn's LARS: bias and norm parameters (1-d) may be excluded from the scaling, and
    # then also get no weight decay; so do parameters or gradients of norm 0.
    d = g
    if p.ndim != 1 or not group["exclude_bias_n_norm"]:
        p_norm, g_norm = p.detach().norm(), g.norm()
        if p_norm != 0 and g_norm.detach() != 0:
            wd = group["weight_decay"]
            trust = group["eta"] * p_norm / (g_norm + p_norm * wd + group["eps"])
            if group["clip_lr"]:
                trust = torch.clamp(trust / lr, max=1.0)
            d = (g + wd * p) * trust
    return _momentum(d, group, state)


def _adam(p: Tensor, g: Tensor, group: Mapping[str, Any], state: Mapping[str, Any], lr: float,
          decoupled: bool = False) -> Tensor:
    beta1, beta2 = group["betas"]
    wd = group.get("weight_decay", 0.0)
    if wd and not decoupled:
        g = g + wd * p
    step = int(state["step"]) + 1 if "step" in state else 1
    m = (1 - beta1) * g if "exp_avg" not in state else beta1 * state["exp_avg"] + (1 - beta1) * g
    v = ((1 - beta2) * g * g if "exp_avg_sq" not in state
         else beta2 * state["exp_avg_sq"] + (1 - beta2) * g * g)
    m_hat, v_hat = m / (1 - beta1 ** step), v / (1 - beta2 ** step)
    # + tiny: d sqrt(v)/dg is 0/0 where v and g are 0; the value is unchanged in float32
    update = m_hat / ((v_hat + 1e-30).sqrt() + group["eps"])
    return update + wd * p if decoupled and wd else update


_UPDATES = {
    "sgd": _sgd,
    "lars": _lars,
    "adam": _adam,
    "adamw": lambda p, g, group, state, lr: _adam(p, g, group, state, lr, decoupled=True),
}
