"""Stage 2 of ICL-MSR: the meta step that trains f_msr (ICLMSR.md section 4).

Notation. theta = (theta_f, theta_h): the parameters of the encoder f and of the head side f_ph
(projector, predictor, ...). A = A_s(phi) = f_msr(X; phi). L_to(theta, A) = L_ct(theta) +
lambda * L_msr(theta, A). The paper's meta step [paper]:

    theta' = theta - alpha * grad_theta L_to(theta; A)                                    (1)
    phi    <- argmin_phi  M(phi) = L_ct(theta') + gamma * L_uni(A)                         (2)

A reaches L_ct(theta') only through grad_theta L_to, so the meta-gradient is second order. With
v = grad_{theta'} L_ct(theta') (a constant: the chain rule evaluated at theta'),

    dM/dA = -alpha * lambda * d/dA [ v . grad_theta L_msr(theta, A) ] + gamma * dL_uni/dA,     (3)

and dM/dphi follows by one backward through f_msr. Detaching grad_theta L_to in (1), a tempting
first-order shortcut, leaves L_ct(theta') independent of A: f_msr would get no signal from L_ct at
all, so that shortcut is not offered.

Structure used by the default ``exact_impl: jvp``. A enters only after f: L_msr(theta, A) =
H(theta_h, Z(theta_f), A) with Z = f(views; theta_f). So

    v . grad_theta L_msr = d/de H(theta_h + e v_h, Z + e J_f v_f, A) at e = 0,

where J_f v_f, the Jacobian-vector product of the encoder, does not depend on A. It is computed
exactly with one forward-mode pass (``torch.func.jvp`` over ``functional_call``); only the head,
the cheap part, is differentiated twice. ``exact_impl: double_backward`` is the literal (1)-(2)
with ``create_graph=True`` through the whole model, kept as the reference.

``meta_grad: finite_difference`` (DARTS-style) replaces the derivative in (3) by central
differences of grad_A L_to at theta +- eps v, eps = fd_epsilon / ||v||. grad_A needs no backward
through f (A enters after it), so each side costs one encoder forward without autograd.

Invariants of the virtual step: parameters are never written (theta' and theta +- eps v are new
tensors), the main optimizer is never read or written, autograd is asked for gradients with
``torch.autograd.grad`` so the ``.grad`` of f and f_ph stay as they were, and BatchNorm layers in
training mode use batch statistics without updating running statistics (``frozen_batch_norm``);
every functional forward also runs on copies of the buffers. Only f_msr's ``.grad`` changes (it
accumulates).

Departures and decisions:

* Paper says the virtual step is theta - alpha grad L_to; the real optimizer may use momentum,
  weight decay or LARS. We take the plain gradient step of (1) and leave the optimizer alone,
  because (1) is what the paper writes and it keeps the optimizer's state untouched.
* The paper leaves open whether grad_theta L_to is recomputed. We reuse the stage-1 gradient
  when the caller passes it (same batch, same A, same parameters: call ``meta_step`` before the
  optimizer steps); the result is identical and saves one forward and backward of the model.
* ``meta_params: head`` [decision, cheaper, less faithful]: theta = theta_h only; f is then a
  constant (v_f = 0) and runs once without autograd.
* Parameters of f or of the head that do not require grad are constants of the virtual step;
  modules the head-side callable uses outside ``head`` (momentum branches) are constants too.

Distributed training [decision, ICLMSR.md section 4]: the core takes whatever the head-side
callable gives. Which negatives the meta objective sees (local ones, or ones gathered from other
ranks with a twice-differentiable gather) is decided by the caller that builds ``head_loss``; f_msr's
gradients left in ``.grad`` are averaged across ranks by the caller like any other gradient.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from .losses import HeadLoss, uniformity_loss
from .options import ICLMSROptions

__all__ = [
    "MetaStepResult",
    "meta_step",
    "total_loss",
    "collect_grads",
    "resolve_alpha",
    "frozen_batch_norm",
]

ParamDict = Dict[str, Tensor]


@dataclass
class MetaStepResult:
    """What one meta step measured (detached tensors: no device synchronisation is forced).

    Attributes:
        meta_loss: M = L_ct(theta') + gamma * L_uni(A).
        ct_virtual: L_ct(theta'), the plain loss after the virtual step.
        uni: L_uni(A).
        grad_norm: L2 norm of the meta-gradient added to f_msr's ``.grad`` by this call.
    """

    meta_loss: Tensor
    ct_virtual: Tensor
    uni: Tensor
    grad_norm: Tensor


def total_loss(features: Sequence[Tensor], weights: Optional[Tensor], head_loss: HeadLoss,
               lambda_msr: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Stage 1: L_to = L_ct + lambda * L_msr with A_s as an input (detached: f_msr is not
    updated by L_to [paper]).

    Args:
        features: the encoder's output Z for each view.
        weights: A_s (B, n, c) from ``MetaSemanticRegularizer``, or ``None`` (L_to = L_ct).
        head_loss: the head side, see ``meta_step``.
        lambda_msr: lambda.

    Returns:
        (L_to, L_ct, L_msr).
    """
    l_ct, l_msr = head_loss(features, None if weights is None else weights.detach())
    return l_ct + lambda_msr * l_msr, l_ct, l_msr


def collect_grads(encoder: nn.Module, head: nn.Module, copy: bool = True
                  ) -> Dict[str, Optional[Tensor]]:
    """The current ``.grad`` of f and f_ph, keyed ``encoder.<name>`` / ``head.<name>``.

    Call it after the stage-1 backward of L_to, then pass the result as
    ``meta_step(..., stage1_grads=...)`` to save recomputing grad_theta L_to.

    Args:
        encoder, head: the modules given to ``meta_step``.
        copy: clone the gradients. ``False`` saves one parameter-sized copy of memory and is safe
            when ``meta_step`` runs before anything changes ``.grad`` (the optimizer step,
            gradient clipping, ``zero_grad``).
    """
    grads: Dict[str, Optional[Tensor]] = {}
    for prefix, module in (("encoder.", encoder), ("head.", head)):
        for name, p in module.named_parameters():
            if p.grad is None:
                grads[prefix + name] = None
            else:
                grads[prefix + name] = p.grad.detach().clone() if copy else p.grad.detach()
    return grads


def resolve_alpha(options: ICLMSROptions, learning_rate: float) -> float:
    """alpha of the virtual step: ``options.alpha``, else the current learning rate of f."""
    return float(learning_rate if options.alpha is None else options.alpha)


@contextlib.contextmanager
def frozen_batch_norm(*modules: nn.Module) -> Iterator[None]:
    """BatchNorm layers in training mode use batch statistics and leave running statistics and
    ``num_batches_tracked`` alone (``track_running_stats`` is switched off for the duration)."""
    changed: List[nn.Module] = []
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
                m.track_running_stats = False
                changed.append(m)
    try:
        yield
    finally:
        for m in changed:
            m.track_running_stats = True


class _HeadCall(nn.Module):
    """Holds ``head`` so that ``functional_call`` can substitute its parameters while the
    head-side callable (which closes over ``head``'s modules) runs."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, head_loss: HeadLoss, features: Sequence[Tensor],
                weights: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        return head_loss(features, weights)


def meta_step(encoder: nn.Module, head: nn.Module, regularizer: nn.Module, views: Sequence[Tensor],
              raw: Tensor, head_loss: HeadLoss, options: ICLMSROptions, alpha: float,
              stage1_grads: Optional[Mapping[str, Optional[Tensor]]] = None,
              weights: Optional[Tensor] = None) -> MetaStepResult:
    """One meta step: add dM/dphi of M = L_ct(theta') + gamma * L_uni(A) to f_msr's ``.grad``.

    Args:
        encoder: f, mapping one view (B, 3, H, W) to its feature output Z: a map (B, c, h, w),
            tokens (B, L, c) or pooled (B, c).
        head: the module whose parameters are theta_h (e.g. an ``nn.ModuleDict`` of projector
            and predictor). ``head_loss`` must reach theta_h only through this module.
        regularizer: f_msr (e.g. ``MetaSemanticRegularizer``).
        views: the augmented views of the batch, one tensor per view.
        raw: the raw, un-augmented images (B, 3, H, W).
        head_loss: ``head_loss(features, weights) -> (L_ct, L_msr)``; ``features`` has one tensor
            per view, ``weights`` is A_s (B, n, c) or ``None`` (then L_msr is 0 and L_ct is the
            method's plain loss). It may close over constants (momentum-branch targets, queues read
            without side effects).
        options: ``meta_grad``, ``exact_impl``, ``meta_params``, ``lambda_msr``, ``gamma_uni``,
            ``uni_t`` and ``fd_epsilon`` are read; ``meta_every`` and ``schedule`` are for the loop.
        alpha: rate of the virtual step (``resolve_alpha``).
        stage1_grads: grad_theta L_to at the current parameters on this batch with the same A
            (``collect_grads``), reused instead of recomputed; keys missing from it are an error,
            ``None`` entries count as zero. Ignored by ``exact_impl: double_backward``, which needs
            the graph of that gradient.
        weights: A_s = regularizer(raw) computed by the caller with its graph (saves a second
            forward of f_msr when stage 1 already computed it); ``None`` computes it here.

    Returns:
        ``MetaStepResult``.
    """
    options.validate()
    if not (isinstance(alpha, (int, float)) and alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"meta_step: alpha={alpha!r} is invalid: expected a finite number > 0.")
    views = list(views)
    reg_params = [p for p in regularizer.parameters() if p.requires_grad]
    if not reg_params:
        raise ValueError("meta_step: the regularizer has no parameter that requires grad.")

    enc_params = {} if options.meta_params == "head" else _trainable(encoder)
    head_params = _trainable(head)
    if weights is None:
        with torch.enable_grad():
            weights = regularizer(raw)
    if not weights.requires_grad:
        raise ValueError("meta_step: weights must carry the graph of regularizer(raw); do not pass "
                         "a detached A_s.")

    fn = _Functional(encoder, head, head_loss)
    with frozen_batch_norm(encoder, head), torch.enable_grad():
        if options.meta_grad == "second_order" and options.exact_impl == "double_backward":
            ct_virtual, meta_grads = _double_backward(fn, views, options, alpha, enc_params,
                                                      head_params, weights, reg_params)
            uni = uniformity_loss(weights, options.uni_t).detach()
        else:
            ct_virtual, grad_weights = _weight_grad(fn, views, options, alpha, enc_params,
                                                    head_params, weights.detach(), stage1_grads)
            uni_graph = uniformity_loss(weights, options.uni_t)
            surrogate = (weights * grad_weights).sum() + options.gamma_uni * uni_graph
            meta_grads = torch.autograd.grad(surrogate, reg_params, allow_unused=True)
            uni = uni_graph.detach()

    sq_norm = weights.new_zeros(())
    for p, g in zip(reg_params, meta_grads):
        if g is None:
            continue
        sq_norm = sq_norm + g.detach().pow(2).sum()
        if p.grad is None:
            p.grad = g.detach().clone()
        else:
            p.grad.add_(g.detach())
    return MetaStepResult(meta_loss=ct_virtual + options.gamma_uni * uni, ct_virtual=ct_virtual,
                          uni=uni, grad_norm=sq_norm.sqrt())


# --------------------------------------------------------------------------------------------
# The A-gradient of L_ct(theta'(A)) (jvp and finite-difference paths)
# --------------------------------------------------------------------------------------------

def _weight_grad(fn: "_Functional", views: List[Tensor], options: ICLMSROptions, alpha: float,
                 enc_params: ParamDict, head_params: ParamDict, weights: Tensor,
                 stage1_grads: Optional[Mapping[str, Optional[Tensor]]]) -> Tuple[Tensor, Tensor]:
    """Returns (L_ct(theta'), dL_ct(theta')/dA) with A = ``weights`` (detached), equation (3)
    without the L_uni term."""
    theta = {**_prefixed("encoder.", enc_params), **_prefixed("head.", head_params)}
    fixed_features = None
    if not enc_params:  # meta_params: head, or an encoder without trainable parameters
        with torch.no_grad():
            fixed_features = [fn.encode({}, x) for x in views]

    # grad_theta L_to(theta, A): reused from stage 1 or computed here.
    if stage1_grads is not None:
        missing = [k for k in theta if k not in stage1_grads]
        if missing:
            raise ValueError(f"meta_step: stage1_grads lacks {len(missing)} parameter(s), e.g. "
                             f"{missing[0]!r}; build it with collect_grads(encoder, head).")
        g = {k: _zero_if_none(stage1_grads[k], p) for k, p in theta.items()}
    else:
        features = fixed_features or [fn.encode({}, x) for x in views]
        l_ct, l_msr = fn.head({}, features, weights)
        g = _grad_dict(l_ct + options.lambda_msr * l_msr, theta)

    # v = grad L_ct at theta' = theta - alpha g (equation (1)); L_ct is the plain loss.
    virtual = {k: (p.detach() - alpha * g[k]).requires_grad_() for k, p in theta.items()}
    features = fixed_features
    if features is None:
        enc_virtual = _unprefixed("encoder.", virtual)
        features = [fn.encode(enc_virtual, x) for x in views]
    ct_virtual, _ = fn.head(_unprefixed("head.", virtual), features, None)
    v = _grad_dict(ct_virtual, virtual)
    ct_virtual = ct_virtual.detach()
    del g, virtual, features  # parameter-sized tensors no longer needed: lower the peak memory
    if options.lambda_msr == 0:
        return ct_virtual, torch.zeros_like(weights)

    if options.meta_grad == "finite_difference":
        d_weights = _fd_directional_weight_grad(fn, views, options, theta, v, weights,
                                                fixed_features)
    else:
        d_weights = _jvp_directional_weight_grad(fn, views, options, enc_params, head_params, v,
                                                 weights, fixed_features)
    return ct_virtual, -alpha * d_weights


def _jvp_directional_weight_grad(fn: "_Functional", views: List[Tensor], options: ICLMSROptions,
                                 enc_params: ParamDict, head_params: ParamDict, v: ParamDict,
                                 weights: Tensor, fixed_features: Optional[List[Tensor]]) -> Tensor:
    """d/dA [ v . grad_theta (lambda L_msr)(theta, A) ], exactly.

    v . grad_theta L_msr = grad_{theta_h} H . v_h + grad_Z H . (J_f v_f): the encoder enters only
    through Z and J_f v_f (one forward-mode pass, independent of A); the head is differentiated
    twice (create_graph) to get the A-derivative of that inner product.
    """
    if fixed_features is None:
        primals = {k: p.detach() for k, p in enc_params.items()}
        tangents = {k: v["encoder." + k] for k in enc_params}

        def encode_all(params: ParamDict) -> Tuple[Tensor, ...]:
            return tuple(fn.encode(params, x) for x in views)

        features, d_features = jvp(encode_all, (primals,), (tangents,))
        features = [z.detach().requires_grad_() for z in features]
        d_features = list(d_features)
    else:
        features, d_features = fixed_features, []

    leaf_head = {k: p.detach().requires_grad_() for k, p in head_params.items()}
    weights = weights.detach().requires_grad_()
    _, l_msr = fn.head(leaf_head, features, weights)
    inputs = list(leaf_head.values()) + (features if d_features else [])
    directions = [v["head." + k] for k in leaf_head] + d_features
    if not inputs or not l_msr.requires_grad:
        return torch.zeros_like(weights)
    grads = torch.autograd.grad(options.lambda_msr * l_msr, inputs, create_graph=True,
                                allow_unused=True)
    inner = sum((gr * d).sum() for gr, d in zip(grads, directions) if gr is not None)
    if not isinstance(inner, Tensor) or not inner.requires_grad:
        return torch.zeros_like(weights)
    (d_weights,) = torch.autograd.grad(inner, weights, allow_unused=True)
    return torch.zeros_like(weights) if d_weights is None else d_weights


def _fd_directional_weight_grad(fn: "_Functional", views: List[Tensor], options: ICLMSROptions,
                                theta: ParamDict, v: ParamDict, weights: Tensor,
                                fixed_features: Optional[List[Tensor]]) -> Tensor:
    """(grad_A L_to(theta + eps v, A) - grad_A L_to(theta - eps v, A)) / (2 eps),
    eps = fd_epsilon / ||v|| (ICLMSR.md section 4). grad_A L_to = lambda grad_A L_msr, and f is
    run without autograd since A enters after it."""
    if not v:
        return torch.zeros_like(weights)
    v_norm = torch.sqrt(sum(t.pow(2).sum() for t in v.values()))
    # A tensor, not a float: no device synchronisation. v = 0 gives theta +- 0 and a zero result.
    eps = options.fd_epsilon / v_norm.clamp_min(torch.finfo(v_norm.dtype).tiny)
    sides = []
    for sign in (1.0, -1.0):
        shifted = {k: p.detach() + (sign * eps) * v[k] for k, p in theta.items()}
        if fixed_features is None:
            with torch.no_grad():
                enc_shifted = _unprefixed("encoder.", shifted)
                features = [fn.encode(enc_shifted, x) for x in views]
        else:
            features = fixed_features
        leaf_weights = weights.detach().requires_grad_()
        _, l_msr = fn.head(_unprefixed("head.", shifted), features, leaf_weights)
        del shifted
        if not l_msr.requires_grad:
            return torch.zeros_like(weights)
        (grad_a,) = torch.autograd.grad(options.lambda_msr * l_msr, leaf_weights, allow_unused=True)
        sides.append(torch.zeros_like(weights) if grad_a is None else grad_a)
    return (sides[0] - sides[1]) / (2.0 * eps)


# --------------------------------------------------------------------------------------------
# The literal second-order reference (exact_impl: double_backward)
# --------------------------------------------------------------------------------------------

def _double_backward(fn: "_Functional", views: List[Tensor], options: ICLMSROptions, alpha: float,
                     enc_params: ParamDict, head_params: ParamDict, weights: Tensor,
                     reg_params: List[Tensor]) -> Tuple[Tensor, Tuple[Optional[Tensor], ...]]:
    """Equations (1)-(2) as written: grad_theta L_to with ``create_graph=True`` through the whole
    model, theta' with its graph, L_ct(theta') by a functional forward, backward into phi."""
    theta = {**_prefixed("encoder.", enc_params), **_prefixed("head.", head_params)}
    with torch.set_grad_enabled(bool(enc_params)):
        features = [fn.encode({}, x) for x in views]
    l_ct, l_msr = fn.head({}, features, weights)
    l_to = l_ct + options.lambda_msr * l_msr
    names = list(theta)
    grads = torch.autograd.grad(l_to, [theta[k] for k in names], create_graph=True,
                                allow_unused=True)
    virtual = {k: theta[k] if gr is None else theta[k] - alpha * gr for k, gr in zip(names, grads)}
    if enc_params:
        enc_virtual = _unprefixed("encoder.", virtual)
        features = [fn.encode(enc_virtual, x) for x in views]
    ct_virtual, _ = fn.head(_unprefixed("head.", virtual), features, None)
    meta = ct_virtual + options.gamma_uni * uniformity_loss(weights, options.uni_t)
    meta_grads = torch.autograd.grad(meta, reg_params, allow_unused=True)
    return ct_virtual.detach(), meta_grads


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def _trainable(module: nn.Module) -> ParamDict:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def _prefixed(prefix: str, params: Mapping[str, Tensor]) -> ParamDict:
    return {prefix + k: p for k, p in params.items()}


def _unprefixed(prefix: str, params: Mapping[str, Tensor]) -> ParamDict:
    return {k[len(prefix):]: p for k, p in params.items() if k.startswith(prefix)}


def _buffer_copies(module: nn.Module) -> ParamDict:
    return {name: b.clone() for name, b in module.named_buffers()}


class _Functional:
    """Functional forwards of f and of the head side on one set of buffer copies (made once per
    meta step, so the module's own buffers are never written by a virtual forward)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, head_loss: HeadLoss) -> None:
        self.encoder, self.head_loss = encoder, head_loss
        self.wrapper = _HeadCall(head)
        self.enc_buffers = _buffer_copies(encoder)
        self.head_buffers = _prefixed("head.", _buffer_copies(head))

    def encode(self, params: ParamDict, x: Tensor) -> Tensor:
        """f(x) with ``params`` substituted (the module's own parameters for the rest)."""
        return functional_call(self.encoder, {**params, **self.enc_buffers}, (x,))

    def head(self, params: ParamDict, features: Sequence[Tensor],
             weights: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """head_loss(features, weights) with theta_h replaced by ``params``."""
        substitute = {**_prefixed("head.", params), **self.head_buffers}
        return functional_call(self.wrapper, substitute, (self.head_loss, features, weights))


def _grad_dict(loss: Tensor, params: ParamDict) -> ParamDict:
    """grad of ``loss`` w.r.t. every entry of ``params``; zeros where unused."""
    names = list(params)
    if not names:
        return {}
    if not loss.requires_grad:
        return {k: torch.zeros_like(params[k]) for k in names}
    grads = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
    return {k: _zero_if_none(gr, params[k]) for k, gr in zip(names, grads)}


def _zero_if_none(grad: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad.detach()
