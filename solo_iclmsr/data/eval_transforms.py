"""The evaluation transform of a run: solo's fixed recipe where a dataset has one, the run's own
crop size and normalisation everywhere else.

solo-learn's ``prepare_transforms`` evaluates CIFAR at 32 px, STL-10 at 96 px and ImageNet(-100)
with a resize to 256 and a centre crop of 224, and a ``custom`` folder with the ImageNet recipe
whatever size the run trained at (a run of 32 px images is then evaluated on 224 px upsamples,
slower and less accurate). Here a dataset keeps solo's recipe when the run's crop is the size of
that recipe (CIFAR at 32, STL-10 at 96, ImageNet at 224); every other run (a ``custom`` folder,
an ImageNet folder at another size, CIFAR upsampled) is evaluated as it trained: the shorter side
resized to crop / 0.875, a centre crop of the crop size, the run's normalisation. The training
transform of the linear probe follows the same rule (solo's random resized crop and flip, at the
run's crop size). A ``custom`` run at 224 px with ImageNet's statistics gets solo's recipe either
way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

from omegaconf import OmegaConf

__all__ = ["FIXED_SIZES", "CENTRE_CROP_SHARE", "EvalRecipe", "recipe_of", "run_recipe"]

#: The datasets with a recipe of solo's own, and the crop size it is made for.
FIXED_SIZES = {"cifar10": 32, "cifar100": 32, "stl10": 96, "imagenet": 224, "imagenet100": 224}
#: The share of the resized image the centre crop keeps (224 of 256).
CENTRE_CROP_SHARE = 0.875

Triple = Tuple[float, float, float]


@dataclass(frozen=True)
class EvalRecipe:
    """How a run's images are evaluated: the dataset, the crop size and the normalisation."""

    dataset: str
    crop_size: int
    mean: Triple
    std: Triple

    @property
    def fixed(self) -> bool:
        """Whether solo's own recipe of the dataset applies (the crop is its size)."""
        return FIXED_SIZES.get(self.dataset) == self.crop_size

    @property
    def resize(self) -> int:
        """The side the shorter side is resized to before the centre crop."""
        return int(round(self.crop_size / CENTRE_CROP_SHARE))

    def describe(self) -> str:
        """One line: what the transform does."""
        if self.fixed:
            return f"solo's {self.dataset} recipe"
        return f"resize {self.resize}, centre crop {self.crop_size}, the run's normalisation"

    def eval_transform(self, any_size: bool = False) -> Callable:
        """PIL image -> normalised tensor (3, crop, crop). ``any_size``: the images may be of
        any size (a user's test folder), so CIFAR's recipe, which has no resize, gets one."""
        from torchvision import transforms

        if self.fixed:
            from solo.data.classification_dataloader import prepare_transforms

            _, solo_val = prepare_transforms(self.dataset)
            if any_size and self.dataset in ("cifar10", "cifar100"):
                return transforms.Compose([transforms.Resize(self.crop_size),
                                           transforms.CenterCrop(self.crop_size), solo_val])
            return solo_val
        return transforms.Compose([transforms.Resize(self.resize),
                                   transforms.CenterCrop(self.crop_size), transforms.ToTensor(),
                                   transforms.Normalize(self.mean, self.std)])

    def train_transform(self, auto_augment: bool = False) -> Callable:
        """The training transform of the linear probe: solo's (``prepare_data``) for a fixed
        recipe; else a random resized crop (scale 0.08-1) and a flip at the crop size, or timm's
        RandAugment pipeline at that size with ``auto_augment``."""
        from torchvision import transforms

        if self.fixed and not auto_augment:
            from solo.data.classification_dataloader import prepare_transforms

            return prepare_transforms(self.dataset)[0]
        if auto_augment:
            from timm.data import create_transform

            size = 224 if self.fixed else self.crop_size  # solo's auto_augment is at 224
            return create_transform(input_size=size, is_training=True, color_jitter=None,
                                    auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic",
                                    re_prob=0.25, re_mode="pixel", re_count=1, mean=self.mean,
                                    std=self.std)
        return transforms.Compose([transforms.RandomResizedCrop(self.crop_size, scale=(0.08, 1.0)),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                   transforms.Normalize(self.mean, self.std)])


def recipe_of(dataset: str, entry: Any = None) -> EvalRecipe:
    """The recipe of a run on ``dataset`` whose views are ``entry`` (an ``augmentations`` entry,
    or a linear config's ``data.augmentations``: ``crop_size``, optional ``mean``/``std``);
    without an entry, or one without a crop size, the crop of solo's recipe (224 for a
    dataset without one of its own).

    Raises:
        ValueError: a crop size that is not a positive integer, or a bad ``mean``/``std``.
    """
    from solo_iclmsr.data.augment import mean_std

    crop = entry.get("crop_size") if entry is not None else None
    crop = FIXED_SIZES.get(dataset, 224) if crop is None else crop
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < 1:
        raise ValueError(f"crop_size={crop!r} is invalid: expected a positive integer.")
    mean, std = mean_std(dataset, entry)
    return EvalRecipe(str(dataset), int(crop), mean, std)


def run_recipe(cfg: Any, entry: Optional[Any] = None) -> EvalRecipe:
    """The recipe of a pretraining config (its first view, ``augmentations[0]``), or of
    ``entry`` when given."""
    if entry is None:
        views = OmegaConf.select(cfg, "augmentations", default=None)
        entry = views[0] if views else None
    return recipe_of(str(cfg.data.dataset), entry)
