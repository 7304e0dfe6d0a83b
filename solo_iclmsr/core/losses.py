"""Losses of ICL-MSR (ICLMSR.md section 3): InfoNCE, both readings of L_msr, and L_uni.

All functions take tensors and have a plain single-process path. None of them gathers negatives
from other ranks: which negatives the meta objective sees is decided by the caller (the head-side
callable handed to ``meta_step``), see ``solo_iclmsr.core.meta_step``.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .regularizer import pooled_weighted_features

__all__ = [
    "StratumLoss",
    "strata",
    "msr_loss",
    "info_nce",
    "info_nce_log_prob",
    "mixture_of_log_probs",
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


def mixture_of_log_probs(log_p: Tensor) -> Tensor:
    """- mean_m log( (1/n) sum_t P_t(m) ) from log P_t(m) of shape (n, M), via logsumexp.

    The backdoor adjustment of any method whose prediction is the probability of one positive
    (MoCo's key, NNCLR's neighbour, ...): m runs over the anchors, t over the strata.
    """
    return -(torch.logsumexp(log_p, dim=0) - math.log(log_p.shape[0])).mean()


def uniformity_loss(weights: Tensor, t: float = 2.0, over: str = "image") -> Tensor:
    """L_uni on A_s with the Gaussian potential G_t(a, b) = exp(2t a.b - 2t) (ICLMSR.md section 3).

    ``over="image"`` [paper kernel, decision on aggregation]:

        L_uni = mean_i log( mean_{s != r} G_t(a_{i,s}, a_{i,r}) ),

    which equals mean_i log mean_{s != r} exp(-t ||a_{i,s} - a_{i,r}||^2) for unit vectors: 0 when
    an image's n vectors coincide, negative when they spread. A fixed set of n distinct masks,
    the same for every image, minimises it exactly (ICLMSR.md section 7).

    ``over="batch"`` [decision]: one term over all B * n vectors of the batch,
    log mean_{(i,s) != (j,r)} G_t(a_{i,s}, a_{j,r}); the same stratum of two images counts as a
    pair too, so image-independent masks are no longer a minimiser.

    Args:
        weights: A_s (B, n, c), unit-norm rows.
        t: temperature of the potential.
        over: ``image`` or ``batch``.

    Returns:
        a scalar; 0 (with a graph) when there is no pair.
    """
    if over not in ("image", "batch"):
        raise ValueError(f"uniformity_loss: over={over!r} is invalid: expected image or batch.")
    if over == "batch":
        weights = weights.reshape(1, -1, weights.shape[-1])  # (1, B * n, c)
    n_vectors = weights.shape[1]
    if n_vectors < 2:
        return weights.sum() * 0.0
    gram = weights @ weights.transpose(1, 2)  # (G, m, m)
    log_g = 2.0 * t * gram - 2.0 * t
    off_diag = ~torch.eye(n_vectors, dtype=torch.bool, device=weights.device)
    log_g = log_g[:, off_diag]  # (G, m (m - 1))
    return (torch.logsumexp(log_g, dim=1) - math.log(n_vectors * (n_vectors - 1))).mean()


#: stratum_loss(views of one stratum) -> the method's loss (``mean``) or log P of every positive
#: (``mixture``), for one list of a_t-weighted pooled per-view features.
StratumLoss = Callable[[List[Tensor]], Tensor]


def strata(features: Sequence[Tensor], weights: Tensor) -> List[List[Tensor]]:
    """The views of every stratum: ``strata(...)[t][k] = pool(a_t ⊙ Z_k)`` (B, c) for view k.

    Args:
        features: Z of each view: maps (B, c, h, w), tokens (B, L, c) or pooled (B, c); pooled
            by average (the shortcut of ``pooled_weighted_features``).
        weights: A_s (B, n, c); every view of image i is weighted with a_{i,t} [paper].
    """
    weighted = [pooled_weighted_features(z, weights) for z in features]  # each (B, n, c)
    return [[w[:, t] for w in weighted] for t in range(weights.shape[1])]


def msr_loss(stratum_loss: StratumLoss, features: Sequence[Tensor], weights: Tensor,
             form: str) -> Tensor:
    """L_msr: the one definition every caller uses (core, plugin, benchmarks).

    The method's head sees one stratum at a time, as it sees the plain features in L_ct: a head
    with BatchNorm normalises the B vectors of one stratum, never the B * n of all strata.

    * ``form="mean"``: L_msr = (1/n) sum_t L(strata[t]), ``stratum_loss`` giving the loss L;
    * ``form="mixture"``: L_msr = - mean_m log((1/n) sum_t P_t(m)), ``stratum_loss`` giving
      log P_t of every positive m (ICLMSR.md section 3).

    Args:
        stratum_loss: see ``StratumLoss``.
        features: Z of each view (see ``strata``).
        weights: A_s (B, n, c).
        form: ``mean`` or ``mixture``.
    """
    if form not in ("mean", "mixture"):
        raise ValueError(f"msr_loss: form={form!r} is invalid: expected mean or mixture.")
    per_stratum = [stratum_loss(views) for views in strata(features, weights)]
    if form == "mixture":
        return mixture_of_log_probs(torch.stack(per_stratum))
    return torch.stack(per_stratum).mean()


def infonce_head_loss(projector: nn.Module, temperature: float = 0.2, msr_loss_form: str = "mixture",
                      msr_temperature: Optional[float] = None) -> HeadLoss:
    """The head side of SimCLR as a ``head_loss`` for ``meta_step`` (and for tests and benchmarks).

    Features of each view are average-pooled if they are maps (B, c, h, w) or tokens (B, L, c).
    L_msr is ``msr_loss`` with one projector call per stratum, as the plugin computes it.

    Args:
        projector: f_ph; its parameters are theta_h (pass it, or a module holding it, as ``head``).
        temperature: tau of L_ct.
        msr_loss_form: ``mixture`` or ``mean``.
        msr_temperature: tau_msr; ``None`` uses ``temperature``.

    Returns:
        head_loss(features, weights) -> (L_ct, L_msr), L_msr = 0 when weights is None.
    """
    if msr_loss_form not in ("mixture", "mean"):
        raise ValueError(f"infonce_head_loss: msr_loss_form={msr_loss_form!r} is invalid: "
                         f"expected one of mixture, mean.")
    tau_msr = temperature if msr_temperature is None else msr_temperature

    def stratum_loss(views: List[Tensor]) -> Tensor:
        u1, u2 = projector(views[0]), projector(views[1])
        if msr_loss_form == "mixture":
            return info_nce_log_prob(u1, u2, tau_msr)
        return info_nce(u1, u2, tau_msr)

    def head_loss(features: Sequence[Tensor], weights: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        if len(features) != 2:
            raise ValueError(f"infonce_head_loss expects 2 views, got {len(features)}.")
        pooled = [_average_pool(z) for z in features]
        l_ct = info_nce(projector(pooled[0]), projector(pooled[1]), temperature)
        if weights is None:
            return l_ct, l_ct.new_zeros(())
        return l_ct, msr_loss(stratum_loss, pooled, weights, msr_loss_form)

    return head_loss


def _average_pool(z: Tensor) -> Tensor:
    if z.dim() == 4:
        return z.mean(dim=(2, 3))
    if z.dim() == 3:
        return z.mean(dim=1)
    return z
