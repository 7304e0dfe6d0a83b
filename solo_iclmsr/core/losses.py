"""Losses of ICL-MSR (ICLMSR.md section 3): InfoNCE, both readings of L_msr, and L_uni.

All functions take tensors and have a plain single-process path. None of them gathers negatives
from other ranks: which negatives the meta objective sees is decided by the caller (the head-side
callable handed to ``meta_step``), see ``solo_iclmsr.core.meta_step``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .regularizer import pooled_weighted_features

__all__ = [
    "info_nce",
    "info_nce_log_prob",
    "msr_mixture_loss",
    "mixture_of_log_probs",
    "msr_mean_loss",
    "uniformity_loss",
    "infonce_head_loss",
    "HeadLoss",
]

#: head_loss(features, weights) -> (L_ct, L_msr): see ``meta_step``.
HeadLoss = Callable[[Sequence[Tensor], Optional[Tensor]], Tuple[Tensor, Tensor]]


def info_nce_log_prob(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """log P of the positive for every anchor of NT-Xent (1 positive, 2N - 2 negatives).

    For anchor view j of image i (the 2N anchors are both views of the N images):

        P(i, j) = exp(s(z_i^j, z_i^{3-j}) / tau) / sum_{(k, l) != (i, j)} exp(s(z_i^j, z_k^l) / tau)

    with s the cosine similarity; the sum runs over the positive and the 2N - 2 negatives.

    Args:
        z1, z2: the two views' embeddings, (..., N, d); leading dimensions are independent
            problems (e.g. one per stratum), each with its own negatives.
        temperature: tau.

    Returns:
        (..., 2N): entries [..., :N] are the anchors of view 1, [..., N:] those of view 2.
    """
    if z1.shape != z2.shape:
        raise ValueError(f"info_nce: the two views must have the same shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}.")
    n = z1.shape[-2]
    z = F.normalize(torch.cat([z1, z2], dim=-2), dim=-1)  # (..., 2N, d)
    logits = z @ z.transpose(-1, -2) / temperature  # (..., 2N, 2N)
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positive = torch.arange(2 * n, device=z.device).roll(n)  # view 1 of i <-> view 2 of i
    pos_logit = logits.gather(-1, positive.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return pos_logit - torch.logsumexp(logits, dim=-1)


def info_nce(z1: Tensor, z2: Tensor, temperature: float = 0.2) -> Tensor:
    """NT-Xent / InfoNCE of SimCLR: -mean over the 2N anchors of log P(i, j), see above."""
    return -info_nce_log_prob(z1, z2, temperature).mean()


def msr_mixture_loss(u1: Tensor, u2: Tensor, temperature: float = 0.2) -> Tensor:
    """L_msr, ``mixture`` reading: the backdoor likelihood of the positive (ICLMSR.md section 3).

        L_msr = - mean_{i,j} log( (1/n) sum_t P_t(i, j) ),

    P_t(i, j) being the InfoNCE probability computed on the a_t-weighted embeddings u_{., t} with
    negatives from the same stratum t (every view weighted with its own image's a_t). Computed as
    logsumexp_t log P_t - log n for stability. The paper's Eq. 6 is lost (its image is missing);
    this literal backdoor likelihood P(Y | do(X)) = (1/n) sum_t P_t is a decision, the default for
    InfoNCE-type methods.

    Args:
        u1, u2: the two views' embeddings of the weighted features, (N, n, d).
        temperature: tau_msr.
    """
    if u1.dim() != 3:
        raise ValueError(f"msr_mixture_loss expects (N, n, d) embeddings, got {tuple(u1.shape)}.")
    log_p = info_nce_log_prob(u1.transpose(0, 1), u2.transpose(0, 1), temperature)  # (n, 2N)
    return mixture_of_log_probs(log_p)


def mixture_of_log_probs(log_p: Tensor) -> Tensor:
    """- mean_m log( (1/n) sum_t P_t(m) ) from log P_t(m) of shape (n, M), via logsumexp.

    The backdoor adjustment of any method whose prediction is the probability of one positive
    (MoCo's key, NNCLR's neighbour, ...): m runs over the anchors, t over the strata.
    """
    return -(torch.logsumexp(log_p, dim=0) - math.log(log_p.shape[0])).mean()


def msr_mean_loss(loss_fn: Callable[..., Tensor], *weighted: Tensor) -> Tensor:
    """L_msr, ``mean`` reading: (1/n) sum_t L(features weighted by a_t) (ICLMSR.md section 3).

    The other reading of the lost Eq. 6 [decision]: the default for non-contrastive methods, where
    only the online branch is weighted and target branches stay as the method computes them.

    Args:
        loss_fn: the base method's loss, called once per stratum t with ``weighted[k][:, t]``.
        weighted: tensors of shape (N, n, ...), stratum t of image i in ``[i, t]``.
    """
    if not weighted:
        raise ValueError("msr_mean_loss needs at least one (N, n, ...) tensor.")
    n_strata = weighted[0].shape[1]
    total = sum(loss_fn(*(w[:, t] for w in weighted)) for t in range(n_strata))
    return total / n_strata


def uniformity_loss(weights: Tensor, t: float = 2.0) -> Tensor:
    """L_uni on A_s with the Gaussian potential G_t(a, b) = exp(2t a.b - 2t) (ICLMSR.md section 3).

        L_uni = mean_i log( mean_{s != r} G_t(a_{i,s}, a_{i,r}) ),

    which equals mean_i log mean_{s != r} exp(-t ||a_{i,s} - a_{i,r}||^2) for unit vectors. It is
    0 when an image's n vectors coincide and negative when they spread. Paper gives the kernel; the
    aggregation (per image, over ordered pairs s != r) is a decision.

    Args:
        weights: A_s (B, n, c), unit-norm rows.
        t: temperature of the potential.

    Returns:
        a scalar; 0 (with a graph) when n = 1.
    """
    n_strata = weights.shape[1]
    if n_strata < 2:
        return weights.sum() * 0.0
    gram = weights @ weights.transpose(1, 2)  # (B, n, n)
    log_g = 2.0 * t * gram - 2.0 * t
    off_diag = ~torch.eye(n_strata, dtype=torch.bool, device=weights.device)
    log_g = log_g[:, off_diag]  # (B, n (n - 1))
    return (torch.logsumexp(log_g, dim=1) - math.log(n_strata * (n_strata - 1))).mean()


def infonce_head_loss(projector: nn.Module, temperature: float = 0.2, msr_loss: str = "mixture",
                      msr_temperature: Optional[float] = None) -> HeadLoss:
    """The head side of SimCLR as a ``head_loss`` for ``meta_step`` (and for tests and benchmarks).

    Features of each view are average-pooled if they are maps (B, c, h, w) or tokens (B, L, c);
    the weighted features use the pooled shortcut, valid for this average pooling.

    Args:
        projector: f_ph; its parameters are theta_h (pass it, or a module holding it, as ``head``).
        temperature: tau of L_ct.
        msr_loss: ``mixture`` or ``mean``.
        msr_temperature: tau_msr; ``None`` uses ``temperature``.

    Returns:
        head_loss(features, weights) -> (L_ct, L_msr), L_msr = 0 when weights is None.
    """
    if msr_loss not in ("mixture", "mean"):
        raise ValueError(f"infonce_head_loss: msr_loss={msr_loss!r} is invalid: expected one of "
                         f"mixture, mean.")
    tau_msr = temperature if msr_temperature is None else msr_temperature

    def head_loss(features: Sequence[Tensor], weights: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        if len(features) != 2:
            raise ValueError(f"infonce_head_loss expects 2 views, got {len(features)}.")
        pooled = [_average_pool(z) for z in features]
        p1, p2 = (projector(z) for z in pooled)
        l_ct = info_nce(p1, p2, temperature)
        if weights is None:
            return l_ct, l_ct.new_zeros(())
        u = []
        for z in pooled:
            w = pooled_weighted_features(z, weights)  # (B, n, c)
            u.append(projector(w.flatten(0, 1)).view(w.shape[0], w.shape[1], -1))
        if msr_loss == "mixture":
            l_msr = msr_mixture_loss(u[0], u[1], tau_msr)
        else:
            l_msr = msr_mean_loss(lambda a, b: info_nce(a, b, tau_msr), u[0], u[1])
        return l_ct, l_msr

    return head_loss


def _average_pool(z: Tensor) -> Tensor:
    if z.dim() == 4:
        return z.mean(dim=(2, 3))
    if z.dim() == 3:
        return z.mean(dim=1)
    return z
