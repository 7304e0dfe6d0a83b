"""Held-out images to look at the strata with: the probe set of ``diagnostics``.

A probe set is a few hundred raw images, with their labels, their foreground masks where masks
exist, and other groupings of the images that say what they show (the built-in set's background
type). The built-in dataset supplies all of it from its test split; a COCO instances file or a
folder of mask PNGs (``diagnostics.masks``) supplies images, masks and labels for real data;
otherwise the first images of the training set, without masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import Dataset

from solo_iclmsr.data.builtin import load_builtin

__all__ = ["ProbeSet", "probe_set", "probe_from_dataset"]


@dataclass
class ProbeSet:
    """Images to probe the strata with.

    Attributes:
        images: (N, 3, S, S) uint8 raw images.
        masks: (N, S, S) uint8 foreground masks in {0, 1}, or ``None``.
        groups: named (N,) integer groupings of the images (``class``, ``background``, ...).
    """

    images: Tensor
    masks: Optional[Tensor] = None
    groups: Dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)


def probe_from_dataset(dataset: Dataset, count: int, masked: bool = False) -> ProbeSet:
    """The first ``count`` items of a raw-image dataset (``(index, image, label)`` items; with
    ``masked``, a dataset with ``mask(index)``)."""
    count = min(count, len(dataset))
    items = [dataset[i] for i in range(count)]
    images = torch.stack([image for _, image, _ in items])
    labels = torch.as_tensor([int(label) for _, _, label in items])
    masks = torch.stack([dataset.mask(i) for i in range(count)]) if masked else None
    groups = {"class": labels} if bool((labels >= 0).all()) else {}
    return ProbeSet(images, masks, groups)


def probe_set(cfg: DictConfig, train_set: Optional[Dataset] = None) -> Optional[ProbeSet]:
    """The probe set of a prepared pretraining config (see the module docstring); ``None`` when
    there is nothing to probe with."""
    count = int(cfg.diagnostics.images)
    masks = cfg.diagnostics.masks
    if cfg.data.dataset == "builtin" and masks is None:
        from solo_iclmsr.data.loaders import builtin_spec

        data = load_builtin(builtin_spec(cfg), "test", cfg.data.builtin.root)
        return ProbeSet(torch.from_numpy(data["full"][:count]), torch.from_numpy(data["mask"][:count]),
                        {"class": torch.from_numpy(data["labels"][:count]),
                         "background": torch.from_numpy(data["bg_type"][:count])})
    if masks is not None:
        from solo_iclmsr.data.loaders import masked_dataset

        return probe_from_dataset(masked_dataset(cfg), count, masked=True)
    if train_set is None or len(train_set) == 0:
        return None
    first = train_set[0]
    if not (isinstance(first[1], Tensor) and first[1].dtype == torch.uint8):
        return None  # solo's per-image pipeline: the loader gives views, not raw images
    return probe_from_dataset(train_set, count)
