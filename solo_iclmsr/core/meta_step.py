"""Stage 2 of ICL-MSR: the meta step that trains f_msr (ICLMSR.md section 4).

Notation. theta = (theta_f, theta_h): the parameters of the encoder f and of the head side f_ph
(projector, predictor, ...). A = A_s(phi) = f_msr(X; phi). L_to(theta, A) = L_ct(theta) +
lambda * L_msr(theta, A), g(A) = grad_theta L_to(theta, A). The paper's meta step [paper]:

    theta' = U(theta, g(A)),   U(theta, g) = theta - alpha * g                              (1)
    phi    <- argmin_phi  M(phi) = L_ct(theta') + gamma * L_uni(A)                         (2)

A reaches L_ct(theta') only through g, so the meta-gradient is second order. With
v = grad_{theta'} L_ct(theta') (a constant: the chain rule evaluated at theta') and
w = (dU/dg)^T v (= -alpha v for the paper's SGD step),

    dM/dA = lambda * d/dA [ w . grad_theta L_msr(theta, A) ] + gamma * dL_uni/dA,           (3)

and dM/dphi follows by one backward through f_msr. Detaching g in (1), a tempting first-order
shortcut, leaves L_ct(theta') independent of A: f_msr would get no signal from L_ct at all, so
that shortcut is not offered.

``iclmsr.virtual_step``: U is the paper's SGD step (``sgd``) or the update the real optimizer
would take (``optimizer``: momentum, weight decay, LARS trust ratio; ``virtual_step.py``); w is
its vector-Jacobian product, elementwise and cheap.

``iclmsr.meta_grad`` (how (3) is evaluated):

* ``second_order`` (exact). ``exact_impl: jvp`` (default) uses that A enters only after f:
  L_msr(theta, A) = H(theta_h, Z(theta_f), A), so

      w . grad_theta L_msr = d/de H(theta_h + e w_h, Z + e J_f w_f, A) at e = 0,

  where J_f w_f, the Jacobian-vector product of the encoder, does not depend on A: one
  forward-mode pass (``torch.func.jvp`` over ``functional_call``); only the head, the cheap part,
  is differentiated twice. ``exact_impl: double_backward`` is the literal (1)-(2) with
  ``create_graph=True`` through the whole model, kept as the reference. Cost: the virtual
  forward and backward for v, and the forward-mode pass: two model passes beyond stage 1.
  During the forward-mode pass, BatchNorm with batch statistics (``F.batch_norm`` with
  ``training=True`` and no running statistics, as ``frozen_batch_norm`` makes it) uses a leaner
  forward-mode rule than torch's generic one: the same derivative (equal up to float rounding)
  in less than half the time (``_BatchStatsNorm``).
* ``finite_difference`` (DARTS-style): the derivative in (3) by central differences of
  grad_A L_msr at theta +- eps w; grad_A needs no backward through f (A enters after it), so each
  side costs one encoder forward without autograd. eps is chosen so that the perturbation
  ||eps w|| is ``fd_epsilon`` times ||theta||: a relative step (see the ``fd_epsilon`` note below).
* ``linearized`` (first order in the step): L_ct(theta') ~ L_ct(theta) + v0 . (theta' - theta)
  with v0 = grad L_ct(theta), so v is read at theta instead of theta': no virtual forward and
  backward. v0 is the gradient of the plain loss on the stage-1 graph (``plain_grads``, else one
  forward and backward here); the directional derivative is taken by finite differences as
  above. Its error to the exact meta-gradient vanishes as the step goes to 0.

``fd_epsilon`` [decision]: the finite differences cross ReLU kinks (an error growing with eps) and
lose float32 digits (an error growing as 1/eps). DARTS's eps = 0.01 / ||v|| is an absolute step;
here the step is relative to ||theta||, the scale of the parameters, so one value suits small and
large models. BENCHMARKS.md gives the measured agreement with the exact meta-gradient.

Invariants of the virtual step: parameters are never written (theta' and theta +- eps w are new
tensors), the main optimizer is only read (``optimizer`` virtual step), autograd is asked for
gradients with ``torch.autograd.grad`` so the ``.grad`` of f and f_ph stay as they were, and
BatchNorm layers in training mode use batch statistics without updating running statistics
(``frozen_batch_norm``); every functional forward also runs on copies of the buffers. Only f_msr's
``.grad`` changes (it accumulates).

Departures and decisions:

* The paper leaves open whether grad_theta L_to is recomputed. We reuse the stage-1 gradient
  when the caller passes it (same batch, same A, same parameters: call ``meta_step`` before the
  optimizer steps); the result is identical and saves one forward and backward of the model.
* ``meta_params: head`` [decision, cheaper, less faithful]: theta = theta_h only; f is then a
  constant (w_f = 0) and runs once without autograd.
* Parameters of f or of the head that do not require grad are constants of the virtual step;
  modules the head-side callable uses outside ``head`` (momentum branches) are constants too.

* ``meta_precision`` [decision, ICLMSR.md section 9]: ``float32`` runs the meta step outside
  autocast, ``autocast`` runs the passes of the L_ct(theta') part under the training step's
  autocast dtype, with a loss scale and a rescaled tangent in float16 (``meta_precision.py``);
  f_msr, L_uni and finite differences stay in float32.

Distributed training [decision, ICLMSR.md section 4]: the meta objective is the global one when
the caller gives ``average_grads`` (the gradients of theta this function takes itself are
averaged over the processes, as DDP averages the model's) and a ``head_loss`` that gathers with a
collective that can be differentiated twice; f_msr's gradients left in ``.grad`` are averaged
over the processes by the caller, like any other gradient.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import (Callable, Collection, Dict, Iterator, List, Mapping, Optional, Sequence,
                    Tuple)

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jvp
from torch.overrides import TorchFunctionMode

from .losses import HeadLoss, uniformity_loss
from .meta_precision import MetaPrecision
from .options import ICLMSROptions
from .virtual_step import VirtualStep, sgd_step

__all__ = [
    "MetaStepResult",
    "PlainGrads",
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
        meta_loss: M = L_ct(theta') + gamma * L_uni(A) (``meta_grad: none``: gamma * L_uni).
        ct_virtual: L_ct(theta'), the plain loss after the virtual step (``linearized``: its
            first-order estimate L_ct(theta) + v0 . (theta' - theta); ``none``: NaN).
        uni: L_uni(A).
        grad_norm: L2 norm of dM/dphi, the meta-gradient added to f_msr's ``.grad``.
        ct_grad_norm: L2 norm of its L_ct(theta') part, dL_ct(theta')/dphi.
        uni_grad_norm: L2 norm of its L_uni part, gamma * dL_uni/dphi.
        first_order_grad_norm: with ``diagnose``: norm of the first-order (alignment) term of
            the L_ct(theta') part, d/dphi of -<v0, (dU/dg) g(A)> with v0 = grad L_ct(theta)
            (for the SGD step: alpha lambda d/dphi <grad L_ct, grad L_msr(A)>, up to sign).
        first_order_cos: with ``diagnose``: cosine between that term and the L_ct(theta') part.
        curvature_grad_norm: with ``diagnose``: norm of the rest (L_ct(theta') part minus the
            first-order term): what the curvature of L_ct between theta and theta' adds.
    """

    meta_loss: Tensor
    ct_virtual: Tensor
    uni: Tensor
    grad_norm: Tensor
    ct_grad_norm: Tensor
    uni_grad_norm: Tensor
    first_order_grad_norm: Optional[Tensor] = None
    first_order_cos: Optional[Tensor] = None
    curvature_grad_norm: Optional[Tensor] = None


@dataclass
class PlainGrads:
    """L_ct(theta) and grad_theta L_ct(theta) on the batch: v0 of ``meta_grad: linearized``.

    Attributes:
        loss: L_ct(theta), the plain loss.
        grads: its gradient, keyed like ``collect_grads`` (``encoder.<name>`` / ``head.<name>``);
            ``None`` entries count as zero.
    """

    loss: Tensor
    grads: Mapping[str, Optional[Tensor]]


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
              raw: Optional[Tensor], head_loss: HeadLoss, options: ICLMSROptions,
              alpha: Optional[float] = None, *, virtual_step: Optional[VirtualStep] = None,
              stage1_grads: Optional[Mapping[str, Optional[Tensor]]] = None,
              plain_grads: Optional[PlainGrads] = None, weights: Optional[Tensor] = None,
              raw_features: Optional[Tensor] = None,
              encoder_params: Optional[Collection[str]] = None,
              subset_loss: Optional[Callable[[Tensor], HeadLoss]] = None,
              generator: Optional[torch.Generator] = None,
              diagnose: bool = False,
              average_grads: Optional[Callable[[Sequence[Tensor]], List[Tensor]]] = None,
              gather: Optional[Callable[[Tensor], Tensor]] = None,
              autocast_dtype: Optional[torch.dtype] = None,
              loss_scale: Optional[float] = None) -> MetaStepResult:
    """One meta step: add dM/dphi of M = L_ct(theta') + gamma * L_uni(A) to f_msr's ``.grad``.

    Args:
        encoder: f, mapping one view (B, 3, H, W) to its feature output Z: a map (B, c, h, w),
            tokens (B, L, c) or pooled (B, c). With ``iclmsr.meta_stages`` it is the tail of f
            (its last stages), and ``views`` are the activations entering it.
        head: the module whose parameters are theta_h (e.g. an ``nn.ModuleDict`` of projector
            and predictor). ``head_loss`` must reach theta_h only through this module.
        regularizer: f_msr (e.g. ``MetaSemanticRegularizer``).
        views: the inputs of ``encoder`` for the batch, one tensor per view, images in dim 0.
        raw: the raw, un-augmented images (B, 3, H, W) (f_msr's input).
        head_loss: ``head_loss(features, weights) -> (L_ct, L_msr)``; ``features`` has one tensor
            per view, ``weights`` is A_s (B, n, c) or ``None`` (then L_msr is 0 and L_ct is the
            method's plain loss). It may close over constants (momentum-branch targets, queues read
            without side effects).
        options: ``meta_grad``, ``exact_impl``, ``meta_params``, ``meta_batch``, ``lambda_msr``,
            ``gamma_uni``, ``uni_t``, ``uni_over``, ``fd_epsilon`` and ``virtual_step`` are
            read; ``meta_every``, ``schedule`` and ``strata`` are for the caller.
        alpha: rate of the paper's SGD virtual step (``resolve_alpha``); ignored when
            ``virtual_step`` is given.
        virtual_step: U of equation (1), e.g. ``optimizer_step(optimizer, params)``; required by
            ``options.virtual_step == "optimizer"``; default ``sgd_step(alpha)``.
        stage1_grads: grad_theta L_to at the current parameters on this batch with the same A
            (``collect_grads``), reused instead of recomputed; keys missing from it are an error,
            ``None`` entries count as zero. Ignored by ``exact_impl: double_backward``, which needs
            the graph of that gradient.
        plain_grads: L_ct(theta) and its gradient on this batch, for ``meta_grad: linearized``
            and ``diagnose`` (computed here when not given).
        weights: A_s = regularizer(raw) computed by the caller with its graph (saves a second
            forward of f_msr when stage 1 already computed it); ``None`` computes it here.
        raw_features: the encoder's feature map of ``raw``, for a regularizer that reads it.
        encoder_params: names (as in ``encoder.named_parameters()``) of the encoder's parameters
            the virtual step moves; ``None``: all that require grad. The others are constants.
        subset_loss: ``subset_loss(index)`` is ``head_loss`` on the images ``index`` of the batch
            only (``meta_batch``); ``None`` when ``head_loss`` depends on nothing but the
            features and weights it is given (as ``infonce_head_loss``).
        generator: draws the sub-batches of ``meta_batch``.
        diagnose: also measure the first-order (alignment) term of the L_ct(theta') part, see
            ``MetaStepResult``: one more directional derivative.
        average_grads: under data parallelism, averages per-process gradients of theta over the
            processes, as DDP averages the model's, differentiably: applied to the gradients
            this function takes itself (v at theta', and g or v0 when it computes them, with its
            graph for ``exact_impl: double_backward``); ``None`` for one process.
            ``head_loss`` must then gather what the method gathers with a collective that can
            be differentiated twice (so that the A-gradient of the directional derivative
            reaches every process's term), and f_msr's gradients are averaged by the caller.
        gather: concatenates every process's rows (L_uni over the batch: ``uni_over: batch``);
            ``None`` for one process.
        autocast_dtype: the dtype the training step autocasts to (``None``: float32). With
            ``options.meta_precision == "autocast"`` the passes of the L_ct(theta') part run
            under it (``meta_precision.py``); otherwise, and always for f_msr and L_uni, the meta
            step runs in float32 outside autocast.
        loss_scale: the run's GradScaler scale (float16): the meta step's own losses are scaled
            by it before each backward pass and their gradients unscaled.

    Returns:
        ``MetaStepResult``.
    """
    options.validate()
    if virtual_step is None:
        if options.virtual_step == "optimizer":
            raise ValueError("meta_step: iclmsr.virtual_step=optimizer needs virtual_step="
                             "optimizer_step(optimizer, params).")
        virtual_step = sgd_step(alpha)  # validates alpha
    views = list(views)
    reg_params = [p for p in regularizer.parameters() if p.requires_grad]
    if not reg_params:
        raise ValueError("meta_step: the regularizer has no parameter that requires grad.")

    enc_params = {} if options.meta_params == "head" else _trainable(encoder, encoder_params)
    head_params = _trainable(head)
    if weights is None:
        with torch.enable_grad():
            weights = regularizer(raw) if raw_features is None else regularizer(raw, raw_features)
    if not weights.requires_grad:
        raise ValueError("meta_step: weights must carry the graph of regularizer(raw); do not pass "
                         "a detached A_s.")

    precision = MetaPrecision.of(options.meta_precision, weights.device.type, autocast_dtype,
                                 loss_scale)
    fn = _Functional(encoder, head, head_loss, subset_loss, average_grads, precision)
    first_part = None
    with frozen_batch_norm(encoder, head), torch.enable_grad(), precision.autocast():
        if options.meta_grad == "none":  # an ablation: no L_ct(theta') term
            ct_virtual, ct_part = weights.new_full((), float("nan")), (None,) * len(reg_params)
        elif options.meta_grad == "second_order" and options.exact_impl == "double_backward":
            ct_virtual, ct_part = _double_backward(fn, views, options, virtual_step, enc_params,
                                                   head_params, weights, reg_params)
        else:
            batches = _SubBatches.draw(views[0].shape[0], options, generator, weights.device)
            grads = _weight_grad(fn, views, options, virtual_step, enc_params, head_params,
                                 weights.detach(), stage1_grads, plain_grads, batches, diagnose)
            ct_virtual = grads.ct_virtual
            ct_part = torch.autograd.grad((weights * grads.d_weights).sum(), reg_params,
                                          retain_graph=True, allow_unused=True)
            if grads.first_order is not None:
                first_part = torch.autograd.grad((weights * grads.first_order).sum(), reg_params,
                                                 retain_graph=True, allow_unused=True)
        ct_virtual = ct_virtual.float()
    with torch.enable_grad(), precision.full():
        uni_weights = weights if gather is None or options.uni_over != "batch" else gather(weights)
        uni_graph = uniformity_loss(uni_weights, options.uni_t, options.uni_over)
        if options.gamma_uni > 0 and uni_graph.requires_grad:
            uni_part = torch.autograd.grad(options.gamma_uni * uni_graph, reg_params,
                                           allow_unused=True)
        else:
            uni_part = (None,) * len(reg_params)

    zero = weights.new_zeros(())
    sq = {"ct": zero, "uni": zero, "all": zero}
    for p, g_ct, g_uni in zip(reg_params, ct_part, uni_part):
        parts = [g.detach() for g in (g_ct, g_uni) if g is not None]
        if not parts:
            continue
        g = parts[0] if len(parts) == 1 else parts[0] + parts[1]
        sq["all"] = sq["all"] + g.pow(2).sum()
        sq["ct"] = sq["ct"] + (zero if g_ct is None else g_ct.detach().pow(2).sum())
        sq["uni"] = sq["uni"] + (zero if g_uni is None else g_uni.detach().pow(2).sum())
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.add_(g)
    uni = uni_graph.detach()
    result = MetaStepResult(
        meta_loss=(zero if options.meta_grad == "none" else ct_virtual) + options.gamma_uni * uni,
        ct_virtual=ct_virtual, uni=uni, grad_norm=sq["all"].sqrt(), ct_grad_norm=sq["ct"].sqrt(),
        uni_grad_norm=sq["uni"].sqrt())
    if first_part is not None:
        exact, first = _flat(ct_part, reg_params), _flat(first_part, reg_params)
        result.first_order_grad_norm = first.norm()
        result.first_order_cos = F.cosine_similarity(first, exact, dim=0, eps=1e-30)
        result.curvature_grad_norm = (exact - first).norm()
    return result


def _flat(grads: Sequence[Optional[Tensor]], like: Sequence[Tensor]) -> Tensor:
    """One vector of per-parameter gradients (``None`` as zeros)."""
    return torch.cat([(torch.zeros_like(p) if g is None else g.detach()).reshape(-1)
                      for g, p in zip(grads, like)])


# --------------------------------------------------------------------------------------------
# The A-gradient of L_ct(theta'(A)) (jvp, finite-difference and linearized paths)
# --------------------------------------------------------------------------------------------

@dataclass
class _SubBatches:
    """The images of the batch each part of the meta objective reads (``meta_batch``): ``v`` for
    the pass at theta' (v = grad L_ct(theta')), ``jvp`` for the directional derivative of
    L_msr. Two independent uniform draws without replacement, so that the product of the two
    estimates is unbiased for losses that are means over images; ``None``: the whole batch."""

    size: int
    v: Optional[Tensor] = None
    jvp: Optional[Tensor] = None

    @classmethod
    def draw(cls, batch_size: int, options: ICLMSROptions, generator: Optional[torch.Generator],
             device: torch.device) -> "_SubBatches":
        size = options.meta_batch_size(batch_size)
        if size >= batch_size:
            return cls(batch_size)
        draw = lambda: torch.randperm(batch_size, generator=generator)[:size].sort().values  # noqa: E731
        return cls(size, draw().to(device), draw().to(device))


def _rows(tensors: Optional[Sequence[Tensor]], index: Optional[Tensor]) -> Optional[List[Tensor]]:
    if tensors is None or index is None:
        return None if tensors is None else list(tensors)
    return [t[index] for t in tensors]


@dataclass
class _WeightGrads:
    """dL_ct(theta')/dA (``d_weights``), L_ct(theta') and, with ``diagnose``, the first-order
    term's dA (``first_order``)."""

    ct_virtual: Tensor
    d_weights: Tensor
    first_order: Optional[Tensor] = None


def _weight_grad(fn: "_Functional", views: List[Tensor], options: ICLMSROptions,
                 virtual_step: VirtualStep, enc_params: ParamDict, head_params: ParamDict,
                 weights: Tensor, stage1_grads: Optional[Mapping[str, Optional[Tensor]]],
                 plain_grads: Optional[PlainGrads], batches: _SubBatches,
                 diagnose: bool) -> _WeightGrads:
    """L_ct(theta') and dL_ct(theta')/dA with A = ``weights`` (detached): equation (3) without
    the L_uni term, on the sub-batches of ``batches``."""
    theta = {**_prefixed("encoder.", enc_params), **_prefixed("head.", head_params)}
    fixed_features = None
    if not enc_params:  # meta_params: head, or an encoder without trainable parameters
        with torch.no_grad():
            fixed_features = [fn.encode({}, x) for x in views]

    # g = grad_theta L_to(theta, A) on the whole batch: reused from stage 1 or computed here.
    if stage1_grads is not None:
        g = _lookup(stage1_grads, theta, "stage1_grads")
    else:
        features = fixed_features or [fn.encode({}, x) for x in views]
        l_ct, l_msr = fn.head({}, features, weights)
        g = fn.average(fn.grads(l_ct + options.lambda_msr * l_msr, theta))

    # theta' = U(theta, g) (equation (1)), with g a leaf so that w = (dU/dg)^T v is one VJP.
    base = {k: p.detach() for k, p in theta.items()}
    g_leaf = {k: t.detach().requires_grad_() for k, t in g.items()}
    virtual = virtual_step(base, g_leaf)
    del g
    plain = None
    if options.meta_grad == "linearized" or diagnose:
        plain = _plain(fn, views, theta, fixed_features, plain_grads)
    if options.meta_grad == "linearized":
        l_plain, v = plain
        ct_virtual = l_plain + sum(((virtual[k].detach() - base[k]) * v[k]).sum() for k in theta)
    else:
        ct_virtual, v = _virtual_gradient(fn, views, virtual, fixed_features, batches.v)
    pullback = _Pullback(theta, virtual, g_leaf)
    w = pullback(v)
    w_first = w if options.meta_grad == "linearized" else (pullback(plain[1]) if diagnose else None)
    # parameter-sized tensors no longer needed: lower peak memory
    del v, plain, pullback, virtual, g_leaf
    zeros = torch.zeros_like(weights)
    if options.lambda_msr == 0:
        return _WeightGrads(ct_virtual, zeros, zeros if diagnose else None)

    sub_fn = fn.subset(batches.jvp)
    sub_views = _rows(views, batches.jvp)
    sub_fixed = _rows(fixed_features, batches.jvp)
    sub_weights = weights if batches.jvp is None else weights[batches.jvp]

    def expand(d: Tensor) -> Tensor:  # rows of the sub-batch back into the batch
        if batches.jvp is None:
            return d
        full = torch.zeros_like(weights)
        full[batches.jvp] = d
        return full

    d_weights = expand(_directional_weight_grad(sub_fn, sub_views, options, enc_params,
                                                head_params, w, sub_weights, sub_fixed))
    first_order = None
    if diagnose:
        first_order = d_weights if w_first is w else expand(_directional_weight_grad(
            sub_fn, sub_views, options, enc_params, head_params, w_first, sub_weights, sub_fixed))
    return _WeightGrads(ct_virtual, d_weights, first_order)


def _plain(fn: "_Functional", views: List[Tensor], theta: ParamDict,
           fixed_features: Optional[List[Tensor]], plain_grads: Optional[PlainGrads]
           ) -> Tuple[Tensor, ParamDict]:
    """L_ct(theta) and v0 = grad_theta L_ct(theta) on the whole batch: given, or computed."""
    if plain_grads is not None:
        return plain_grads.loss.detach(), _lookup(plain_grads.grads, theta, "plain_grads")
    features = fixed_features or [fn.encode({}, x) for x in views]
    l_plain, _ = fn.head({}, features, None)
    return l_plain.detach(), fn.average(fn.grads(l_plain, theta))


def _virtual_gradient(fn: "_Functional", views: List[Tensor], virtual: ParamDict,
                      fixed_features: Optional[List[Tensor]], index: Optional[Tensor]
                      ) -> Tuple[Tensor, ParamDict]:
    """L_ct(theta') and v = grad L_ct at theta' (the plain loss), on the images ``index``."""
    sub_fn = fn.subset(index)
    virtual_leaf = {k: t.detach().requires_grad_() for k, t in virtual.items()}
    features = _rows(fixed_features, index)
    if features is None:
        enc_virtual = _unprefixed("encoder.", virtual_leaf)
        features = [sub_fn.encode(enc_virtual, x) for x in _rows(views, index)]
    ct_virtual, _ = sub_fn.head(_unprefixed("head.", virtual_leaf), features, None)
    v = fn.average(fn.grads(ct_virtual, virtual_leaf))
    return ct_virtual.detach(), v


class _Pullback:
    """w = (dU/dg)^T v: the vector-Jacobian product of the virtual step U (equation (3))."""

    def __init__(self, theta: ParamDict, virtual: ParamDict, g_leaf: ParamDict) -> None:
        self.theta, self.virtual, self.g_leaf = theta, virtual, g_leaf
        self.names = [k for k in theta if virtual[k].requires_grad]

    def __call__(self, v: ParamDict) -> ParamDict:
        w = dict.fromkeys(self.theta)
        if self.names:
            vjp = torch.autograd.grad([self.virtual[k] for k in self.names],
                                      [self.g_leaf[k] for k in self.names],
                                      grad_outputs=[v[k] for k in self.names],
                                      allow_unused=True, retain_graph=True)
            w.update(zip(self.names, vjp))
        return {k: torch.zeros_like(self.theta[k]) if t is None else t.detach()
                for k, t in w.items()}


def _directional_weight_grad(fn: "_Functional", views: List[Tensor], options: ICLMSROptions,
                             enc_params: ParamDict, head_params: ParamDict, w: ParamDict,
                             weights: Tensor, fixed_features: Optional[List[Tensor]]) -> Tensor:
    """d/dA [ w . grad_theta (lambda L_msr)(theta, A) ].

    w . grad_theta L_msr = grad_{theta_h} H . w_h + grad_Z H . (J_f w_f): the encoder enters only
    through Z and J_f w_f, which does not depend on A; the head, the cheap part, is
    differentiated twice (create_graph) to get the A-derivative of that inner product. J_f w_f is
    one forward-mode pass (``second_order``), or central differences of Z along w_f
    (``finite_difference``, ``linearized``): Z is continuous in theta, so the differences stay
    faithful where the A-gradient itself, which jumps when a ReLU of the head flips, would not.
    """
    if fixed_features is None:
        primals = {k: p.detach() for k, p in enc_params.items()}
        tangents = {k: w["encoder." + k] for k in enc_params}
        if options.meta_grad == "second_order":
            def encode_all(params: ParamDict) -> Tuple[Tensor, ...]:
                return tuple(fn.encode(params, x) for x in views)

            # half precision: a tangent of unit root mean square, scaled back after the pass
            scale = fn.precision.tangent_scale(tangents)
            if scale is not None:
                tangents = {k: t * scale for k, t in tangents.items()}
            with _LeanBatchNormJvp():
                features, d_features = jvp(encode_all, (primals,), (tangents,))
            if scale is not None:
                d_features = [d.float() / scale for d in d_features]
        else:
            with fn.precision.full():
                features, d_features = _fd_jvp(fn, views, primals, tangents, options.fd_epsilon)
        features = [z.detach().requires_grad_() for z in features]
        d_features = list(d_features)
    else:
        features, d_features = fixed_features, []

    leaf_head = {k: p.detach().requires_grad_() for k, p in head_params.items()}
    weights = weights.detach().requires_grad_()
    _, l_msr = fn.head(leaf_head, features, weights)
    inputs = list(leaf_head.values()) + (features if d_features else [])
    directions = [w["head." + k] for k in leaf_head] + d_features
    if not inputs or not l_msr.requires_grad:
        return torch.zeros_like(weights)
    grads = torch.autograd.grad(fn.precision.scaled(options.lambda_msr * l_msr), inputs,
                                create_graph=True, allow_unused=True)
    inner = sum((gr * d).sum() for gr, d in zip(grads, directions) if gr is not None)
    if not isinstance(inner, Tensor) or not inner.requires_grad:
        return torch.zeros_like(weights)
    (d_weights,) = torch.autograd.grad(inner, weights, allow_unused=True)
    return torch.zeros_like(weights) if d_weights is None else fn.precision.unscaled(d_weights)


@torch.no_grad()
def _fd_jvp(fn: "_Functional", views: List[Tensor], primals: ParamDict, tangents: ParamDict,
            fd_epsilon: float) -> Tuple[List[Tensor], List[Tensor]]:
    """Z(theta_f) and J_f w_f ~ (Z(theta_f + eps w_f) - Z(theta_f - eps w_f)) / (2 eps), with
    ||eps w_f|| = fd_epsilon * ||theta_f||: two forwards of the encoder without autograd. Z(theta_f)
    is their midpoint (exact up to O(eps^2), far below float32 resolution at these steps)."""
    w_norm = torch.sqrt(sum(t.pow(2).sum() for t in tangents.values()))
    theta_norm = torch.sqrt(sum(p.pow(2).sum() for p in primals.values()))
    # Tensors, not floats: no device synchronisation. w = 0 gives a zero difference.
    tiny = torch.finfo(w_norm.dtype).tiny
    eps = fd_epsilon * theta_norm.clamp_min(tiny) / w_norm.clamp_min(tiny)
    sides = []
    for sign in (1.0, -1.0):
        shifted = {k: p + (sign * eps) * tangents[k] for k, p in primals.items()}
        sides.append([fn.encode(shifted, x) for x in views])
        del shifted
    features = [(up + down) / 2.0 for up, down in zip(*sides)]
    return features, [(up - down) / (2.0 * eps) for up, down in zip(*sides)]


class _BatchStatsNorm(torch.autograd.Function):
    """y = (x - mean) * invstd * weight + bias with the statistics of the batch (over every
    dimension but 1), and a lean forward-mode rule. With xc = x - mean, r = invstd, t_ the
    tangents and <.> the mean over those dimensions:

        t_y = weight * (r (t_x - <t_x>) - r^3 <t_x xc> xc) + r xc t_weight + t_bias,

    the derivative torch's generic rule gives too, here two fused multiply-adds over the input
    and two reductions instead of a dozen elementwise passes. For the forward-mode
    pass of ``_directional_weight_grad`` only: it has no reverse-mode rule, so
    ``_LeanBatchNormJvp`` uses it only when nothing requires grad."""

    @staticmethod
    def forward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                eps: float) -> Tuple[Tensor, Tensor, Tensor]:
        return torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        x, weight, _, _ = inputs
        _, mean, invstd = output
        ctx.mark_non_differentiable(mean, invstd)
        ctx.save_for_forward(x, weight, mean, invstd)

    @staticmethod
    def jvp(ctx, x_t: Optional[Tensor], weight_t: Optional[Tensor],  # noqa: ANN001
            bias_t: Optional[Tensor], _eps_t: None) -> Tuple[Tensor, None, None]:
        x, weight, mean, invstd = ctx.saved_tensors
        shape = (1, -1) + (1,) * (x.dim() - 2)
        dims = [0] + list(range(2, x.dim()))
        r = invstd.view(shape)
        xc = x - mean.view(shape)
        scale = r if weight is None else r * weight.view(shape)  # dy/dx at fixed statistics
        coef_xc = torch.zeros_like(r) if weight_t is None else r * weight_t.view(shape)
        const = torch.zeros_like(r) if bias_t is None else bias_t.view(shape).to(r.dtype)
        if x_t is not None:
            coef_xc = coef_xc - (r * r) * (x_t * xc).mean(dims, keepdim=True) * scale
            const = const - scale * x_t.mean(dims, keepdim=True)
            y_t = torch.addcmul(const, x_t, scale)
        else:
            y_t = const.expand_as(xc).clone()
        y_t.addcmul_(xc, coef_xc)
        return y_t.to(x.dtype), None, None

    @staticmethod
    def backward(ctx, *grads: Tensor) -> None:  # noqa: ANN001
        raise RuntimeError("_BatchStatsNorm has a forward-mode rule only.")


def _batch_norm_args(input: Tensor, running_mean: Optional[Tensor],  # noqa: A002
                     running_var: Optional[Tensor], weight: Optional[Tensor] = None,
                     bias: Optional[Tensor] = None, training: bool = False,
                     momentum: float = 0.1, eps: float = 1e-5) -> tuple:
    """The arguments of ``F.batch_norm`` by name (same signature)."""
    return input, running_mean, running_var, weight, bias, training, eps


class _LeanBatchNormJvp(TorchFunctionMode):
    """While active, ``F.batch_norm`` with batch statistics and no running statistics, on
    tensors that do not require grad, runs as ``_BatchStatsNorm`` (its lean forward-mode rule);
    every other call is unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is F.batch_norm:
            x, running_mean, running_var, weight, bias, training, eps = _batch_norm_args(
                *args, **kwargs)
            inputs = [t for t in (x, weight, bias) if t is not None]
            if (training and running_mean is None and running_var is None and x.dim() >= 2
                    and not any(t.requires_grad for t in inputs)):
                return _BatchStatsNorm.apply(x, weight, bias, eps)[0]
        return func(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# The literal second-order reference (exact_impl: double_backward)
# --------------------------------------------------------------------------------------------

def _double_backward(fn: "_Functional", views: List[Tensor], options: ICLMSROptions,
                     virtual_step: VirtualStep, enc_params: ParamDict, head_params: ParamDict,
                     weights: Tensor, reg_params: List[Tensor]
                     ) -> Tuple[Tensor, Tuple[Optional[Tensor], ...]]:
    """Equations (1)-(2) as written: g = grad_theta L_to with ``create_graph=True`` through the
    whole model, theta' = U(theta, g) with its graph, L_ct(theta') by a functional forward, and
    the backward into phi. Returns L_ct(theta') and dL_ct(theta')/dphi."""
    theta = {**_prefixed("encoder.", enc_params), **_prefixed("head.", head_params)}
    with torch.set_grad_enabled(bool(enc_params)):
        features = [fn.encode({}, x) for x in views]
    l_ct, l_msr = fn.head({}, features, weights)
    l_to = l_ct + options.lambda_msr * l_msr
    names = list(theta)
    grads = torch.autograd.grad(fn.precision.scaled(l_to), [theta[k] for k in names],
                                create_graph=True, allow_unused=True)
    g = fn.average({k: torch.zeros_like(theta[k]) if gr is None else fn.precision.unscaled(gr)
                    for k, gr in zip(names, grads)})
    virtual = virtual_step(theta, g)
    if enc_params:
        enc_virtual = _unprefixed("encoder.", virtual)
        features = [fn.encode(enc_virtual, x) for x in views]
    ct_virtual, _ = fn.head(_unprefixed("head.", virtual), features, None)
    ct_part = torch.autograd.grad(fn.precision.scaled(ct_virtual), reg_params,
                                  retain_graph=True, allow_unused=True)
    return ct_virtual.detach(), tuple(None if g is None else fn.precision.unscaled(g)
                                      for g in ct_part)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def _lookup(grads: Mapping[str, Optional[Tensor]], theta: ParamDict, what: str) -> ParamDict:
    """The entries of ``grads`` for every key of ``theta``; ``None`` counts as zero."""
    missing = [k for k in theta if k not in grads]
    if missing:
        raise ValueError(f"meta_step: {what} lacks {len(missing)} parameter(s), e.g. "
                         f"{missing[0]!r}; build it with collect_grads(encoder, head).")
    return {k: _zero_if_none(grads[k], p) for k, p in theta.items()}


def _trainable(module: nn.Module, names: Optional[Collection[str]] = None) -> ParamDict:
    """The parameters of ``module`` that require grad (among ``names``, when given)."""
    params = {name: p for name, p in module.named_parameters() if p.requires_grad}
    if names is None:
        return params
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"meta_step: encoder_params names {unknown[0]!r}, which is not a "
                         f"trainable parameter of the encoder.")
    return {n: p for n, p in params.items() if n in set(names)}


def _prefixed(prefix: str, params: Mapping[str, Tensor]) -> ParamDict:
    return {prefix + k: p for k, p in params.items()}


def _unprefixed(prefix: str, params: Mapping[str, Tensor]) -> ParamDict:
    return {k[len(prefix):]: p for k, p in params.items() if k.startswith(prefix)}


def _buffer_copies(module: nn.Module) -> ParamDict:
    return {name: b.clone() for name, b in module.named_buffers()}


class _Functional:
    """Functional forwards of f and of the head side on one set of buffer copies (made once per
    meta step, so the module's own buffers are never written by a virtual forward)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, head_loss: HeadLoss,
                 subset_loss: Optional[Callable[[Tensor], HeadLoss]] = None,
                 average_grads: Optional[Callable[[Sequence[Tensor]], List[Tensor]]] = None,
                 precision: Optional[MetaPrecision] = None) -> None:
        self.encoder, self.head_loss, self.subset_loss = encoder, head_loss, subset_loss
        self.average_grads = average_grads
        self.precision = precision or MetaPrecision("cpu")
        self.wrapper = _HeadCall(head)
        self.enc_buffers = _buffer_copies(encoder)
        self.head_buffers = _prefixed("head.", _buffer_copies(head))

    def subset(self, index: Optional[Tensor]) -> "_Functional":
        """The same forwards, the head side on the images ``index`` of the batch (same buffer
        copies); itself for ``None``."""
        if index is None or self.subset_loss is None:
            return self
        other = copy.copy(self)
        other.head_loss = self.subset_loss(index)
        return other

    def average(self, grads: ParamDict) -> ParamDict:
        """Per-process gradients averaged over the processes (the identity for one)."""
        if self.average_grads is None:
            return grads
        return dict(zip(grads, self.average_grads(list(grads.values()))))

    def grads(self, loss: Tensor, params: ParamDict) -> ParamDict:
        """grad of ``loss`` w.r.t. ``params`` (zeros where unused), through the loss scale."""
        grads = _grad_dict(self.precision.scaled(loss), params)
        return {k: self.precision.unscaled(g) for k, g in grads.items()}

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
