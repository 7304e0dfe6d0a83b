"""Backbones for the variants: solo-learn's own by name, any other timm model by its timm name.

solo-learn main builds its backbones from a fixed table of 21 names (``BaseMethod._BACKBONES``);
the variants keep that table (the same name builds the same model as in solo) and build every
other name with ``timm.create_model`` (:func:`build_backbone`, called through the
``build_backbone`` hook of solo's ``BaseMethod``, see ``patches/``).

ICL-MSR weights the *channels* of the feature extractor's output Z before pooling
(``design/ICLMSR.md`` section 2), so the training code needs more than the pooled vector: it
needs Z itself, the model's own pooling, and to know whether that pooling is a plain average
(then weighting the pooled vector is the same as weighting Z, and ``f`` runs once per view).
:class:`TimmBackbone` exposes exactly that, using only timm's uniform model API
(``forward_features``, ``forward_head(pre_logits=True)``, ``num_features``, ``pretrained_cfg``);
:func:`feature_map` gives Z of any backbone the variants build (f_msr's ``features`` input).

Example:
    >>> backbone = create_backbone("resnet18", cifar=True)
    >>> z = backbone.forward_features(torch.zeros(2, 3, 32, 32))
    >>> tuple(z.shape), backbone.feature_format, backbone.pooling_commutes
    ((2, 512, 4, 4), 'map', True)
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping, Tuple

import timm
import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d

CONFIG_KEY = "backbone.name"
#: Datasets of small (32 px) images: solo-learn's CIFAR stem for its ResNets applies to
#: cifar10 and cifar100; the variants apply it to the built-in dataset too, and timm models
#: get their CIFAR variant for all of them unless ``backbone.kwargs.cifar`` says otherwise.
SMALL_IMAGE_DATASETS = ("cifar10", "cifar100", "builtin")

# timm modules whose models get the CIFAR stem (3x3 stride-1 first conv, no max-pool).
_CIFAR_RESNET_MODULES = ("resnet",)
# timm modules whose models take ``img_size`` / ``patch_size`` (plain ViTs).
_CIFAR_VIT_MODULES = ("vision_transformer", "deit")
# Defaults of the CIFAR variant of a ViT. [decision] solo-learn 1.0.2 keeps patch 16 on 32 px
# images (a 2x2 token grid); we use patch 4 (an 8x8 grid), the usual choice for CIFAR ViTs.
CIFAR_IMG_SIZE = 32
CIFAR_PATCH_SIZE = 4


def _model_module(name: str) -> str:
    """The timm module that defines model ``name`` (tags such as ``.a1_in1k`` are ignored)."""
    base = name.split(".", 1)[0]
    for module in timm.list_modules():
        if timm.models.is_model_in_modules(base, [module]):
            return module
    return ""


def _check_name(name: str) -> None:
    """Raise a ``ValueError`` with the nearest timm names when ``name`` is not a timm model."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{CONFIG_KEY}={name!r} is invalid: expected a timm model name.")
    if timm.is_model(name.split(".", 1)[0]):
        return
    near = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(near)}?" if near else " See timm.list_models()."
    raise ValueError(f"Unknown timm model {CONFIG_KEY}={name!r}.{hint}")


def supports_cifar_stem(name: str) -> bool:
    """Whether :func:`create_backbone` defines a CIFAR variant (``cifar=True``) of ``name``.

    Args:
        name: a timm model name.

    Returns:
        True for timm ResNets (stem swap) and plain ViTs (small images and patches).
    """
    _check_name(name)
    return _model_module(name) in _CIFAR_RESNET_MODULES + _CIFAR_VIT_MODULES


def _apply_cifar_stem(model: nn.Module, name: str) -> None:
    """Replace a timm ResNet's stem by a 3x3 stride-1 conv and drop its max-pool, in place.

    [decision] solo-learn builds this conv with ``padding=2``, which turns a 32 px image into
    34 px and the last map into 5x5; we use ``padding=1`` (the usual CIFAR ResNet, a 4x4 last map).
    Deep stems (``resnet18d``, ``resnet10t``, ...) keep their three convs; only the first one loses
    its stride.
    """
    stem = model.conv1
    if isinstance(stem, nn.Conv2d):
        model.conv1 = nn.Conv2d(stem.in_channels, stem.out_channels, kernel_size=3, stride=1,
                                padding=1, bias=stem.bias is not None)
    elif isinstance(stem, nn.Sequential) and isinstance(stem[0], nn.Conv2d):
        first = stem[0]
        stem[0] = nn.Conv2d(first.in_channels, first.out_channels, kernel_size=3, stride=1,
                            padding=1, bias=first.bias is not None)
    else:
        raise ValueError(f"{CONFIG_KEY}={name!r}: unexpected ResNet stem {type(stem).__name__}; "
                         "set backbone.cifar=false.")
    model.maxpool = nn.Identity()


def _is_avg_pool(pool: Any) -> bool:
    return isinstance(pool, SelectAdaptivePool2d) and pool.pool_type == "avg"


def _pooling_commutes(model: nn.Module) -> bool:
    """Whether ``forward_head(z, pre_logits=True)`` acts on each channel alone and linearly (a
    global average over positions, or a ViT's class token), so that weighting the pooled vector
    equals weighting Z and pooling (ICLMSR.md section 2).

    Only heads known to be "pool, dropout" are accepted; anything else (ConvNeXt's norm after the
    pool, attention pooling, a norm after the pool, MobileNetV3's conv head) is False.
    """
    from timm.models.efficientnet import EfficientNet
    from timm.models.regnet import RegNet
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, (ResNet, EfficientNet)):
        return _is_avg_pool(getattr(model, "global_pool", None))
    if isinstance(model, RegNet):
        return _is_avg_pool(getattr(model.head, "global_pool", None))
    if isinstance(model, VisionTransformer):
        return (model.global_pool in ("avg", "token") and model.attn_pool is None
                and isinstance(model.fc_norm, nn.Identity))
    return False


def _feature_format(model: nn.Module) -> str:
    """``tokens`` for channels-last outputs (ViT tokens, NHWC maps), else ``map`` (NCHW)."""
    if hasattr(model, "num_prefix_tokens") or getattr(model, "output_fmt", "NCHW") == "NHWC":
        return "tokens"
    return "map"


class TimmBackbone(nn.Module):
    """A timm model without classifier, seen as Z = f(X) then the model's own pooling.

    Attributes:
        model: the wrapped timm model (``num_classes=0``).
        name: the timm model name it was built from.
        cifar: whether the CIFAR variant was built.
        num_features: size of the pooled vector returned by :meth:`forward`.
        feature_channels: number c of channels of Z (the size of ICL-MSR's weight vectors).
        feature_format: ``map`` when Z is (B, c, h, w); ``tokens`` when Z is channels-last,
            (B, L, c) for ViTs or (B, h, w, c) for NHWC models such as Swin.
        channel_dim: the dimension of Z that holds the channels (1 or -1).
        pooling_commutes: True where the head acts on each channel alone and linearly (a
            global average pool, a class token), so weighting the pooled vector, what the
            variants do, equals weighting Z (ICLMSR.md section 2); elsewhere it weights the
            model's pooled output.
        mean: normalisation mean of the model's pretrained config.
        std: normalisation std of the model's pretrained config.
    """

    def __init__(self, model: nn.Module, name: str, cifar: bool = False) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.cifar = cifar
        self.feature_channels: int = int(model.num_features)
        self.num_features: int = int(getattr(model, "head_hidden_size", None) or model.num_features)
        self.feature_format: str = _feature_format(model)
        self.channel_dim: int = 1 if self.feature_format == "map" else -1
        self.pooling_commutes: bool = _pooling_commutes(model)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean: Tuple[float, ...] = tuple(cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
        self.std: Tuple[float, ...] = tuple(cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Z before pooling, exactly timm's ``forward_features``: (B, c, h, w) or (B, L, c)."""
        return self.model.forward_features(x)

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        """The model's own pooling of Z (timm ``forward_head(z, pre_logits=True)``): (B, D)."""
        return self.model.forward_head(z, pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, num_features) of images x (B, 3, H, W)."""
        return self.forward_head(self.forward_features(x))

    def scale_channels(self, z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Multiply each channel of Z by a per-sample weight: a_t ⊙ Z (ICLMSR.md section 2).

        Args:
            z: features from :meth:`forward_features`, (B, c, h, w) or channels-last.
            weights: (B, c) channel weights.

        Returns:
            A tensor shaped like ``z``.
        """
        if weights.shape != (z.shape[0], z.shape[self.channel_dim]):
            raise ValueError(f"weights of shape {tuple(weights.shape)} do not match features "
                             f"{tuple(z.shape)} (expected (B, c) with c on dim {self.channel_dim}).")
        if self.channel_dim == 1:
            return z * weights.reshape(*weights.shape, *([1] * (z.ndim - 2)))
        return z * weights.reshape(weights.shape[0], *([1] * (z.ndim - 2)), weights.shape[1])


def create_backbone(name: str, cifar: bool = False, **kwargs: Any) -> TimmBackbone:
    """Build a timm backbone without classifier.

    Args:
        name: any timm model name (``resnet18``, ``resnet50``, ``vit_tiny_patch16_224``,
            ``convnext_atto``, ...), optionally with a pretrained tag (``resnet18.a1_in1k``).
        cifar: build the small-image variant. ResNets get a 3x3 stride-1 first conv and no
            max-pool; plain ViTs get ``img_size`` (default 32) and ``patch_size`` (default 4)
            unless given. Other families (ConvNeXt, Swin, EfficientNet, ...) have no defined
            CIFAR variant and raise ``ValueError``: pass their own stem kwargs instead.
        **kwargs: passed to ``timm.create_model``; ``None`` values are dropped (as timm does).
            ``pretrained`` defaults to False; ``num_classes`` is forced to 0.

    Returns:
        The wrapped model.

    Raises:
        ValueError: unknown model name (with the nearest timm names), or ``cifar=True`` for a
            family without a CIFAR variant.

    Note:
        timm ResNets zero-initialise the last BatchNorm of each block (``zero_init_last=True``);
        torchvision's, used by solo-learn, do not. Pass ``zero_init_last=False`` to match.
    """
    _check_name(name)
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    kwargs.setdefault("pretrained", False)
    if kwargs.pop("num_classes", 0) != 0:
        raise ValueError("create_backbone builds feature extractors: num_classes must be 0.")
    module = _model_module(name)
    if cifar:
        if module in _CIFAR_VIT_MODULES:
            kwargs.setdefault("img_size", CIFAR_IMG_SIZE)
            kwargs.setdefault("patch_size", CIFAR_PATCH_SIZE)
        elif module not in _CIFAR_RESNET_MODULES:
            raise ValueError(
                f"{CONFIG_KEY}={name!r} (timm module {module!r}) has no CIFAR stem: backbone.cifar"
                "=true is defined for timm ResNets and plain ViTs only. Set backbone.cifar=false "
                "(and pass stem options through backbone.kwargs if the model has them).")
    model = timm.create_model(name, num_classes=0, **kwargs)
    if cifar and module in _CIFAR_RESNET_MODULES:
        _apply_cifar_stem(model, name)
    return TimmBackbone(model, name=name, cifar=cifar)


def solo_cifar_stem(backbone: nn.Module) -> None:
    """solo-learn's CIFAR stem for its (torchvision) ResNets, in place: a 3x3 stride-1 first conv
    with padding 2 and no max-pool, exactly as ``BaseMethod`` builds it for cifar10/100."""
    backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
    backbone.maxpool = nn.Identity()


def timm_backbone_for(name: str, kwargs: Mapping[str, Any], dataset: str) -> TimmBackbone:
    """A timm backbone from solo's ``backbone`` config node: ``backbone.kwargs.cifar`` (default:
    the dataset has small images) selects the CIFAR variant, the other kwargs go to timm."""
    kwargs = dict(kwargs or {})
    cifar = kwargs.pop("cifar", None)
    if cifar is None:
        cifar = dataset in SMALL_IMAGE_DATASETS and supports_cifar_stem(name)
    if not isinstance(cifar, bool):
        raise ValueError(f"backbone.kwargs.cifar={cifar!r} is invalid: expected true or false.")
    return create_backbone(name, cifar=cifar, **kwargs)


@torch.no_grad()
def feature_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The feature map Z of images x before pooling, as (B, c, h, w), without gradient.

    Token outputs (ViT, (B, L, c)) come back as (B, c, L, 1) and channels-last maps (Swin) as
    (B, c, h, w). Works for :class:`TimmBackbone`, any model with timm's ``forward_features``
    (solo-learn's ViT, Swin and ConvNeXt) and solo-learn's torchvision ResNets.

    Raises:
        ValueError: for a backbone whose map cannot be read (naming ``iclmsr.msr_input``).
    """
    from torchvision.models import ResNet

    if isinstance(backbone, TimmBackbone):
        z, fmt = backbone.forward_features(x), backbone.feature_format
        fmt = "tokens" if z.dim() == 3 else ("nhwc" if fmt == "tokens" else "map")
    elif hasattr(backbone, "forward_features"):
        z = backbone.forward_features(x)
        fmt = "tokens" if z.dim() == 3 else (
            "nhwc" if getattr(backbone, "output_fmt", "NCHW") == "NHWC" else "map")
    elif isinstance(backbone, ResNet):
        z = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
        for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
            z = stage(z)
        fmt = "map"
    else:
        raise ValueError(f"iclmsr.msr_input=features: the feature map of a "
                         f"{type(backbone).__name__} backbone cannot be read; use "
                         f"iclmsr.msr_input=image.")
    if fmt == "tokens":
        return z.transpose(1, 2).unsqueeze(-1)
    if fmt == "nhwc":
        return z.permute(0, 3, 1, 2)
    return z
