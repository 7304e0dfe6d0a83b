"""Raw-image datasets (augmentation happens on the device) and the built-in confounded dataset.

Example:
    >>> from solo_iclmsr.data import build_dataset, make_dataloader
    >>> ds = build_dataset("builtin", split="train")            # generated once, then cached
    >>> index, images, labels = next(iter(make_dataloader(ds, batch_size=256)))
    >>> images.dtype, images.shape
    (torch.uint8, torch.Size([256, 3, 32, 32]))
"""

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

__all__ = [
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
]
