"""Normalisation statistics by dataset: one table for training views, f_msr's input and
evaluation (solo-learn's values; tinyimagenet and builtin are this project's additions)."""

from typing import Dict, Optional, Sequence, Tuple

Stats = Tuple[Tuple[float, float, float], Tuple[float, float, float]]

IMAGENET_MEAN_STD: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

DATASET_MEAN_STD: Dict[str, Stats] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "imagenet100": IMAGENET_MEAN_STD,
    "imagenet": IMAGENET_MEAN_STD,
    "builtin": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


def dataset_mean_std(dataset: Optional[str], mean: Optional[Sequence[float]] = None,
                     std: Optional[Sequence[float]] = None) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The given ``mean``/``std``, else the dataset's entry, else ImageNet's (e.g. ``custom``)."""
    base_mean, base_std = DATASET_MEAN_STD.get(dataset or "", IMAGENET_MEAN_STD)
    return tuple(mean or base_mean), tuple(std or base_std)
