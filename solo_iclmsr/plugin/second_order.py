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
  not updated on such a step.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List

import torch
from torch import Tensor, nn

__all__ = ["disable_fused_attention", "twice_differentiable", "iter_norm_forward"]


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


@contextlib.contextmanager
def twice_differentiable(module: nn.Module) -> Iterator[None]:
    """Inside the block, solo's ``IterNorm`` modules of ``module`` run ``iter_norm_forward``."""
    from solo.utils.whitening import IterNorm

    shadowed: List[nn.Module] = [m for m in module.modules() if isinstance(m, IterNorm)]
    for norm in shadowed:
        norm.forward = lambda X, norm=norm: iter_norm_forward(norm, X)
    try:
        yield
    finally:
        for norm in shadowed:
            del norm.forward
