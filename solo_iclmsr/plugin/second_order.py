"""Modules of solo-learn and timm made differentiable twice, for the meta step.

The meta-gradient differentiates the method's head twice (and, with ``exact_impl: jvp``, runs
the backbone in forward mode). Two kinds of module do not allow it:

* timm's fused attention kernels have neither forward-mode nor double-backward derivatives: the
  attention of the backbones runs unfused (:func:`disable_fused_attention`, once, at build time);
* solo's ``IterNorm`` (VIbCReg's projector) is an autograd ``Function`` whose hand-written
  backward transposes its saved tensors in place: it can be run once, and autograd cannot
  differentiate it again. During the meta step, and in a training step whose graph is
  differentiated more than once (the gradient diagnostics, ``meta_grad: linearized``), its
  forward runs as the same computation written with plain torch operations
  (:func:`twice_differentiable`), whose derivatives are autograd's; its running statistics are
  not updated on such a step;
* torch's ``SyncBatchNorm`` (``sync_batchnorm: True`` under DDP) has no forward-mode rule and a
  backward that cannot be differentiated again; in the same blocks it normalises with
  ``collectives.global_batch_statistics``: the global batch's statistics through collectives
  that can be differentiated in every mode (running statistics updated as SyncBatchNorm
  updates them, where they are tracked).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List

import torch
from torch import Tensor, nn

from solo_iclmsr.plugin.collectives import distributed, global_batch_statistics, normalise

__all__ = ["disable_fused_attention", "twice_differentiable", "iter_norm_forward",
           "sync_batch_norm_forward"]


def disable_fused_attention(*modules: nn.Module) -> None:
    """Attention of timm models runs unfused (see the module docstring)."""
    for module in modules:
        for m in module.modules():
            if getattr(m, "fused_attn", False):
                m.fused_attn = False


def iter_norm_forward(norm: nn.Module, X: Tensor) -> Tensor:
    """solo's ``IterNorm`` forward (``solo/utils/whitening.py``) as plain torch operations:
    group whitening by Newton's iterations P_{k+1} = 1.5 P_k - 0.5 P_k^3 Sigma_N, then the
    affine map. The running statistics are read in eval mode and not updated."""
    nc = norm.num_channels
    g = X.size(1) // nc
    x = X.float().transpose(0, 1).contiguous().view(g, nc, -1)
    _, d, m = x.size()
    if norm.training:
        xc = x - x.mean(-1, keepdim=True)
        eye = torch.eye(d, dtype=x.dtype, device=x.device).expand(g, d, d)
        sigma = torch.baddbmm(eye, xc, xc.transpose(1, 2), beta=norm.eps, alpha=1.0 / m)
        r_tr = (sigma * eye).sum((1, 2), keepdim=True).reciprocal()
        sigma_n = sigma * r_tr
        p = eye
        for _ in range(norm.T):
            p = torch.baddbmm(p, torch.matrix_power(p, 3), sigma_n, beta=1.5, alpha=-0.5)
        wm = p * r_tr.sqrt()
    else:
        xc, wm = x - norm.running_mean, norm.running_wm
    out = wm.matmul(xc).view(X.size(1), X.size(0), *X.size()[2:]).transpose(0, 1).contiguous()
    return out * norm.weight + norm.bias if norm.affine else out


def sync_batch_norm_forward(norm: nn.SyncBatchNorm, x: Tensor) -> Tensor:
    """``SyncBatchNorm``'s forward with the global statistics written as differentiable
    collectives (``collectives.global_batch_statistics``, computed once for the output and the
    running statistics); running statistics used in eval mode and updated in training mode
    where they are tracked (momentum, unbiased variance, as torch)."""
    if not (norm.training or norm.running_mean is None):
        return torch.nn.functional.batch_norm(x, norm.running_mean, norm.running_var, norm.weight,
                                              norm.bias, False, 0.0, norm.eps)
    centred, mean, var, count = global_batch_statistics(x)
    y = normalise(centred, var, norm.weight, norm.bias, norm.eps)
    if norm.training and norm.track_running_stats and norm.running_mean is not None:
        with torch.no_grad():
            mean, var = mean.detach(), var.detach()  # no_grad keeps forward-mode tangents
            momentum = 0.1 if norm.momentum is None else norm.momentum
            norm.running_mean.mul_(1 - momentum).add_(momentum * mean)
            norm.running_var.mul_(1 - momentum).add_(momentum * var * count / (count - 1))
            norm.num_batches_tracked.add_(1)
    return y


@contextlib.contextmanager
def twice_differentiable(module: nn.Module) -> Iterator[None]:
    """Inside the block, solo's ``IterNorm`` modules of ``module`` run ``iter_norm_forward`` and,
    under data parallelism, its ``SyncBatchNorm`` modules ``sync_batch_norm_forward``."""
    from solo.utils.whitening import IterNorm

    shadowed: List[nn.Module] = []
    for m in module.modules():
        if isinstance(m, IterNorm):
            m.forward = lambda X, norm=m: iter_norm_forward(norm, X)
            shadowed.append(m)
        elif isinstance(m, nn.SyncBatchNorm) and distributed():
            m.forward = lambda X, norm=m: sync_batch_norm_forward(norm, X)
            shadowed.append(m)
    try:
        yield
    finally:
        for norm in shadowed:
            del norm.forward
