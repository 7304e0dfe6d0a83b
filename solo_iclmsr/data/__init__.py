"""Raw-image datasets (augmentation happens on the device), the built-in confounded dataset, and
datasets of real images with foreground masks (COCO instances, folders of mask PNGs).

Example:
    >>> from solo_iclmsr.data import build_dataset, make_dataloader
    >>> ds = build_dataset("builtin", split="train")            # generated once, then cached
    >>> index, images, labels = next(iter(make_dataloader(ds, batch_size=256)))
    >>> images.dtype, images.shape
    (torch.uint8, torch.Size([256, 3, 32, 32]))
"""

from .augment import MultiViewAugmentation, ViewPipeline, build_multiview_augmentation, mean_std
from .builtin import (
    DEFAULT_BUILTIN_ROOT,
    NEUTRAL_GRAY,
    SHAPE_NAMES,
    TEXTURE_NAMES,
    BuiltinSpec,
    builtin_cache_path,
    foreground_only,
    generate_builtin,
    load_builtin,
)
from .datasets import (
    DATASET_NAMES,
    DEFAULT_IMAGE_SIZE,
    ArrayImageDataset,
    BuiltinDataset,
    FolderImageDataset,
    RawImageDataset,
    build_dataset,
    make_dataloader,
    stratified_indices,
)
from .masks import MASK_VARIANTS, CocoMaskDataset, MaskedImageDataset, MaskFolderDataset, apply_variant

__all__ = [
    "MultiViewAugmentation",
    "ViewPipeline",
    "build_multiview_augmentation",
    "mean_std",
    "DEFAULT_BUILTIN_ROOT",
    "NEUTRAL_GRAY",
    "SHAPE_NAMES",
    "TEXTURE_NAMES",
    "BuiltinSpec",
    "builtin_cache_path",
    "foreground_only",
    "generate_builtin",
    "load_builtin",
    "DATASET_NAMES",
    "DEFAULT_IMAGE_SIZE",
    "ArrayImageDataset",
    "BuiltinDataset",
    "FolderImageDataset",
    "RawImageDataset",
    "build_dataset",
    "make_dataloader",
    "stratified_indices",
    "MASK_VARIANTS",
    "CocoMaskDataset",
    "MaskedImageDataset",
    "MaskFolderDataset",
    "apply_variant",
]
