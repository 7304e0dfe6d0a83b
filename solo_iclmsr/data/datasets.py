"""Datasets that yield raw uint8 images; the augmentation happens later, on the device.

Every dataset here returns ``(index, image, label)`` like solo-learn's pretrain datasets, except
that ``image`` is the raw ``uint8`` tensor (3, S, S) rather than a list of augmented views: the
views are made on the device by :class:`solo_iclmsr.augment.MultiViewAugmentation`. Unlabelled
images have label -1.

Fixed size on the CPU side (a decision): batches must stack, so every image is brought to
``image_size x image_size`` with a deterministic resize of the shorter side (antialiased bilinear)
followed by a centre crop; no random crop happens on the CPU. The random resized crop of the
config then crops from this fixed-size image on the device. solo-learn crops from the
full-resolution image instead, so for ImageNet-like data keep ``image_size`` above the crop size
(default 256 for a 224 crop); the corners that the centre crop removes from non-square images are
never seen.

Datasets never download unless ``download=True`` (torchvision's CIFAR and STL-10 only); a missing
dataset fails at once with a one-line :class:`FileNotFoundError` giving the path and the expected
layout.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .builtin import BuiltinSpec, foreground_only, load_builtin

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_IMAGE_SIZE",
    "IMAGE_EXTENSIONS",
    "RawImageDataset",
    "ArrayImageDataset",
    "FolderImageDataset",
    "BuiltinDataset",
    "build_dataset",
    "make_dataloader",
    "stratified_indices",
]

DATASET_NAMES = (
    "builtin",
    "cifar10",
    "cifar100",
    "stl10",
    "tinyimagenet",
    "imagenet100",
    "imagenet",
    "custom",
)
# Side of the stored images when ``image_size`` is not given.
DEFAULT_IMAGE_SIZE = {
    "builtin": 32,
    "cifar10": 32,
    "cifar100": 32,
    "stl10": 96,
    "tinyimagenet": 64,
    "imagenet100": 256,
    "imagenet": 256,
    "custom": 256,
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

PathLike = Union[str, Path]


def stratified_indices(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """A deterministic stratified subset: ``round(fraction * n_c)`` (at least 1) of each class.

    Args:
        labels: (N,) integer labels (-1, unlabelled, is one stratum like any other).
        fraction: share of each class to keep, in (0, 1].
        seed: seed of the permutation inside each class.

    Returns:
        Sorted (M,) int64 indices into ``labels``.

    Raises:
        ValueError: if ``fraction`` is not in (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction!r} is invalid: expected a value in (0, 1]")
    labels = np.asarray(labels)
    if fraction == 1.0:
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        k = max(1, int(round(fraction * len(idx))))
        keep.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(keep)).astype(np.int64)


def _square_geometry(h: int, w: int, size: int) -> Tuple[int, int, int, int]:
    """Resized shape and crop offsets of the shorter-side resize + centre crop:
    ``(new_h, new_w, top, left)``."""
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    return nh, nw, (nh - size) // 2, (nw - size) // 2


def _resize_square(img: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to ``size`` (antialiased bilinear), then centre crop: (3, H, W) uint8 ->
    (3, size, size) uint8."""
    h, w = img.shape[-2:]
    if (h, w) == (size, size):
        return img
    nh, nw, top, left = _square_geometry(h, w, size)
    x = img[None].float()  # (1, 3, H, W)
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    x = x[0, :, top : top + size, left : left + size]
    return x.round().clamp(0, 255).to(torch.uint8)


def _resize_mask_square(mask: torch.Tensor, size: int) -> torch.Tensor:
    """The geometry of :func:`_resize_square` with nearest-neighbour sampling (pixel centres), so a
    mask stays binary: (H, W), non-zero = on -> (size, size) uint8 in {0, 1}."""
    m = (mask != 0).to(torch.uint8)
    h, w = m.shape[-2:]
    if (h, w) == (size, size):
        return m
    nh, nw, top, left = _square_geometry(h, w, size)
    x = F.interpolate(m[None, None].float(), size=(nh, nw), mode="nearest-exact")
    return x[0, 0, top : top + size, left : left + size].to(torch.uint8)


@contextlib.contextmanager
def _open_image(path: Path, what: str = "image") -> Iterator[Any]:
    """``PIL.Image.open(path)`` whose failures (here or while decoding in the block) become one
    ``OSError`` line naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            yield im
    except Exception as err:  # PIL raises several types for unreadable files
        reason = " ".join(str(err).split()) or type(err).__name__
        raise OSError(f"cannot read {what} {path}: {reason}") from err


def _read_array(path: Path, mode: Optional[str] = "RGB", what: str = "image") -> np.ndarray:
    """Pixels of an image file, converted to PIL ``mode`` (``None`` keeps the stored mode).

    Raises:
        OSError: one line naming the file when it is missing or cannot be decoded.
    """
    with _open_image(path, what) as im:
        return np.array(im.convert(mode) if mode else im)


class RawImageDataset(Dataset):
    """Base class: ``(index, image uint8 (3, S, S), label)`` items over an optional subset.

    Subclasses set ``self.targets`` ((N,) int64 labels of the full dataset, -1 when unlabelled)
    and implement ``_load(i) -> (3, S, S) uint8``. ``index`` is the position in this (possibly
    subsetted) dataset, as solo-learn's ``dataset_with_index`` gives.

    Args:
        image_size: side S of the returned images.
        fraction: keep a stratified ``fraction`` of each class (1.0 keeps all).
        seed: seed of the stratified subset.
    """

    targets: np.ndarray

    def __init__(self, image_size: int, fraction: float = 1.0, seed: int = 0) -> None:
        if not (isinstance(image_size, int) and image_size >= 1):
            raise ValueError(f"image_size={image_size!r} is invalid: expected an integer >= 1")
        self.image_size = image_size
        self.fraction = fraction
        self.seed = seed
        self.indices: np.ndarray = np.arange(0)

    def _finalize(self) -> None:
        """Call at the end of a subclass's ``__init__``, once ``targets`` is set."""
        self.targets = np.asarray(self.targets, dtype=np.int64)
        self.indices = stratified_indices(self.targets, self.fraction, self.seed)

    def _load(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    @property
    def labels(self) -> np.ndarray:
        """(len(self),) int64 labels of the items, in order."""
        return self.targets[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Tuple[int, torch.Tensor, int]:
        i = int(self.indices[index])
        img = _resize_square(self._load(i), self.image_size)  # (3, S, S) uint8
        return index, img, int(self.targets[i])


class ArrayImageDataset(RawImageDataset):
    """Images held in memory as one uint8 array.

    Args:
        images: (N, 3, H, W) or, with ``channels_last=True``, (N, H, W, 3) uint8 array.
        targets: (N,) labels (-1 for unlabelled).
        image_size: side of the returned images (``None`` keeps H, which must equal W).
        channels_last: layout of ``images``.
        fraction: stratified share to keep.
        seed: seed of the subset.
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: Sequence[int],
        image_size: Optional[int] = None,
        channels_last: bool = False,
        fraction: float = 1.0,
        seed: int = 0,
    ) -> None:
        h = images.shape[1] if channels_last else images.shape[2]
        super().__init__(image_size or int(h), fraction, seed)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images dtype/shape {images.dtype}/{images.shape} is invalid: expected uint8 4-d")
        self.images = images
        self.channels_last = channels_last
        self.targets = np.asarray(targets)
        self._finalize()

    def _load(self, i: int) -> torch.Tensor:
        img = torch.from_numpy(np.ascontiguousarray(self.images[i]))
        return img.permute(2, 0, 1) if self.channels_last else img


def _list_images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class FolderImageDataset(RawImageDataset):
    """An ImageFolder tree (``root/<class>/<image>``), or a flat folder of images (label -1).

    Classes are the sorted sub-folder names (as torchvision's ``ImageFolder``); a folder with no
    sub-folder holding images is read as a flat, unlabelled folder.

    Args:
        root: the folder.
        image_size: side of the returned images (shorter side resize, then centre crop).
        fraction: stratified share to keep.
        seed: seed of the subset.

    Raises:
        FileNotFoundError: when ``root`` is missing or holds no images.
    """

    def __init__(self, root: PathLike, image_size: int, fraction: float = 1.0, seed: int = 0) -> None:
        super().__init__(image_size, fraction, seed)
        root = Path(os.path.expanduser(str(root)))
        if not root.is_dir():
            raise FileNotFoundError(
                f"{root} does not exist: expected an ImageFolder tree {root}/<class>/<image> "
                f"or a flat folder of images"
            )
        class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and self._images_in(d))
        self.samples: List[Tuple[Path, int]] = []
        if class_dirs:
            self.classes = [d.name for d in class_dirs]
            for c, d in enumerate(class_dirs):
                self.samples += [(p, c) for p in self._images_in(d)]
        else:
            self.classes = []
            self.samples = [(p, -1) for p in self._images_in(root)]
        if not self.samples:
            raise FileNotFoundError(
                f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)}): expected {root}/<class>/<image> "
                f"or {root}/<image>"
            )
        self.root = root
        self.targets = np.array([c for _, c in self.samples])
        self._finalize()

    def _images_in(self, folder: Path) -> List[Path]:
        """The image files of one folder, sorted (subclasses may leave some out)."""
        return _list_images(folder)

    def _load(self, i: int) -> torch.Tensor:
        arr = _read_array(self.samples[i][0])  # (H, W, 3) uint8
        return torch.from_numpy(arr).permute(2, 0, 1)


class BuiltinDataset(ArrayImageDataset):
    """The built-in shapes-on-textures dataset (see :mod:`solo_iclmsr.data.builtin`).

    Args:
        root: cache root (``None``: ``~/.cache/solo_iclmsr/builtin``).
        split: ``"train"`` or ``"test"``.
        variant: ``"full"`` (class-correlated background), ``"fg"`` (foreground on neutral gray)
            or ``"decorrelated"`` (background independent of the class; test split only).
        spec: generator parameters (size, classes, rho, seed, sizes).
        image_size: side of the returned images (``None`` keeps ``spec.image_size``).
        fraction: stratified share to keep.
        seed: seed of the subset.

    Attributes:
        bg_type: (N,) background type of each stored image of the chosen variant.
        mask: (N, S, S) uint8 foreground masks.
    """

    VARIANTS = ("full", "fg", "decorrelated")

    def __init__(
        self,
        root: Optional[PathLike] = None,
        split: str = "train",
        variant: str = "full",
        spec: Optional[BuiltinSpec] = None,
        image_size: Optional[int] = None,
        fraction: float = 1.0,
        seed: int = 0,
    ) -> None:
        if variant not in self.VARIANTS:
            raise ValueError(f"variant={variant!r} is invalid: expected one of {list(self.VARIANTS)}")
        if variant == "decorrelated" and split != "test":
            raise ValueError(f"variant='decorrelated' is invalid for split={split!r}: expected split='test'")
        self.spec = spec or BuiltinSpec()
        data = load_builtin(self.spec, split, root)
        if variant == "full":
            images, self.bg_type = data["full"], data["bg_type"]
        elif variant == "fg":
            images, self.bg_type = foreground_only(data["full"], data["mask"]), np.full(len(data["labels"]), -1)
        else:
            images, self.bg_type = data["decorrelated"], data["bg_type_decorrelated"]
        self.mask = data["mask"]
        self.variant = variant
        super().__init__(images, data["labels"], image_size, False, fraction, seed)


def _missing(name: str, path: Path, layout: str) -> FileNotFoundError:
    """The one-line error of a missing dataset: path, expected layout, and how to download."""
    fetch = "; pass download=True to fetch it" if name in ("cifar10", "cifar100", "stl10") else ""
    return FileNotFoundError(f"{name} not found at {path}: expected {layout}{fetch}")


def _torchvision_arrays(name: str, root: Path, split: str, download: bool) -> Tuple[np.ndarray, np.ndarray, bool]:
    """(images, targets, channels_last) of CIFAR-10/100 or STL-10 through torchvision."""
    import torchvision.datasets as tvd

    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "stl10": "stl10_binary"}[name]
    layout = f"{root / folder}/ (torchvision's {name} files)"
    if not download and not (root / folder).is_dir():
        raise _missing(name, root / folder, layout)
    try:
        if name == "stl10":
            ds = tvd.STL10(str(root), split=split, download=download)
            return ds.data, ds.labels.astype(np.int64), False  # (N, 3, 96, 96); unlabeled -> -1
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        ds = cls(str(root), train=split == "train", download=download)
        return ds.data, np.asarray(ds.targets), True  # (N, 32, 32, 3)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted."
        raise _missing(name, root / folder, layout) from err


def build_dataset(
    name: str,
    root: Optional[PathLike] = None,
    split: str = "train",
    image_size: Optional[int] = None,
    fraction: float = 1.0,
    seed: int = 0,
    download: bool = False,
    variant: str = "full",
    builtin: Optional[BuiltinSpec] = None,
) -> RawImageDataset:
    """Builds a raw-image dataset by name (no Lightning, no DataModule).

    Layouts under ``root``:
        * ``builtin``: the cache folder (generated on first use; ``None`` for the default);
        * ``cifar10`` / ``cifar100`` / ``stl10``: torchvision's files (``download=True`` fetches);
        * ``tinyimagenet``, ``imagenet100``, ``imagenet``: ``root/train/<class>/*`` and
          ``root/val/<class>/*`` (Tiny-ImageNet's official ``val/`` must first be sorted into
          class folders);
        * ``custom``: ``root/<split>/`` if it exists, else ``root`` itself; an ImageFolder tree,
          or a flat folder of images (labels -1).

    Args:
        name: one of :data:`DATASET_NAMES`.
        root: data folder (required except for ``builtin``).
        split: ``"train"``, ``"val"``/``"test"``, or ``"pretrain"`` (``train+unlabeled`` for STL-10,
            ``train`` elsewhere); STL-10 also takes ``"unlabeled"`` and ``"train+unlabeled"``.
        image_size: side of the returned images (default :data:`DEFAULT_IMAGE_SIZE`).
        fraction: stratified share of each class to keep, deterministic in ``seed``.
        seed: seed of the subset.
        download: let torchvision download CIFAR / STL-10.
        variant: builtin only: ``"full"``, ``"fg"`` or ``"decorrelated"``.
        builtin: builtin only: generator parameters.

    Returns:
        A :class:`RawImageDataset` yielding ``(index, uint8 (3, S, S), label)``.

    Raises:
        ValueError: for an unknown name or split.
        FileNotFoundError: for a missing dataset (one line: the path and the expected layout).
    """
    if name not in DATASET_NAMES:
        import difflib

        near = difflib.get_close_matches(name, DATASET_NAMES, n=1)
        hint = f" did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"dataset name={name!r} is invalid:{hint} expected one of {list(DATASET_NAMES)}")
    size = image_size or DEFAULT_IMAGE_SIZE[name]
    if name == "builtin":
        spec = builtin or BuiltinSpec()
        bsplit = {"pretrain": "train", "val": "test"}.get(split, split)
        return BuiltinDataset(root, bsplit, variant, spec, image_size, fraction, seed)
    if root is None:
        raise ValueError(f"root=None is invalid for dataset {name!r}: expected the data folder")
    root = Path(os.path.expanduser(str(root)))
    if name in ("cifar10", "cifar100", "stl10"):
        if name == "stl10":
            splits = {"pretrain": "train+unlabeled", "val": "test"}
            tv_split = splits.get(split, split)
            valid = ("train", "test", "unlabeled", "train+unlabeled")
        else:
            tv_split = {"pretrain": "train", "val": "test"}.get(split, split)
            valid = ("train", "test")
        if tv_split not in valid:
            raise ValueError(f"split={split!r} is invalid for {name}: expected one of {list(valid) + ['pretrain', 'val']}")
        images, targets, channels_last = _torchvision_arrays(name, root, tv_split, download)
        return ArrayImageDataset(images, targets, size, channels_last, fraction, seed)
    if name == "custom":
        folder = root / split if (root / split).is_dir() else root
        if not folder.is_dir():
            raise _missing(name, folder, f"an ImageFolder tree {folder}/<class>/<image> or a flat folder of images")
        return FolderImageDataset(folder, size, fraction, seed)
    # ImageFolder datasets: tinyimagenet, imagenet100, imagenet
    fsplit = {"pretrain": "train", "test": "val"}.get(split, split)
    if fsplit not in ("train", "val"):
        raise ValueError(f"split={split!r} is invalid for {name}: expected one of ['train', 'val', 'test', 'pretrain']")
    folder = root / fsplit
    if not folder.is_dir():
        raise _missing(name, folder, f"an ImageFolder tree {root}/train/<class>/<image> and {root}/val/<class>/<image>")
    return FolderImageDataset(folder, size, fraction, seed)


def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    seed: Optional[int] = 0,
    pin_memory: Optional[bool] = None,
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader of raw batches ``(index (B,), images uint8 (B, 3, S, S), labels (B,))``.

    Args:
        dataset: a dataset of this module.
        batch_size: images per batch.
        shuffle: shuffle every epoch (solo-learn's pretraining does).
        drop_last: drop the last incomplete batch (solo-learn's pretraining does).
        num_workers: loader processes (0 loads in the main process).
        seed: seed of the shuffling generator (``None``: torch's global one).
        pin_memory: pin host memory; ``None`` pins when CUDA is available.
        **kwargs: passed to :class:`torch.utils.data.DataLoader`.

    Returns:
        The DataLoader.
    """
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if num_workers > 0:
        kwargs.setdefault("persistent_workers", True)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=generator,
        **kwargs,
    )
