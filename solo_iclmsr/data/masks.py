"""Datasets of real images with foreground masks: COCO instances and folders of mask PNGs.

They give what the built-in dataset gives for synthetic data (see :mod:`solo_iclmsr.data.builtin`):
each image, its binary foreground mask, and three variants of the image, so the motivation
experiment (train {full, foreground} x test {full, foreground}) and the foreground diagnostics run
on any dataset with segmentation masks.

Both datasets are :class:`~solo_iclmsr.data.datasets.RawImageDataset` s: ``ds[index]`` is
``(index, image uint8 (3, S, S), label)`` and plugs into the training data path as it is. On top:

    * ``variant`` (constructor argument): ``"full"`` (the image), ``"fg"`` (the foreground on
      neutral gray 128, as :func:`~solo_iclmsr.data.builtin.foreground_only`) or ``"bg"`` (the
      background only: the foreground replaced by gray 128);
    * ``mask(index)``: the (S, S) uint8 foreground mask in {0, 1} of item ``index``;
    * ``labels``: the (N,) int64 labels of the items, in order.

Geometry: the image is brought to S x S exactly as every raw-image dataset does it (shorter side
resized with antialiased bilinear, then the centre crop); the mask goes through the same resize and
crop with nearest-neighbour sampling at pixel centres, so it stays binary. The ``fg`` and ``bg``
variants apply the resized mask to the resized image, so the gray is exactly where the returned
mask is off (``fg``) or on (``bg``).

Example:
    >>> from solo_iclmsr.data import CocoMaskDataset, make_dataloader
    >>> ds = CocoMaskDataset("coco/annotations/instances_val2017.json", "coco/val2017",
    ...                      image_size=256, variant="fg")                 # doctest: +SKIP
    >>> index, image, label = ds[0]; mask = ds.mask(0)                     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .builtin import foreground_only
from .datasets import (
    IMAGE_EXTENSIONS,
    FolderImageDataset,
    PathLike,
    RawImageDataset,
    _list_images,
    _open_image,
    _read_array,
    _resize_mask_square,
    _resize_square,
)

__all__ = ["MASK_VARIANTS", "MaskedImageDataset", "CocoMaskDataset", "MaskFolderDataset", "apply_variant",
           "held_out_split"]

MASK_VARIANTS = ("full", "fg", "bg")
FOREGROUND_MODES = ("all", "label", "largest")


def apply_variant(image: torch.Tensor, mask: torch.Tensor, variant: str) -> torch.Tensor:
    """One variant of an image given its foreground mask.

    Args:
        image: (3, S, S) uint8.
        mask: (S, S), non-zero = foreground.
        variant: ``"full"`` (the image), ``"fg"`` (foreground on gray 128) or ``"bg"``
            (background only, the foreground replaced by gray 128).

    Returns:
        (3, S, S) uint8.

    Raises:
        ValueError: for an unknown variant.
    """
    if variant not in MASK_VARIANTS:
        raise ValueError(f"variant={variant!r} is invalid: expected one of {list(MASK_VARIANTS)}")
    if variant == "full":
        return image
    keep = (mask != 0) if variant == "fg" else (mask == 0)
    out = foreground_only(image.numpy()[None], keep.numpy()[None])[0]
    return torch.from_numpy(np.ascontiguousarray(out))


def held_out_split(labels: Sequence[int], fraction: float = 0.2, seed: int = 0
                   ) -> Tuple[List[int], List[int]]:
    """Training and test positions of a labelled set: a fixed random ``fraction`` of each label
    held out (at least one image of every label with two or more images).

    Args:
        labels: the label of each item, in order.
        fraction: share of each label held out.
        seed: seed of the draw.

    Returns:
        (training positions, test positions), each sorted.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train: List[int] = []
    test: List[int] = []
    for label in np.unique(labels):
        idx = rng.permutation(np.nonzero(labels == label)[0]).tolist()
        k = int(round(fraction * len(idx)))
        k = max(k, 1) if len(idx) > 1 else 0
        test += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(test)


class MaskedImageDataset(RawImageDataset):
    """Base class of the raw-image datasets that also know each image's foreground mask.

    Subclasses implement ``_load(i) -> (3, H, W) uint8`` and ``_load_mask(i) -> (H, W)`` (non-zero
    = foreground) at the stored resolution, and call :meth:`_set_variant`. Items are
    ``(index, variant of the image, label)``.
    """

    variant: str = "full"

    def _set_variant(self, variant: str) -> None:
        if variant not in MASK_VARIANTS:
            raise ValueError(f"variant={variant!r} is invalid: expected one of {list(MASK_VARIANTS)}")
        self.variant = variant

    def _load_mask(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def _mask_at(self, i: int) -> torch.Tensor:
        return _resize_mask_square(torch.from_numpy(np.asarray(self._load_mask(i))), self.image_size)

    def mask(self, index: int) -> torch.Tensor:
        """The foreground mask of item ``index`` (position in this dataset, as in ``ds[index]``).

        Args:
            index: position of the item.

        Returns:
            (S, S) uint8 tensor in {0, 1}, aligned with the image of ``ds[index]``.
        """
        return self._mask_at(int(self.indices[index]))

    def __getitem__(self, index: int) -> Tuple[int, torch.Tensor, int]:
        i = int(self.indices[index])
        img = _resize_square(self._load(i), self.image_size)  # (3, S, S) uint8
        if self.variant != "full":
            img = apply_variant(img, self._mask_at(i), self.variant)
        return index, img, int(self.targets[i])


def _pycocotools() -> Tuple[Any, Any]:
    """The ``pycocotools.coco`` and ``pycocotools.mask`` modules, imported on first use."""
    try:
        from pycocotools import coco, mask
    except ImportError:
        raise ImportError("CocoMaskDataset needs pycocotools: pip install pycocotools") from None
    return coco, mask


def _to_rle(segmentation: Any, h: int, w: int) -> Dict[str, Any]:
    """One COCO segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE."""
    _, mask_utils = _pycocotools()
    if isinstance(segmentation, list):  # polygons [[x0, y0, x1, y1, ...], ...]
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    if isinstance(segmentation.get("counts"), list):  # uncompressed RLE (crowd regions)
        return mask_utils.frPyObjects(segmentation, h, w)
    return segmentation


def _union_rle(segmentations: Sequence[Any], h: int, w: int) -> Dict[str, Any]:
    _, mask_utils = _pycocotools()
    return mask_utils.merge([_to_rle(s, h, w) for s in segmentations], intersect=False)


def _instance_area(annotation: Dict[str, Any], h: int, w: int) -> float:
    """An instance's size: its ``area`` field, else the area of its segmentation, in pixels."""
    area = annotation.get("area")
    if area is not None:
        return float(area)
    _, mask_utils = _pycocotools()
    return float(mask_utils.area(_to_rle(annotation["segmentation"], h, w)))


class CocoMaskDataset(MaskedImageDataset):
    """Images of a COCO instances JSON with their foreground masks (one item per image).

    Read with ``pycocotools.coco.COCO`` (``pip install pycocotools``). Decisions:

    * Categories: those of the JSON's ``categories`` list (all of them, even without instances,
      so that two splits share one labelling), or only ``categories`` (ids or names) when given.
      Labels are the kept category ids remapped to 0..K-1 in sorted id order; ``classes`` holds
      their names and ``category_ids`` their ids in label order. Instances of other categories are
      ignored: they are background.
    * Instances: the non-crowd ones (``iscrowd`` 0) of a kept category; with
      ``include_crowd=True`` crowd regions count as instances too. Otherwise a crowd region is
      background (it stays visible in the ``bg`` variant). Annotations with an empty
      segmentation are ignored.
    * Label: the category of the largest instance; size is the annotation's ``area`` (COCO's
      mask area in pixels of the stored image), computed from its segmentation when absent; ties
      go to the lower annotation id.
    * Foreground (``foreground``): ``"all"`` (default) the union of all instances; ``"label"``
      the union of the instances of the label's category; ``"largest"`` the largest instance.
    * Images with no instance are skipped; with ``keep_empty=True`` they are kept with label -1
      and an empty mask.
    * ``min_fg_area``: images whose foreground covers less than this fraction of the stored image
      (before resize and crop) are skipped (images kept by ``keep_empty`` excepted). A value > 0
      measures every image's foreground once at construction (RLE areas; no full decode).
    * Order: images sorted by id. Image files are ``image_root/<file_name>``; their size must
      match the JSON's ``height`` and ``width``.

    Args:
        annotation_file: the instances JSON (e.g. ``annotations/instances_val2017.json``).
        image_root: the folder of the images (e.g. ``val2017``).
        image_size: side S of the returned images and masks.
        variant: ``"full"``, ``"fg"`` or ``"bg"``.
        categories: category ids or names to keep (``None``: all).
        foreground: ``"all"``, ``"label"`` or ``"largest"``.
        include_crowd: count crowd regions as instances.
        keep_empty: keep images without instances (label -1, empty mask).
        min_fg_area: minimum foreground fraction of an image, in [0, 1].
        fraction: stratified share of each label to keep.
        seed: seed of the subset.

    Attributes:
        image_ids: (N,) COCO image id of each stored image.
        files: path of each stored image.
        classes: category names in label order.
        category_ids: category ids in label order.

    Raises:
        ImportError: when pycocotools is missing.
        FileNotFoundError: for a missing JSON, image folder or listed image.
        ValueError: for an unreadable JSON, unknown categories, invalid options, or when no image
            is left.
    """

    def __init__(
        self,
        annotation_file: PathLike,
        image_root: PathLike,
        image_size: int = 256,
        variant: str = "full",
        categories: Optional[Sequence[Union[int, str]]] = None,
        foreground: str = "all",
        include_crowd: bool = False,
        keep_empty: bool = False,
        min_fg_area: float = 0.0,
        fraction: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(image_size, fraction, seed)
        self._set_variant(variant)
        if foreground not in FOREGROUND_MODES:
            raise ValueError(f"foreground={foreground!r} is invalid: expected one of {list(FOREGROUND_MODES)}")
        if not 0.0 <= min_fg_area <= 1.0:
            raise ValueError(f"min_fg_area={min_fg_area!r} is invalid: expected a value in [0, 1]")
        coco_module, mask_utils = _pycocotools()
        ann_path = Path(os.path.expanduser(str(annotation_file)))
        image_root = Path(os.path.expanduser(str(image_root)))
        layout = "a COCO instances JSON (images, annotations, categories) such as annotations/instances_val2017.json"
        if not ann_path.is_file():
            raise FileNotFoundError(f"{ann_path} does not exist: expected {layout}")
        if not image_root.is_dir():
            raise FileNotFoundError(
                f"{image_root} does not exist: expected the folder of the images of {ann_path.name}, "
                f"each at {image_root}/<file_name>"
            )
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
                coco = coco_module.COCO(str(ann_path))
        except (ValueError, AssertionError, KeyError, TypeError) as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            raise ValueError(f"cannot read COCO annotations {ann_path}: {reason}; expected {layout}") from err

        cats = {int(c["id"]): c for c in coco.loadCats(coco.getCatIds())}
        if categories is None:
            kept = sorted(cats)
        else:
            by_name = {str(c["name"]): cid for cid, c in cats.items()}
            kept_set = set()
            for c in categories:
                cid = by_name.get(c) if isinstance(c, str) else (int(c) if int(c) in cats else None)
                if cid is None:
                    raise ValueError(
                        f"category {c!r} is not in {ann_path}: expected ids or names among "
                        f"{sorted(by_name)[:20]}{' ...' if len(by_name) > 20 else ''}"
                    )
                kept_set.add(cid)
            kept = sorted(kept_set)
        self.category_ids: List[int] = kept
        self.classes: List[str] = [str(cats[c]["name"]) for c in kept]
        label_of = {cid: k for k, cid in enumerate(kept)}

        self.annotation_file = ann_path
        self.image_root = image_root
        self.foreground = foreground
        self.image_ids: List[int] = []
        self.files: List[Path] = []
        self._records: List[Tuple[int, int, List[Any]]] = []  # (height, width, segmentations)
        targets: List[int] = []
        for img_id in sorted(coco.getImgIds()):
            info = coco.imgs[img_id]
            h, w = int(info["height"]), int(info["width"])
            anns = [
                a
                for a in coco.imgToAnns.get(img_id, [])
                if int(a["category_id"]) in label_of
                and (include_crowd or not a.get("iscrowd", 0))
                and a.get("segmentation")
            ]
            if not anns:
                if not keep_empty:
                    continue
                label, fg = -1, []
            else:
                largest = max(anns, key=lambda a: (_instance_area(a, h, w), -int(a["id"])))
                label = label_of[int(largest["category_id"])]
                if foreground == "all":
                    fg = anns
                elif foreground == "label":
                    fg = [a for a in anns if int(a["category_id"]) == int(largest["category_id"])]
                else:
                    fg = [largest]
                if min_fg_area > 0:
                    covered = float(mask_utils.area(_union_rle([a["segmentation"] for a in fg], h, w)))
                    if covered < min_fg_area * h * w:
                        continue
            self.image_ids.append(int(img_id))
            self.files.append(image_root / str(info["file_name"]))
            self._records.append((h, w, [a["segmentation"] for a in fg]))
            targets.append(label)
        if not self.files:
            raise ValueError(
                f"{ann_path} leaves no image (categories={categories!r}, include_crowd={include_crowd}, "
                f"keep_empty={keep_empty}, min_fg_area={min_fg_area}): expected at least one image with an instance"
            )
        for path in self.files:
            if not path.is_file():
                raise FileNotFoundError(
                    f"image {path} listed in {ann_path} not found: expected each image at {image_root}/<file_name>"
                )
        self.targets = np.asarray(targets, dtype=np.int64)
        self._finalize()

    def _load(self, i: int) -> torch.Tensor:
        arr = _read_array(self.files[i])  # (H, W, 3) uint8
        h, w = self._records[i][:2]
        if arr.shape[:2] != (h, w):
            raise ValueError(
                f"image {self.files[i]} is {arr.shape[0]}x{arr.shape[1]} (HxW) but {self.annotation_file} "
                f"gives {h}x{w}: expected the image the annotations were made on"
            )
        return torch.from_numpy(arr).permute(2, 0, 1)

    def _load_mask(self, i: int) -> np.ndarray:
        h, w, segmentations = self._records[i]
        if not segmentations:
            return np.zeros((h, w), np.uint8)
        _, mask_utils = _pycocotools()
        return mask_utils.decode(_union_rle(segmentations, h, w))  # (h, w) uint8 in {0, 1}


class MaskFolderDataset(MaskedImageDataset, FolderImageDataset):
    """An ImageFolder tree, or a flat folder (label -1), of images with one mask PNG each.

    Images are found as by :class:`~solo_iclmsr.data.datasets.FolderImageDataset`
    (``root/<class>/<name>.<ext>``, classes in sorted folder order; or ``root/<name>.<ext>``).
    Masks:

    * beside the image (``masks_root=None``): ``<folder>/<name><mask_suffix>.png``, default suffix
      ``"_mask"``; files whose name (without extension) ends with the suffix are masks, never
      images;
    * in a parallel tree: ``masks_root/<class>/<name><mask_suffix>.png`` (default suffix ``""``).

    A mask is read in its stored mode: non-zero pixels are foreground (for palette PNGs the
    palette index, for RGB(A) PNGs any non-zero colour channel; alpha is ignored). It must have the
    size of its image. Every image's mask must exist (checked at construction).

    Args:
        root: the image folder.
        image_size: side S of the returned images and masks.
        variant: ``"full"``, ``"fg"`` or ``"bg"``.
        masks_root: the parallel mask tree (``None``: masks beside the images).
        mask_suffix: appended to the image's name to name its mask (``None``: ``"_mask"``
            beside the images, ``""`` in ``masks_root``).
        fraction: stratified share of each class to keep.
        seed: seed of the subset.

    Attributes:
        samples: ``(image path, label)`` of each stored image, as in ``FolderImageDataset``.
        mask_files: the mask path of each stored image.
        classes: class folder names in label order (empty for a flat folder).

    Raises:
        FileNotFoundError: for a missing folder, no images, or a missing mask.
        ValueError: for an empty suffix with masks beside the images, or an invalid variant.
    """

    def __init__(
        self,
        root: PathLike,
        image_size: int = 256,
        variant: str = "full",
        masks_root: Optional[PathLike] = None,
        mask_suffix: Optional[str] = None,
        fraction: float = 1.0,
        seed: int = 0,
    ) -> None:
        self._set_variant(variant)
        root = Path(os.path.expanduser(str(root)))
        self.masks_root = None if masks_root is None else Path(os.path.expanduser(str(masks_root)))
        if mask_suffix is None:
            mask_suffix = "_mask" if self.masks_root is None else ""
        if self.masks_root is None and not mask_suffix:
            raise ValueError(
                "mask_suffix='' is invalid with masks beside the images: expected a suffix such as '_mask'"
            )
        self.mask_suffix = mask_suffix
        if self.masks_root is None:
            mask_layout = f"{root}/<class>/<name>{mask_suffix}.png"
        else:
            mask_layout = f"{self.masks_root}/<class>/<name>{mask_suffix}.png"
        layout = f"{root}/<class>/<name>.<ext> with its mask {mask_layout} (or flat folders)"
        if not root.is_dir():
            raise FileNotFoundError(f"{root} does not exist: expected {layout}")
        if self.masks_root is not None and not self.masks_root.is_dir():
            raise FileNotFoundError(f"{self.masks_root} does not exist: expected {layout}")
        try:
            super().__init__(root, image_size, fraction, seed)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)}): expected {layout}"
            ) from None
        self.mask_files: List[Path] = [self._mask_path(p) for p, _ in self.samples]
        for (img, _), mask in zip(self.samples, self.mask_files):
            if not mask.is_file():
                raise FileNotFoundError(f"mask of image {img} not found: expected {mask}")

    def _is_mask(self, path: Path) -> bool:
        return self.masks_root is None and path.stem.endswith(self.mask_suffix)

    def _images_in(self, folder: Path) -> List[Path]:
        return [p for p in _list_images(folder) if not self._is_mask(p)]

    def _mask_path(self, image: Path) -> Path:
        name = image.stem + self.mask_suffix + ".png"
        if self.masks_root is None:
            return image.with_name(name)
        return self.masks_root / image.relative_to(self.root).parent / name

    def _load_mask(self, i: int) -> np.ndarray:
        path, image = self.mask_files[i], self.samples[i][0]
        arr = _read_array(path, mode=None, what="mask")
        if arr.ndim == 3:  # RGB(A) or LA: colour channels only
            arr = (arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]).any(-1)
        with _open_image(image) as im:  # reads the header only
            w, h = im.size
        if arr.shape != (h, w):
            raise ValueError(
                f"mask {path} is {arr.shape[0]}x{arr.shape[1]} (HxW) but its image {image} is {h}x{w}: "
                f"expected the same size"
            )
        return (arr != 0).astype(np.uint8)
