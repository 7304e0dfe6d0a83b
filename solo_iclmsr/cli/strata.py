"""``solo-iclmsr strata``: what f_msr's strata look at, as maps over images (a PNG).

For a pretraining checkpoint of an ICL-MSR run and the images of its probe set (the built-in
test images; a masked set given by ``diagnostics.masks``; else the first training images), each
row shows an image, its mask where there is one, and one map per stratum a_t:

* when the backbone's last feature map is larger than 1x1, the activation map weighted by the
  stratum, ReLU(sum_r a_{t,r} Z_r) (Grad-CAM-style: the gradient of the stratum's pooled score
  sum_r a_{t,r} pool(Z)_r with respect to Z_r is a_{t,r} / hw, so Grad-CAM's channel weights are
  the stratum's own);
* with a 1x1 last map there is no spatial map, so the drop of the stratum's pooled score when
  an 8x8 gray patch hides each position (occlusion sensitivity) stands in for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from solo_iclmsr.core import channel_weights

__all__ = ["stratum_maps", "render_strata"]


@torch.no_grad()
def stratum_maps(backbone: nn.Module, x: Tensor, weights: Tensor, patch: int = 8,
                 stride: int = 4) -> Tensor:
    """Where each stratum looks: (B, n, H, W) in [0, 1] for normalised images x (B, 3, H, W)
    and A_s (B, n, c) (see the module docstring for the two kinds of map)."""
    from solo_iclmsr.plugin.backbones import feature_map

    b, _, h, w = x.shape
    scale = channel_weights(weights)  # (B, n, c)
    z = feature_map(backbone, x)  # (B, c, h', w')
    if z.shape[-1] > 1 and z.shape[-2] > 1:
        maps = torch.einsum("bnc,bchw->bnhw", scale, z).relu()
        maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)
    else:
        score = lambda inp: torch.einsum("bnc,bc->bn", scale, backbone(inp))  # noqa: E731
        base = score(x)
        maps = x.new_zeros(b, scale.shape[1], h, w)
        count = x.new_zeros(1, 1, h, w)
        for i in range(0, h - patch + 1, stride):
            for j in range(0, w - patch + 1, stride):
                hidden = x.clone()
                hidden[..., i:i + patch, j:j + patch] = 0.0  # normalised gray is close to 0
                maps[..., i:i + patch, j:j + patch] += (base - score(hidden)).relu()[..., None, None]
                count[..., i:i + patch, j:j + patch] += 1
        maps = maps / count.clamp_min(1)
    lo = maps.flatten(2).min(-1).values[..., None, None]
    hi = maps.flatten(2).max(-1).values[..., None, None]
    return (maps - lo) / (hi - lo + 1e-8)


def render_strata(checkpoint: str, out: str, images: int = 6, overrides: Sequence[str] = (),
                  title: Optional[str] = None) -> Path:
    """Write the stratum maps of a checkpoint's model on its probe images to ``out`` (PNG).

    Args:
        checkpoint: a pretraining checkpoint of an ICL-MSR run (``args.json`` beside it).
        out: the PNG to write.
        images: how many images (rows).
        overrides: ``key=value`` changes of the run's config (e.g. ``diagnostics.masks=coco
            diagnostics.annotations=... diagnostics.image_root=...`` or ``data.train_path=...``).
        title: a title for the figure.

    Raises:
        ValueError: the checkpoint is not of an ICL-MSR run, or there are no images.
    """
    import matplotlib
    import yaml

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from omegaconf import OmegaConf

    from solo_iclmsr.runs.checkpoints import load_pretrained
    from solo_iclmsr.config import validate_project_keys
    from solo_iclmsr.data.augment import build_multiview_augmentation
    from solo_iclmsr.data.loaders import pretrain_dataset
    from solo_iclmsr.data.probe import probe_set

    model, cfg = load_pretrained(checkpoint)
    if not model.iclmsr.enabled:
        raise ValueError(f"checkpoint={checkpoint!r} is of a run without ICL-MSR "
                         f"(iclmsr.enabled=false): it has no strata to show.")
    for item in overrides:
        key, _, value = item.lstrip("+").partition("=")
        OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None, force_add=True)
    OmegaConf.update(cfg, "diagnostics.images", images, force_add=True)
    validate_project_keys(cfg)
    probe = probe_set(cfg, None if cfg.data.dataset == "builtin" else pretrain_dataset(cfg))
    if probe is None or len(probe) == 0:
        raise ValueError("no images to show: give data.train_path or diagnostics.masks.")
    augmentation = build_multiview_augmentation(cfg.augmentations, cfg.data.dataset)
    x = augmentation.raw_view(probe.images[:images])
    with torch.no_grad():
        weights = model._proposals(x)
        maps = stratum_maps(model.backbone, x, weights)
    n, rows = weights.shape[1], x.shape[0]
    extra = 1 + (probe.masks is not None)
    fig, axes = plt.subplots(rows, n + extra, figsize=(1.3 * (n + extra), 1.3 * rows), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(probe.images[r].permute(1, 2, 0).numpy())
        if probe.masks is not None:
            axes[r, 1].imshow(probe.masks[r].numpy(), cmap="gray")
        for t in range(n):
            axes[r, extra + t].imshow(maps[r, t].numpy(), cmap="magma", vmin=0, vmax=1)
            if r == 0:
                axes[r, extra + t].set_title(f"a_{t + 1}", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
