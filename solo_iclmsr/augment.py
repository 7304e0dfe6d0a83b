"""Batch augmentations on the device, built from solo-learn's ``augmentations`` config list.

solo-learn augments each image on the CPU, one PIL image at a time, inside the data loader. Here
the loader only yields raw ``uint8`` images, and :class:`MultiViewAugmentation` builds every view of
a whole batch at once on the batch's device with Kornia, each sample drawing its own parameters
(``same_on_batch=False``). The raw image travels with the views: :meth:`MultiViewAugmentation.raw_view`
gives the batch resized to the first crop size and normalised, which is what f_msr sees.

The config follows the newer solo-learn schema (upstream main): a list of pipelines, each::

    - rrc: {enabled: True, crop_min_scale: 0.08, crop_max_scale: 1.0}
      color_jitter: {prob: 0.8, brightness: 0.4, contrast: 0.4, saturation: 0.2, hue: 0.1}
      grayscale: {prob: 0.2}
      gaussian_blur: {prob: 0.0}
      solarization: {prob: 0.0}
      equalization: {prob: 0.0}
      horizontal_flip: {prob: 0.5}
      crop_size: 32
      num_crops: 2
      # optional: mean: [r, g, b], std: [r, g, b]

and :func:`build_torchvision_pipeline` builds solo-learn's own per-image torchvision pipeline for
the same list, for comparisons and the benchmark.

Differences from solo-learn's torchvision pipeline (all per-sample randomness is kept):
    * Gaussian blur: solo blurs the PIL image with ``ImageFilter.GaussianBlur(radius=sigma)``,
      sigma ~ U(0.1, 2.0) pixels. Here Kornia's separable Gaussian has a finite kernel of
      ``round(23 * crop_size / 224)`` pixels, made odd (23 at 224 px, 3 at 32 px, the BYOL
      convention of about 10% of the side), so at small crops large sigmas are truncated.
    * Colour jitter: torchvision draws the order of the four colour steps per image; Kornia draws
      one order per call (the factors are still per image).
    * Random resized crop: bicubic resampling of the float image (``grid_sample``), clamped to
      [0, 1]; torchvision resamples the 8-bit PIL image. When ``rrc.enabled`` is false, solo resizes
      the shorter side to ``crop_size``; here the image is resized to ``crop_size x crop_size``
      (identical for the square images the loaders of :mod:`solo_iclmsr.data` give).
    * Normalisation: an explicit ``mean``/``std`` of a pipeline wins over the dataset's table
      entry (solo lets the dataset table win).
"""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DATASET_MEAN_STD",
    "IMAGENET_MEAN_STD",
    "ViewConfig",
    "parse_augmentations",
    "resolve_mean_std",
    "blur_kernel_size",
    "ViewPipeline",
    "MultiViewAugmentation",
    "build_multiview_augmentation",
    "SoloTorchvisionPipeline",
    "build_torchvision_pipeline",
]

IMAGENET_MEAN_STD: Tuple[Tuple[float, float, float], Tuple[float, float, float]] = (
    (0.485, 0.456, 0.406),
    (0.229, 0.224, 0.225),
)

# Normalisation statistics by dataset, as in solo-learn's ``build_transform_pipeline`` (main);
# tinyimagenet and builtin are this project's additions.
DATASET_MEAN_STD: Dict[str, Tuple[Tuple[float, float, float], Tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "imagenet100": IMAGENET_MEAN_STD,
    "imagenet": IMAGENET_MEAN_STD,
    "builtin": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}

# solo-learn's sigma range for Gaussian blur, in pixels of the crop.
BLUR_SIGMA: Tuple[float, float] = (0.1, 2.0)


# --------------------------------------------------------------------------------------------------
# Config schema and validation
# --------------------------------------------------------------------------------------------------

# Every section of one pipeline entry, with each key's kind and default.
_SECTIONS: Dict[str, Dict[str, Tuple[str, Any]]] = {
    "rrc": {
        "enabled": ("bool", True),
        "crop_min_scale": ("scale", 0.08),
        "crop_max_scale": ("scale", 1.0),
    },
    "color_jitter": {
        "prob": ("prob", 0.0),
        "brightness": ("nonneg", 0.0),
        "contrast": ("nonneg", 0.0),
        "saturation": ("nonneg", 0.0),
        "hue": ("hue", 0.0),
    },
    "grayscale": {"prob": ("prob", 0.0)},
    "gaussian_blur": {"prob": ("prob", 0.0)},
    "solarization": {"prob": ("prob", 0.0)},
    "equalization": {"prob": ("prob", 0.0)},
    "horizontal_flip": {"prob": ("prob", 0.0)},
}
_SCALARS: Dict[str, str] = {"crop_size": "posint", "num_crops": "posint", "mean": "triple", "std": "pos_triple"}
_REQUIRED: Tuple[str, ...] = ("crop_size", "num_crops")

_KIND_TEXT = {
    "bool": "a boolean",
    "scale": "a value in (0, 1]",
    "prob": "a value in [0, 1]",
    "nonneg": "a value >= 0",
    "hue": "a value in [0, 0.5]",
    "posint": "an integer >= 1",
    "triple": "a list of 3 numbers",
    "pos_triple": "a list of 3 numbers > 0",
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _valid(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "posint":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if kind in ("triple", "pos_triple"):
        if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(map(_is_number, value)):
            return False
        return kind == "triple" or all(v > 0 for v in value)
    if not _is_number(value):
        return False
    if kind == "scale":
        return 0.0 < value <= 1.0
    if kind == "prob":
        return 0.0 <= value <= 1.0
    if kind == "nonneg":
        return value >= 0.0
    if kind == "hue":
        return 0.0 <= value <= 0.5
    raise AssertionError(f"unknown kind {kind!r}")


def _unknown_key(where: str, key: Any, valid: Sequence[str]) -> ValueError:
    near = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.5)
    hint = f" did you mean {near[0]!r}?" if near else ""
    return ValueError(f"{where}.{key} is not a valid key:{hint} valid keys are {sorted(valid)}")


def _to_plain(obj: Any) -> Any:
    """OmegaConf containers (or any Mapping / sequence) to plain dicts and lists."""
    try:  # omegaconf is optional here
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Mapping):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


@dataclass(frozen=True)
class ViewConfig:
    """One validated entry of the ``augmentations`` list (one pipeline, ``num_crops`` views).

    Attributes:
        crop_size: side of the square output views in pixels.
        num_crops: how many views this pipeline makes of each image.
        rrc_enabled: random resized crop if true, else a plain resize to ``crop_size``.
        crop_min_scale: smallest crop area, as a fraction of the image area.
        crop_max_scale: largest crop area, as a fraction of the image area.
        color_jitter_prob: probability of colour jitter.
        brightness: brightness factor drawn in [max(0, 1 - b), 1 + b].
        contrast: contrast factor drawn in [max(0, 1 - c), 1 + c].
        saturation: saturation factor drawn in [max(0, 1 - s), 1 + s].
        hue: hue shift drawn in [-h, h].
        grayscale_prob: probability of converting to grayscale (3 equal channels).
        gaussian_blur_prob: probability of a Gaussian blur with sigma ~ U(0.1, 2.0) pixels.
        solarization_prob: probability of solarization (values >= 0.5 become 1 - x).
        equalization_prob: probability of histogram equalization.
        horizontal_flip_prob: probability of a horizontal flip.
        mean: per-channel normalisation mean, or ``None`` for the dataset's.
        std: per-channel normalisation std, or ``None`` for the dataset's.
    """

    crop_size: int
    num_crops: int
    rrc_enabled: bool = True
    crop_min_scale: float = 0.08
    crop_max_scale: float = 1.0
    color_jitter_prob: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    grayscale_prob: float = 0.0
    gaussian_blur_prob: float = 0.0
    solarization_prob: float = 0.0
    equalization_prob: float = 0.0
    horizontal_flip_prob: float = 0.0
    mean: Optional[Tuple[float, float, float]] = None
    std: Optional[Tuple[float, float, float]] = None


def parse_augmentations(augmentations: Any) -> List[ViewConfig]:
    """Validates solo-learn's ``augmentations`` list and turns it into :class:`ViewConfig` entries.

    Args:
        augmentations: a list of mappings in the newer solo-learn schema (plain or OmegaConf), or a
            single mapping (taken as a one-entry list). Missing sections are off (probability 0);
            a missing ``rrc`` is solo's default random resized crop with scale (0.08, 1.0).

    Returns:
        One :class:`ViewConfig` per entry, in order.

    Raises:
        ValueError: naming the key, e.g. ``augmentations[0].color_jitter.prob=1.5 is invalid:
            expected a value in [0, 1]``; unknown keys name the nearest valid one.

    Example:
        >>> cfg = parse_augmentations([{"crop_size": 32, "num_crops": 2,
        ...                             "horizontal_flip": {"prob": 0.5}}])
        >>> cfg[0].crop_size, cfg[0].num_crops, cfg[0].horizontal_flip_prob
        (32, 2, 0.5)
    """
    augmentations = _to_plain(augmentations)
    if isinstance(augmentations, Mapping):
        augmentations = [augmentations]
    if not isinstance(augmentations, list) or not augmentations:
        raise ValueError(
            f"augmentations={augmentations!r} is invalid: expected a non-empty list of pipelines"
        )
    out = []
    for i, entry in enumerate(augmentations):
        where = f"augmentations[{i}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}={entry!r} is invalid: expected a mapping of sections")
        valid_top = list(_SECTIONS) + list(_SCALARS)
        for key in entry:
            if key not in valid_top:
                raise _unknown_key(where, key, valid_top)
        for key in _REQUIRED:
            if key not in entry:
                raise ValueError(f"{where}.{key} is missing: expected {_KIND_TEXT[_SCALARS[key]]}")
        values: Dict[str, Any] = {}
        for key, kind in _SCALARS.items():
            if key not in entry or (key in ("mean", "std") and entry[key] is None):
                continue
            value = entry[key]
            if not _valid(kind, value):
                raise ValueError(f"{where}.{key}={value!r} is invalid: expected {_KIND_TEXT[kind]}")
            values[key] = tuple(float(v) for v in value) if kind.endswith("triple") else value
        for section, keys in _SECTIONS.items():
            sub = entry.get(section)
            if sub is None:
                sub = {}
            if not isinstance(sub, Mapping):
                raise ValueError(f"{where}.{section}={sub!r} is invalid: expected a mapping")
            for key in sub:
                if key not in keys:
                    raise _unknown_key(f"{where}.{section}", key, list(keys))
            for key, (kind, default) in keys.items():
                value = sub.get(key, default)
                if not _valid(kind, value):
                    raise ValueError(
                        f"{where}.{section}.{key}={value!r} is invalid: expected {_KIND_TEXT[kind]}"
                    )
                field = {"enabled": "rrc_enabled", "prob": f"{section}_prob"}.get(key, key)
                values[field] = float(value) if kind != "bool" else value
        if values["crop_min_scale"] > values["crop_max_scale"]:
            raise ValueError(
                f"{where}.rrc.crop_min_scale={values['crop_min_scale']} is invalid: expected a value "
                f"<= rrc.crop_max_scale={values['crop_max_scale']}"
            )
        out.append(ViewConfig(**values))
    return out


def resolve_mean_std(
    view: ViewConfig, dataset: Optional[str] = None
) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Normalisation statistics of one pipeline: its own ``mean``/``std``, else the dataset's
    entry of :data:`DATASET_MEAN_STD`, else ImageNet's.

    Args:
        view: a parsed pipeline entry.
        dataset: the dataset name, or ``None``.

    Returns:
        ``(mean, std)``, each a tuple of 3 floats.
    """
    mean, std = DATASET_MEAN_STD.get(dataset or "", IMAGENET_MEAN_STD)
    return (view.mean or mean), (view.std or std)


def blur_kernel_size(crop_size: int) -> int:
    """Odd Gaussian kernel size: 23 at 224 px, scaled linearly with the crop, at least 3.

    Args:
        crop_size: side of the view in pixels.

    Returns:
        An odd kernel side (3 at 32 px, 11 at 96 px, 23 at 224 px).
    """
    k = max(3, int(round(23 * crop_size / 224)))
    return k if k % 2 == 1 else k + 1


# --------------------------------------------------------------------------------------------------
# Kornia pipelines
# --------------------------------------------------------------------------------------------------


class _Clamp01(nn.Module):
    """Clamps to [0, 1]: bicubic resampling overshoots at edges (torchvision's uint8 PIL clips)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        return x.clamp(0.0, 1.0)


class ViewPipeline(nn.Module):
    """One pipeline of the config (crop, colour, blur, ..., flip, normalise) on a float batch.

    Each sample draws its own parameters (``same_on_batch=False``); ops with probability 0 are
    left out, as solo-learn does. The Kornia container is ``self.seq``; the parameters of the last
    call are in ``self.seq._params`` and can be replayed with ``pipeline(x, params=...)``.

    Args:
        view: a parsed pipeline entry.
        mean: per-channel mean used by the final normalisation.
        std: per-channel std used by the final normalisation.
        resample: interpolation of the crop, ``"bicubic"`` (solo's) or ``"bilinear"``.

    Example:
        >>> view = parse_augmentations([{"crop_size": 8, "num_crops": 1}])[0]
        >>> ViewPipeline(view, (0.5,) * 3, (0.25,) * 3)(torch.rand(4, 3, 16, 16)).shape
        torch.Size([4, 3, 8, 8])
    """

    def __init__(
        self,
        view: ViewConfig,
        mean: Sequence[float],
        std: Sequence[float],
        resample: str = "bicubic",
    ) -> None:
        super().__init__()
        self.view = view
        size = (view.crop_size, view.crop_size)
        ops: List[nn.Module] = []
        if view.rrc_enabled:
            # cropping_mode="resample": one grid_sample for the whole batch (slice mode loops
            # over the images).
            ops.append(
                K.RandomResizedCrop(
                    size,
                    scale=(view.crop_min_scale, view.crop_max_scale),
                    resample=resample,
                    align_corners=False,
                    cropping_mode="resample",
                    same_on_batch=False,
                )
            )
        else:
            ops.append(K.Resize(size, resample=resample, antialias=True))
        ops.append(_Clamp01())
        if view.color_jitter_prob > 0:
            ops.append(
                K.ColorJitter(
                    view.brightness,
                    view.contrast,
                    view.saturation,
                    view.hue,
                    p=view.color_jitter_prob,
                    same_on_batch=False,
                )
            )
        if view.grayscale_prob > 0:
            ops.append(K.RandomGrayscale(p=view.grayscale_prob, same_on_batch=False))
        if view.gaussian_blur_prob > 0:
            k = blur_kernel_size(view.crop_size)
            ops.append(
                K.RandomGaussianBlur((k, k), BLUR_SIGMA, p=view.gaussian_blur_prob, same_on_batch=False)
            )
        if view.solarization_prob > 0:
            # thresholds=0, additions=0: a fixed threshold of 0.5 and no shift, as PIL's
            # ImageOps.solarize(threshold=128) on 8-bit values.
            ops.append(K.RandomSolarize(0.0, 0.0, p=view.solarization_prob, same_on_batch=False))
        if view.equalization_prob > 0:
            ops.append(K.RandomEqualize(p=view.equalization_prob, same_on_batch=False))
        if view.horizontal_flip_prob > 0:
            ops.append(K.RandomHorizontalFlip(p=view.horizontal_flip_prob, same_on_batch=False))
        ops.append(K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std)))
        self.seq = K.AugmentationSequential(*ops, same_on_batch=False)

    def forward(self, x: torch.Tensor, params: Optional[List[Any]] = None) -> torch.Tensor:
        """Augments a float batch.

        Args:
            x: images in [0, 1], shape (B, 3, H, W).
            params: ``self.seq._params`` of an earlier call, to replay it exactly.

        Returns:
            Normalised views, shape (B, 3, crop_size, crop_size).
        """
        return self.seq(x, params=params) if params is not None else self.seq(x)

    def last_params(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """Parameters drawn by the last call, by Kornia op name (e.g. ``RandomHorizontalFlip_5``).

        Returns:
            A dict from op name to its parameter dict (``batch_prob`` (B,), crop ``src`` (B, 4, 2),
            ...); ops without parameters are left out.
        """
        return {p.name: p.data for p in (self.seq._params or []) if isinstance(p.data, dict)}


def _to_float01(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images.shape={tuple(images.shape)} is invalid: expected (B, 3, H, W)")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise ValueError(f"images.dtype={images.dtype} is invalid: expected uint8 or a float type")
    return images


class MultiViewAugmentation(nn.Module):
    """All views of a raw batch, in solo-learn's order, made on the batch's device.

    For pipelines ``P1 .. Pm`` with ``num_crops`` ``n1 .. nm``, :meth:`forward` returns
    ``[P1(x) x n1, P2(x) x n2, ...]``: every crop of pipeline 1, then of pipeline 2, and so on, as
    solo-learn's ``FullTransformPipeline`` of ``NCropAugmentation`` does. The ``num_crops`` views
    of one pipeline come from one Kornia call on the batch repeated ``num_crops`` times (each row
    draws its own parameters). Randomness comes from torch's global generator, so
    ``torch.manual_seed(s)`` before a call fixes the views.

    Args:
        views: parsed pipeline entries (see :func:`parse_augmentations`).
        dataset: dataset name for the default normalisation (:data:`DATASET_MEAN_STD`).
        resample: interpolation of the crops, ``"bicubic"`` (solo's) or ``"bilinear"``.

    Example:
        >>> aug = build_multiview_augmentation(
        ...     [{"crop_size": 16, "num_crops": 2, "horizontal_flip": {"prob": 0.5}}], "cifar10")
        >>> views = aug(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
        >>> len(views), views[0].shape, aug.raw_view(torch.zeros(4, 3, 32, 32)).shape
        (2, torch.Size([4, 3, 16, 16]), torch.Size([4, 3, 16, 16]))
    """

    def __init__(
        self, views: Sequence[ViewConfig], dataset: Optional[str] = None, resample: str = "bicubic"
    ) -> None:
        super().__init__()
        if not views:
            raise ValueError("views=[] is invalid: expected at least one pipeline")
        self.views = list(views)
        self.pipelines = nn.ModuleList(
            ViewPipeline(v, *resolve_mean_std(v, dataset), resample=resample) for v in self.views
        )
        mean, std = resolve_mean_std(self.views[0], dataset)
        self.register_buffer("raw_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("raw_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def num_views(self) -> int:
        """Total number of views per image (sum of ``num_crops``)."""
        return sum(v.num_crops for v in self.views)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        """Makes every view of a raw batch.

        Args:
            images: raw batch, uint8 (or float in [0, 1]), shape (B, 3, H, W), on any device.

        Returns:
            ``num_views`` float tensors of shape (B, 3, crop_size_i, crop_size_i), normalised, on
            the device of ``images``.
        """
        x = _to_float01(images)  # (B, 3, H, W) in [0, 1]
        out: List[torch.Tensor] = []
        for view, pipeline in zip(self.views, self.pipelines):
            n = view.num_crops
            stacked = x.repeat(n, 1, 1, 1) if n > 1 else x  # (n * B, 3, H, W)
            out.extend(pipeline(stacked).chunk(n, dim=0))  # n x (B, 3, c, c)
        return out

    @torch.no_grad()
    def raw_view(self, images: torch.Tensor) -> torch.Tensor:
        """The un-augmented batch at the first pipeline's crop size, normalised (f_msr's input).

        Args:
            images: raw batch, uint8 (or float in [0, 1]), shape (B, 3, H, W).

        Returns:
            Float tensor (B, 3, c, c) with c the first ``crop_size``, normalised with the first
            pipeline's statistics. Downscaling is antialiased bilinear.
        """
        x = _to_float01(images)
        c = self.views[0].crop_size
        if x.shape[-2:] != (c, c):
            x = F.interpolate(x, size=(c, c), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.raw_mean) / self.raw_std


def build_multiview_augmentation(
    augmentations: Any, dataset: Optional[str] = None, resample: str = "bicubic"
) -> MultiViewAugmentation:
    """Validates the ``augmentations`` config and builds the device-side augmentation.

    Args:
        augmentations: solo-learn's ``augmentations`` list (plain or OmegaConf).
        dataset: dataset name for the default normalisation statistics.
        resample: crop interpolation, ``"bicubic"`` or ``"bilinear"``.

    Returns:
        A :class:`MultiViewAugmentation`; move it with ``.to(device)`` if you like (it holds only
        small constant buffers, the views land on the images' device anyway).

    Raises:
        ValueError: for an invalid config, naming the key.
    """
    if resample not in ("bicubic", "bilinear"):
        raise ValueError(f"resample={resample!r} is invalid: expected 'bicubic' or 'bilinear'")
    return MultiViewAugmentation(parse_augmentations(augmentations), dataset, resample)


# --------------------------------------------------------------------------------------------------
# solo-learn's own torchvision per-image pipeline (reference)
# --------------------------------------------------------------------------------------------------


class _PILGaussianBlur:
    """solo-learn's blur: ``ImageFilter.GaussianBlur(radius=sigma)``, sigma ~ U(0.1, 2.0)."""

    def __call__(self, img: Any) -> Any:
        from PIL import ImageFilter

        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*BLUR_SIGMA)))


class _PILSolarize:
    """solo-learn's solarization: ``ImageOps.solarize`` (threshold 128)."""

    def __call__(self, img: Any) -> Any:
        from PIL import ImageOps

        return ImageOps.solarize(img)


class _PILEqualize:
    """solo-learn's equalization (main; 1.0.2 has none): ``ImageOps.equalize``."""

    def __call__(self, img: Any) -> Any:
        from PIL import ImageOps

        return ImageOps.equalize(img)


class SoloTorchvisionPipeline:
    """solo-learn's per-image multi-view transform: each pipeline applied ``num_crops`` times.

    Calling it on one PIL image returns the list of views (float tensors (3, c, c), normalised) in
    the same order as :class:`MultiViewAugmentation`.

    Args:
        transforms: one ``torchvision.transforms.Compose`` per pipeline.
        num_crops: how many views each pipeline makes.
    """

    def __init__(self, transforms: Sequence[Callable], num_crops: Sequence[int]) -> None:
        self.transforms = list(transforms)
        self.num_crops = list(num_crops)

    def __call__(self, img: Any) -> List[torch.Tensor]:
        return [t(img) for t, n in zip(self.transforms, self.num_crops) for _ in range(n)]

    def __repr__(self) -> str:
        return "\n".join(f"{n} x [{t}]" for t, n in zip(self.transforms, self.num_crops))


def build_torchvision_pipeline(augmentations: Any, dataset: Optional[str] = None) -> SoloTorchvisionPipeline:
    """solo-learn's own torchvision (v1, PIL) pipeline for the same config, for comparisons.

    The ops, order and parameters follow solo-learn 1.0.2's ``CifarTransform`` /
    ``ImagenetTransform`` (bicubic random resized crop, colour jitter, grayscale, PIL Gaussian
    blur, PIL solarization, flip, ``ToTensor``, ``Normalize``), with the newer schema's
    equalization and ``rrc.enabled`` switch, and ops of probability 0 left out as solo-learn main
    does.

    Args:
        augmentations: solo-learn's ``augmentations`` list.
        dataset: dataset name for the default normalisation statistics.

    Returns:
        A callable from one PIL image to its list of views.

    Raises:
        ValueError: for an invalid config, naming the key.
    """
    from torchvision import transforms as T

    views = parse_augmentations(augmentations)
    composed = []
    for v in views:
        mean, std = resolve_mean_std(v, dataset)
        ops: List[Callable] = []
        if v.rrc_enabled:
            ops.append(
                T.RandomResizedCrop(
                    v.crop_size,
                    scale=(v.crop_min_scale, v.crop_max_scale),
                    interpolation=T.InterpolationMode.BICUBIC,
                )
            )
        else:
            ops.append(T.Resize(v.crop_size, interpolation=T.InterpolationMode.BICUBIC))
        if v.color_jitter_prob > 0:
            jitter = T.ColorJitter(v.brightness, v.contrast, v.saturation, v.hue)
            ops.append(T.RandomApply([jitter], p=v.color_jitter_prob))
        if v.grayscale_prob > 0:
            ops.append(T.RandomGrayscale(p=v.grayscale_prob))
        if v.gaussian_blur_prob > 0:
            ops.append(T.RandomApply([_PILGaussianBlur()], p=v.gaussian_blur_prob))
        if v.solarization_prob > 0:
            ops.append(T.RandomApply([_PILSolarize()], p=v.solarization_prob))
        if v.equalization_prob > 0:
            ops.append(T.RandomApply([_PILEqualize()], p=v.equalization_prob))
        if v.horizontal_flip_prob > 0:
            ops.append(T.RandomHorizontalFlip(p=v.horizontal_flip_prob))
        ops += [T.ToTensor(), T.Normalize(mean=mean, std=std)]
        composed.append(T.Compose(ops))
    return SoloTorchvisionPipeline(composed, [v.num_crops for v in views])
