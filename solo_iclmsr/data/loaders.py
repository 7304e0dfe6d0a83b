"""The data of a run, from a prepared config: solo-learn's datasets, the project's built-in one.

Pretraining follows ``main_pretrain.py``: the training set is solo's ``prepare_datasets`` (CIFAR,
STL-10, ImageNet, custom folders; image folders or h5) and the validation loader solo's
``prepare_data`` of ``classification_dataloader``. What differs is the evaluation transform of a
dataset without a fixed recipe of solo's (``custom``, ImageNet at another size), which follows
the run's crop size and normalisation (``eval_transforms.py``), and the transform of the
training set: with ``data.augment_on_device: true`` (default) each item is the raw image as a
fixed-size ``uint8`` tensor (:class:`RawImage`) and the views are made on the training device
(``data/augment.py``); with ``false``, solo's own per-image pipeline runs in the loader workers.

Checks before any training: a missing dataset that cannot be downloaded, an unreadable image of a
custom folder (named), and a training set smaller than one batch each fail in one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from solo_iclmsr.data.builtin import BuiltinSpec
from solo_iclmsr.data.datasets import IMAGE_EXTENSIONS, BuiltinDataset, _open_image, _resize_square
from solo_iclmsr.data.eval_transforms import run_recipe

__all__ = ["RawImage", "raw_image_size", "builtin_spec", "pretrain_dataset", "pretrain_loader",
           "validation_loader", "check_images_readable", "EvalImages", "builtin_eval_sets",
           "masked_dataset", "evaluation_sets", "TEST_VERSIONS"]

#: The test versions of each kind of evaluation data (``evaluation_sets``).
TEST_VERSIONS = {"builtin": ("full", "fg", "decorrelated"), "masked": ("full", "fg", "bg"),
                 "solo": ("val",)}

#: Side of the raw images handed to the device augmentation, by dataset (``data.image_size``).
RAW_SIZES = {"cifar10": 32, "cifar100": 32, "stl10": 96}
DEFAULT_RAW_SIZE = 256


class RawImage:
    """PIL image -> ``uint8`` tensor (3, S, S): the shorter side resized to S (antialiased
    bilinear), then a centre crop. Batches must stack, so the images are brought to one size in
    the loader; the random resized crop then happens on the device, from this image."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, img: Any) -> torch.Tensor:
        if isinstance(img, torch.Tensor):
            return _resize_square(img, self.size)
        arr = np.asarray(img.convert("RGB"))  # (H, W, 3) uint8
        return _resize_square(torch.from_numpy(arr.copy()).permute(2, 0, 1), self.size)

    def __repr__(self) -> str:
        return f"RawImage(size={self.size})"


def builtin_spec(cfg: DictConfig) -> BuiltinSpec:
    """The generator settings of ``data.builtin``."""
    b = cfg.data.builtin
    return BuiltinSpec(image_size=b.image_size, num_classes=b.num_classes, rho=b.rho, seed=b.seed,
                       n_train=b.n_train, n_test=b.n_test)


def raw_image_size(cfg: DictConfig) -> int:
    """``data.image_size``, else the dataset's own size (32 for CIFAR, 96 for STL-10, the
    generator's for the built-in set), else 256."""
    size = OmegaConf.select(cfg, "data.image_size", default=None)
    if size is not None:
        return int(size)
    if cfg.data.dataset == "builtin":
        return int(cfg.data.builtin.image_size)
    return RAW_SIZES.get(cfg.data.dataset, DEFAULT_RAW_SIZE)


def _solo_transform(cfg: DictConfig) -> Callable:
    """solo's own per-image multi-crop pipeline (``main_pretrain.py``)."""
    from solo.data.pretrain_dataloader import (FullTransformPipeline, NCropAugmentation,
                                               build_transform_pipeline)

    return FullTransformPipeline([NCropAugmentation(build_transform_pipeline(cfg.data.dataset, a),
                                                    a.num_crops) for a in cfg.augmentations])


def _fetching(dataset: str, path: Any, build: Callable[[], Any]) -> Any:
    """solo's dataset constructors download CIFAR and STL-10 when they are missing; a failed
    download (no network) or a missing folder becomes one line."""
    try:
        return build()
    except (OSError, RuntimeError) as error:
        reason = " ".join(str(error).split())[:200]
        raise FileNotFoundError(
            f"data.train_path={str(path)!r}: the {dataset} data is not there and could not be "
            f"fetched ({reason}); put it there (solo's layout) or fix data.train_path.") from None


def check_images_readable(root: Path, what: str = "data.train_path") -> int:
    """Open every image under ``root`` (a custom folder, a test folder) before training starts;
    an unreadable one fails in one line naming the file (and ``what`` gave the folder). Returns
    the number of images checked."""
    count = 0
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                with _open_image(path) as im:
                    im.verify()
            except OSError as error:
                raise OSError(f"{error}; remove or replace it ({what}={str(root)!r}).") from None
            count += 1
    return count


def pretrain_dataset(cfg: DictConfig) -> Dataset:
    """The training set of ``main_pretrain.py`` for this config (see the module docstring)."""
    data = cfg.data
    on_device = OmegaConf.select(cfg, "data.augment_on_device", default=True)
    if data.dataset == "builtin":
        if not on_device:
            raise ValueError("data.augment_on_device=false is not available for the built-in "
                             "dataset: its images are arrays, not files; set it to true.")
        return BuiltinDataset(data.builtin.root, "train", data.builtin.variant, builtin_spec(cfg))
    from solo.data.pretrain_dataloader import prepare_datasets

    path = data.train_path
    if data.dataset in ("custom", "imagenet", "imagenet100") and data.format != "h5":
        if not Path(str(path)).is_dir():
            raise FileNotFoundError(f"data.train_path={str(path)!r} is not a folder: expected "
                                    f"{path}/<class>/<image> (or a flat folder of images for a "
                                    f"custom set with data.no_labels=true).")
        if data.dataset == "custom":
            check_images_readable(Path(str(path)))
    transform = RawImage(raw_image_size(cfg)) if on_device else _solo_transform(cfg)
    data_format = "image_folder" if data.format == "dali" else data.format
    return _fetching(data.dataset, path, lambda: prepare_datasets(
        data.dataset, transform, train_data_path=path, data_format=data_format,
        no_labels=data.no_labels, data_fraction=data.fraction))


def pretrain_loader(cfg: DictConfig, dataset: Dataset) -> DataLoader:
    """solo's training loader (shuffled, last incomplete batch dropped); a set smaller than one
    batch fails in one line instead of training on nothing."""
    batch_size = int(cfg.optimizer.batch_size)
    if len(dataset) < batch_size:
        raise ValueError(f"the training set has {len(dataset)} images, fewer than one batch "
                         f"(optimizer.batch_size={batch_size}), and the last incomplete batch is "
                         f"dropped: lower optimizer.batch_size or add data.")
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                      num_workers=int(cfg.data.num_workers), pin_memory=torch.cuda.is_available(),
                      persistent_workers=int(cfg.data.num_workers) > 0)


class EvalImages(Dataset):
    """Raw ``(index, uint8 image, label)`` items as solo's evaluation items ``(x, label)``: the
    image resized to ``size`` and normalised."""

    def __init__(self, dataset: Dataset, size: int, mean: Tuple[float, ...],
                 std: Tuple[float, ...]) -> None:
        self.dataset, self.size = dataset, size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        _, image, label = self.dataset[index]
        x = _resize_square(image, self.size).float() / 255.0
        return (x - self.mean) / self.std, label


def validation_loader(cfg: DictConfig) -> Optional[DataLoader]:
    """The validation loader of ``main_pretrain.py`` (none for a custom set without labels or
    without ``data.val_path``, nor for ImageNet without ``data.val_path``); the built-in set
    validates on its test split."""
    data = cfg.data
    if data.dataset == "custom" and (data.no_labels or data.val_path is None):
        return None
    if data.dataset in ("imagenet100", "imagenet") and data.val_path is None:
        return None
    batch_size, workers = int(cfg.optimizer.batch_size), int(data.num_workers)
    if data.dataset == "builtin":
        from solo_iclmsr.data.augment import mean_std

        entry = cfg.augmentations[0]
        test = BuiltinDataset(data.builtin.root, "test", "full", builtin_spec(cfg))
        return DataLoader(EvalImages(test, int(entry.crop_size), *mean_std("builtin", entry)),
                          batch_size=batch_size, num_workers=workers)
    from solo.data.classification_dataloader import prepare_data

    val_format = "image_folder" if data.format == "dali" else data.format
    recipe = run_recipe(cfg)
    if recipe.fixed:
        _, loader = _fetching(data.dataset, data.val_path, lambda: prepare_data(
            data.dataset, train_data_path=data.train_path, val_data_path=data.val_path,
            data_format=val_format, batch_size=batch_size, num_workers=workers))
        return loader
    _, val = _solo_sets(cfg, recipe.eval_transform())
    return DataLoader(val, batch_size=batch_size, num_workers=workers,
                      pin_memory=torch.cuda.is_available())


def _solo_sets(cfg: DictConfig, transform: Callable, val: bool = True) -> Tuple[Dataset, Any]:
    """solo's classification datasets of ``data.train_path`` and ``data.val_path`` (the latter
    ``None`` when ``val`` is false), both with ``transform``."""
    from solo.data.classification_dataloader import prepare_datasets

    data = cfg.data
    data_format = "image_folder" if data.format == "dali" else data.format
    if not val and data.dataset in ("custom", "imagenet", "imagenet100") and data_format != "h5":
        from torchvision.datasets import ImageFolder

        path = str(data.train_path)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"data.train_path={path!r} is not a folder: expected "
                                    f"{path}/<class>/<image>.")
        return ImageFolder(path, transform), None
    train, val_set = _fetching(data.dataset, data.train_path, lambda: prepare_datasets(
        data.dataset, T_train=transform, T_val=transform, train_data_path=data.train_path,
        val_data_path=data.val_path if val else data.train_path, data_format=data_format))
    return train, (val_set if val else None)


def builtin_eval_sets(cfg: DictConfig, train_variant: Optional[str] = None,
                      entry: Optional[DictConfig] = None) -> Tuple[Dataset, Dict[str, Dataset]]:
    """Evaluation sets of the built-in dataset as solo's ``(x, label)`` items: its training split
    (``data.builtin.variant``, or ``train_variant``) and the test split in its three versions,
    ``full``, ``fg`` (foreground on gray) and ``decorrelated`` (background independent of the
    class), at the crop size and normalisation of ``entry`` (default: the first pretraining
    pipeline, ``augmentations[0]``; a linear config gives ``data.augmentations``)."""
    from solo_iclmsr.data.augment import mean_std

    entry = cfg.augmentations[0] if entry is None else entry
    spec, root = builtin_spec(cfg), cfg.data.builtin.root
    stats = (int(entry.crop_size), *mean_std("builtin", entry))
    train = BuiltinDataset(root, "train", train_variant or cfg.data.builtin.variant, spec)
    tests = {v: EvalImages(BuiltinDataset(root, "test", v, spec), *stats)
             for v in ("full", "fg", "decorrelated")}
    return EvalImages(train, *stats), tests


def masked_dataset(cfg: DictConfig, variant: str = "full") -> Dataset:
    """The dataset with foreground masks a config names in ``diagnostics`` (``masks: coco`` or
    ``folder``), in one variant (``full``, ``fg``, ``bg``), at the raw image size of the run."""
    from solo_iclmsr.data.masks import CocoMaskDataset, MaskFolderDataset

    size, d = raw_image_size(cfg), cfg.diagnostics
    if d.masks == "coco":
        return CocoMaskDataset(d.annotations, d.image_root, image_size=size, variant=variant)
    return MaskFolderDataset(d.image_root, image_size=size, variant=variant,
                             masks_root=d.masks_root,
                             mask_suffix=None if d.masks_root else d.mask_suffix)


def evaluation_sets(cfg: DictConfig, entry: Optional[DictConfig] = None,
                    val_required: bool = True) -> Tuple[Dataset, Dict[str, Dataset]]:
    """The training set (k-NN bank, linear probe) and every test version of a run's data, as
    solo's ``(x, label)`` items (``TEST_VERSIONS``):

    * the built-in set: its training split and the test split ``full`` / ``fg`` /
      ``decorrelated`` (``builtin_eval_sets``);
    * a dataset with foreground masks (``diagnostics.masks``): a fixed fifth of each label held
      out (``masks.held_out_split``) in ``full`` / ``fg`` / ``bg``; for training, the run's own
      training images when they are a labelled custom folder (their classes, sorted, must be
      the masked set's labels), else the masked set's other four fifths;
    * any other dataset: solo's classification datasets of ``data.train_path`` and
      ``data.val_path`` (``val``; none without a ``data.val_path`` when not ``val_required``),
      with the run's evaluation transform (``data/eval_transforms.py``: solo's recipe of CIFAR,
      STL-10 and ImageNet at 224; the run's crop size and normalisation for the others).

    ``entry`` gives the crop size and normalisation (default ``augmentations[0]``).
    """
    data = cfg.data
    if data.dataset == "builtin":
        return builtin_eval_sets(cfg, entry=entry)
    if OmegaConf.select(cfg, "diagnostics.masks", default=None) is not None:
        from torch.utils.data import Subset

        from solo_iclmsr.data.augment import mean_std
        from solo_iclmsr.data.masks import held_out_split

        entry = cfg.augmentations[0] if entry is None else entry
        stats = (int(entry.crop_size), *mean_std(data.dataset, entry))
        full = masked_dataset(cfg)
        train, test = held_out_split(full.labels)
        if data.dataset == "custom" and not data.get("no_labels", False) and data.train_path:
            from solo_iclmsr.data.datasets import FolderImageDataset

            bank = FolderImageDataset(str(data.train_path), raw_image_size(cfg))
        else:
            bank = Subset(full, train)
        return (EvalImages(bank, *stats),
                {v: EvalImages(Subset(masked_dataset(cfg, v), test), *stats)
                 for v in TEST_VERSIONS["masked"]})
    if data.val_path is None and val_required:
        raise FileNotFoundError(f"data.val_path is not set: the {data.dataset} run has no "
                                f"validation set to evaluate on; set it, add test folders "
                                f"(--test), or evaluate a dataset with masks through "
                                f"diagnostics.masks.")
    transform = run_recipe(cfg, entry).eval_transform()
    train, val = _solo_sets(cfg, transform, val=data.val_path is not None)
    return train, ({} if val is None else {"val": val})
