"""What the strata look like: statistics of A_s = f_msr(X) that say whether they stratify.

f_msr exists to propose image-dependent strata that split what an image shows (object,
background). Its failure mode (ICLMSR.md section 7) is a fixed set of channel masks, the same for
every image. These statistics tell the two apart; all take A_s (B, n, c) with unit-norm rows.

* ``cross_image_cosine`` (n,): mean cosine between a_t of two different images, per stratum; 1
  for image-independent strata.
* ``within_image_cosine``: mean cosine between two strata of one image; 1 for identical strata.
* ``effective_channels`` (B, n): 1 / sum_r a_r^4, the number of channels a_t effectively weights
  (c for a uniform a_t, 1 for a single channel).
* ``variance_explained``: the share of A_s's variation across images that a grouping of the
  images (class, background type) explains (eta^2), and the share a random grouping into as
  many groups would explain on average ((K - 1) / (N - 1)).
* ``foreground_channels`` / ``foreground_share``: where masks exist, the channels that respond
  more to the foreground than to the background, and the share of a_t's weight on them.

And one statistic of the training signal: ``gradient_cosine``, the cosine between two gradients
over the same parameters (ICLMSR.md section 8: to first order, the meta objective rewards f_msr
for aligning grad L_msr with grad L_ct on the batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "StrataDiagnostics",
    "strata_diagnostics",
    "effective_channels",
    "variance_explained",
    "foreground_channels",
    "foreground_share",
    "gradient_cosine",
]


@dataclass
class StrataDiagnostics:
    """Statistics of A_s on one set of images (see the module docstring).

    Attributes:
        cross_image_cosine: (n,) mean cosine of a_t across pairs of different images.
        within_image_cosine: mean cosine of two different strata of one image.
        effective_channels: (n,) mean over images of 1 / sum_r a_{t,r}^4.
    """

    cross_image_cosine: Tensor
    within_image_cosine: Tensor
    effective_channels: Tensor

    def as_dict(self, prefix: str = "") -> Dict[str, float]:
        """Scalars for a logger: means over strata, and the extreme strata."""
        cross = self.cross_image_cosine
        return {f"{prefix}cross_image_cos": float(cross.mean()),
                f"{prefix}cross_image_cos_min": float(cross.min()),
                f"{prefix}within_image_cos": float(self.within_image_cosine),
                f"{prefix}effective_channels": float(self.effective_channels.mean())}


def _pair_mean(gram: Tensor) -> Tensor:
    """Mean of the off-diagonal entries of (..., m, m) matrices; 1 when m = 1."""
    m = gram.shape[-1]
    if m < 2:
        return gram.new_ones(gram.shape[:-2])
    off = ~torch.eye(m, dtype=torch.bool, device=gram.device)
    return gram[..., off].mean(-1)


@torch.no_grad()
def strata_diagnostics(weights: Tensor) -> StrataDiagnostics:
    """Cross-image and within-image cosines and effective channels of A_s (B, n, c)."""
    if weights.dim() != 3:
        raise ValueError(f"strata_diagnostics expects A_s (B, n, c), got {tuple(weights.shape)}.")
    a = F.normalize(weights.float(), dim=-1)
    per_stratum = a.transpose(0, 1)  # (n, B, c)
    cross = _pair_mean(per_stratum @ per_stratum.transpose(1, 2))  # (n,)
    within = _pair_mean(a @ a.transpose(1, 2)).mean()  # mean over images
    return StrataDiagnostics(cross, within, effective_channels(a).mean(0))


def effective_channels(weights: Tensor) -> Tensor:
    """1 / sum_r a_r^4 for unit-norm a (the participation ratio of a^2): (..., c) -> (...)."""
    a2 = F.normalize(weights, dim=-1).pow(2)
    return 1.0 / a2.pow(2).sum(-1)


@torch.no_grad()
def variance_explained(weights: Tensor, groups: Tensor) -> Tuple[float, float]:
    """eta^2 of A_s across images for a grouping of the images, and its chance level.

    eta^2 = sum_k N_k ||mean_k - mean||^2 / sum_i ||x_i - mean||^2 over the flattened
    x_i = A_s[i] (n * c values); a grouping unrelated to A_s explains (K - 1) / (N - 1) on average.

    Args:
        weights: A_s (B, n, c) (or any (B, ...) tensor).
        groups: (B,) integer group of each image (e.g. its class or its background type).

    Returns:
        (eta^2, chance level).
    """
    x = weights.reshape(weights.shape[0], -1).double()
    groups = groups.reshape(-1)
    if groups.shape[0] != x.shape[0]:
        raise ValueError(f"variance_explained: {groups.shape[0]} groups for {x.shape[0]} images.")
    labels, index = torch.unique(groups, return_inverse=True)
    n, k = x.shape[0], labels.numel()
    centred = x - x.mean(0)
    total = centred.pow(2).sum()
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, index, centred)
    counts = torch.bincount(index, minlength=k).to(x.dtype)
    between = (sums.pow(2).sum(1) / counts).sum()
    chance = (k - 1) / max(n - 1, 1)
    return float(between / total.clamp_min(1e-300)), float(chance)


@torch.no_grad()
def foreground_channels(fg_features: Tensor, bg_features: Tensor) -> Tensor:
    """Channels preferring the foreground: (B, c) pooled features of foreground-only and of
    background-only versions of the same images -> (c,) bool, where the mean activation on the
    foreground exceeds the mean activation on the background."""
    r_fg, r_bg = fg_features.float().mean(0), bg_features.float().mean(0)
    return (r_fg - r_bg) / (r_fg.abs() + r_bg.abs() + 1e-8) > 0


@torch.no_grad()
def foreground_share(weights: Tensor, fg_channels: Tensor) -> Tensor:
    """Share of a_t's weight (L1) on foreground-preferring channels: (B, n, c) -> (B, n).
    A uniform a_t gives the fraction of such channels, ``fg_channels.float().mean()``."""
    w = weights.abs()
    return (w * fg_channels.to(w.dtype)).sum(-1) / w.sum(-1).clamp_min(1e-12)


def gradient_cosine(first: Sequence[Optional[Tensor]], second: Sequence[Optional[Tensor]],
                    params: Sequence[Tensor]) -> Tensor:
    """Cosine between two gradients of the same parameters, each a sequence of per-parameter
    tensors (``None`` for an unused parameter counts as zeros); 0 when either is zero."""
    def flat(grads: Sequence[Optional[Tensor]]) -> Tensor:
        return torch.cat([(torch.zeros_like(p) if g is None else g.detach()).reshape(-1).float()
                          for g, p in zip(grads, params)])

    return F.cosine_similarity(flat(first), flat(second), dim=0, eps=1e-30)
