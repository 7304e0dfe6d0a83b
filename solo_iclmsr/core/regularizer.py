"""The meta semantic regularizer f_msr and the channel weighting it drives (ICLMSR.md section 2).

f_msr reads the raw, un-augmented image X (B, 3, H, W) and proposes n channel-weight vectors per
image, A_s = [a_1 .. a_n] with shape (B, n, c). Each a_t stands for one stratum Z_s^t of the
backdoor adjustment P(Y | do(X)) = sum_t P(Y | X, Z_s^t) P(Z_s^t), P(Z_s^t) = 1/n.

The weighting a_t ⊙ Z scales channel r of the feature output Z by a_{r,t} [paper]. Decisions
(ICLMSR.md section 2):

* a_t is non-negative and of unit L2 norm, as the Gaussian potential of the uniformity loss
  presumes: normalize(softplus(logits_t)) by default, normalize(softmax(logits_t / T)) as an
  option (softplus saturates: logits far below zero are "off" for every image with a tenth of
  the gradient).
* The weights applied to Z are sqrt(c) * a_t, so a uniform a_t (every entry 1/sqrt(c)) is the
  identity weighting. Paper says "a_t ⊙ Z"; we rescale by sqrt(c) because a unit-norm a_t would
  otherwise shrink every channel by about 1/sqrt(c) and change the scale the head was built for.
* With global average pooling, weighting the map and then pooling equals pooling and then
  weighting the pooled vector (pooling is linear and acts per channel), so the encoder runs once
  per view and only the pooled vector is re-weighted n times (``pooled_weighted_features``).
  This shortcut is only valid where pooling is average pooling.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MetaSemanticRegularizer",
    "FixedStrata",
    "build_strata",
    "channel_weights",
    "weight_features",
    "weighted_views",
    "pooled_weighted_features",
]


class MetaSemanticRegularizer(nn.Module):
    """f_msr: raw images (B, 3, H, W) -> A_s (B, n, c), every a_t non-negative and unit-norm.

    The paper's f_msr is "a learnable CNN" on the raw image; its architecture and weight head are
    decisions (ICLMSR.md sections 2 and 7), each an argument:

    * ``inputs="image"`` [paper]: ``depth`` blocks of 3x3 conv - BatchNorm - ReLU on the raw
      image (the first with stride 1, the others with stride 2), global average pooling.
    * ``inputs="features"``: the encoder's feature map Z of the raw image, (B, c, h, w), read
      without gradient (the channels a_t weights: X_s "can be regarded as the convolution kernels
      of f" [paper]); ``depth`` blocks of 1x1 conv - BatchNorm - ReLU at every position (token
      layouts work the same), global average pooling.
    * ``inputs="both"``: the two pooled embeddings side by side.

    A linear layer maps the embedding to n * c logits (``bias=False`` drops its bias: a fixed set
    of masks then cannot come from the bias alone). The weight head turns logits into a_t:
    ``softplus``: a_t = normalize(softplus(l_t)); ``softmax``: a_t = normalize(softmax(l_t / T)).

    Args:
        feature_dim: c, the number of channels of the encoder's feature output Z.
        n_strata: n, the number of weight vectors per image.
        depth: number of conv-BN-ReLU blocks of each trunk.
        width: channels of every conv block.
        in_channels: channels of the raw image.
        input_size: if set, the raw image is resized (bilinear) to ``input_size`` x ``input_size``
            first, e.g. to the crop size of the views.
        inputs: ``image``, ``features`` or ``both`` (see above).
        weight_head: ``softplus`` or ``softmax``.
        temperature: T of the ``softmax`` head.
        bias: whether the last linear layer has a bias.

    Example:
        >>> reg = MetaSemanticRegularizer(feature_dim=16, n_strata=4, depth=2, width=8)
        >>> reg(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 4, 16])
        >>> reg = MetaSemanticRegularizer(feature_dim=16, n_strata=4, depth=1, width=8,
        ...                               inputs="features", weight_head="softmax", bias=False)
        >>> reg(features=torch.rand(2, 16, 4, 4)).shape
        torch.Size([2, 4, 16])
    """

    INPUTS = ("image", "features", "both")
    WEIGHT_HEADS = ("softplus", "softmax")

    def __init__(self, feature_dim: int, n_strata: int = 8, depth: int = 4, width: int = 64,
                 in_channels: int = 3, input_size: Optional[int] = None, inputs: str = "image",
                 weight_head: str = "softplus", temperature: float = 1.0, bias: bool = True) -> None:
        super().__init__()
        for name, value in (("feature_dim", feature_dim), ("n_strata", n_strata),
                            ("depth", depth), ("width", width), ("in_channels", in_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MetaSemanticRegularizer: {name}={value!r} is invalid: "
                                 f"expected an integer >= 1.")
        for name, value, allowed in (("inputs", inputs, self.INPUTS),
                                     ("weight_head", weight_head, self.WEIGHT_HEADS)):
            if value not in allowed:
                raise ValueError(f"MetaSemanticRegularizer: {name}={value!r} is invalid: "
                                 f"expected one of {', '.join(allowed)}.")
        if not temperature > 0:
            raise ValueError(f"MetaSemanticRegularizer: temperature={temperature!r} is invalid: "
                             f"expected a value > 0.")
        self.feature_dim = feature_dim
        self.n_strata = n_strata
        self.input_size = input_size
        self.inputs = inputs
        self.weight_head = weight_head
        self.temperature = float(temperature)
        self.body = _conv_trunk(in_channels, width, depth, 3) if inputs != "features" else None
        self.feature_body = _conv_trunk(feature_dim, width, depth, 1) if inputs != "image" else None
        trunks = (self.body is not None) + (self.feature_body is not None)
        self.fc = nn.Linear(width * trunks, n_strata * feature_dim, bias=bias)

    @property
    def reads_image(self) -> bool:
        """Whether ``forward`` needs the raw image."""
        return self.body is not None

    @property
    def reads_features(self) -> bool:
        """Whether ``forward`` needs the encoder's feature map of the raw image."""
        return self.feature_body is not None

    def logits(self, raw: Optional[Tensor] = None, features: Optional[Tensor] = None) -> Tensor:
        """Unconstrained logits (B, n, c) from raw images (B, 3, H, W) and/or the encoder's
        feature map of them (B, c, h, w), as ``inputs`` requires."""
        pooled = []
        if self.body is not None:
            if raw is None or raw.dim() != 4:
                raise ValueError(f"MetaSemanticRegularizer expects raw images (B, C, H, W), got "
                                 f"{None if raw is None else tuple(raw.shape)}.")
            if self.input_size is not None and tuple(raw.shape[-2:]) != (self.input_size,) * 2:
                raw = F.interpolate(raw, size=(self.input_size, self.input_size), mode="bilinear",
                                    align_corners=False)
            pooled.append(self.body(raw).mean(dim=(2, 3)))  # (B, width)
        if self.feature_body is not None:
            if features is None or features.dim() != 4 or features.shape[1] != self.feature_dim:
                raise ValueError(
                    f"MetaSemanticRegularizer(inputs={self.inputs!r}) expects the encoder's feature "
                    f"map (B, {self.feature_dim}, h, w), got "
                    f"{None if features is None else tuple(features.shape)}.")
            pooled.append(self.feature_body(features.detach()).mean(dim=(2, 3)))
        h = torch.cat(pooled, dim=1)
        return self.fc(h).view(h.shape[0], self.n_strata, self.feature_dim)

    def forward(self, raw: Optional[Tensor] = None, features: Optional[Tensor] = None) -> Tensor:
        """A_s (B, n, c): each a_t non-negative with unit L2 norm (see the class docstring)."""
        logits = self.logits(raw, features)
        if self.weight_head == "softmax":
            positive = torch.softmax(logits / self.temperature, dim=-1)
        else:
            positive = F.softplus(logits)
        return F.normalize(positive, dim=-1, eps=1e-12)


class FixedStrata(nn.Module):
    """The same n weight vectors for every image: the ablations of f_msr (ICLMSR.md section 8).

    ``forward`` has f_msr's signature and returns the (n, c) buffer ``vectors`` expanded to
    (B, n, c); nothing in it is trained. Built by :func:`build_strata`.

    Example:
        >>> FixedStrata(torch.full((1, 4), 0.5))(torch.zeros(3, 3, 8, 8)).shape
        torch.Size([3, 1, 4])
    """

    reads_image = False
    reads_features = False

    def __init__(self, vectors: Tensor) -> None:
        super().__init__()
        if vectors.dim() != 2:
            raise ValueError(f"FixedStrata: vectors must be (n, c), got {tuple(vectors.shape)}.")
        self.register_buffer("vectors", F.normalize(vectors.float(), dim=-1))

    def forward(self, raw: Optional[Tensor] = None, features: Optional[Tensor] = None) -> Tensor:
        images = raw if raw is not None else features
        if images is None:
            raise ValueError("FixedStrata needs the images (or their features) for the batch size.")
        return self.vectors.to(images.dtype).expand(images.shape[0], *self.vectors.shape)


def build_strata(kind: str, feature_dim: int, n_strata: int = 8, seed: int = 0,
                 **regularizer_kwargs) -> nn.Module:
    """Where A_s comes from (``iclmsr.strata``; ICLMSR.md section 8).

    Args:
        kind: ``learned`` or ``frozen``: a :class:`MetaSemanticRegularizer` (``regularizer_kwargs``
            go to it; whether it is trained is the caller's business); ``random_fixed``: n
            vectors |g| / ||g|| with g ~ N(0, I_c) drawn from ``seed``; ``uniform``: a_t =
            1/sqrt(c). n identical strata give the same L_msr as one (the mixture and the mean
            of n equal terms are that term), so ``uniform`` holds one vector: L_msr = L_ct.
        feature_dim: c.
        n_strata: n.
        seed: the seed of ``random_fixed``'s draw.
    """
    if kind in ("learned", "frozen"):
        return MetaSemanticRegularizer(feature_dim, n_strata, **regularizer_kwargs)
    if kind == "random_fixed":
        generator = torch.Generator().manual_seed(int(seed))
        return FixedStrata(torch.randn(n_strata, feature_dim, generator=generator).abs())
    if kind == "uniform":
        return FixedStrata(torch.ones(1, feature_dim))
    raise ValueError(f"iclmsr.strata={kind!r} is invalid: expected one of learned, frozen, "
                     f"random_fixed, uniform.")


def _conv_trunk(in_channels: int, width: int, depth: int, kernel: int) -> nn.Sequential:
    """``depth`` blocks of conv - BN - ReLU; 3x3 kernels downsample after the first block."""
    blocks: List[nn.Module] = []
    channels = in_channels
    for i in range(depth):
        stride = 1 if i == 0 or kernel == 1 else 2
        blocks += [nn.Conv2d(channels, width, kernel, stride=stride, padding=kernel // 2, bias=False),
                   nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        channels = width
    return nn.Sequential(*blocks)


def channel_weights(weights: Tensor) -> Tensor:
    """The factors applied to Z: sqrt(c) * a_t, shape (B, n, c) (uniform a_t -> all ones)."""
    return weights * math.sqrt(weights.shape[-1])


def weight_features(features: Tensor, weights: Tensor) -> Tensor:
    """a_t ⊙ Z for every stratum: the channels of one view's features scaled by sqrt(c) * a_t.

    Args:
        features: Z of one view: a CNN map (B, c, h, w), tokens (B, L, c) or pooled (B, c).
        weights: A_s (B, n, c) of the same images.

    Returns:
        (B, n, c, h, w), (B, n, L, c) or (B, n, c): stratum t of image i in ``[i, t]``.
    """
    if weights.dim() != 3 or weights.shape[0] != features.shape[0]:
        raise ValueError(f"weights must have shape (B, n, c) with B = {features.shape[0]}, got "
                         f"{tuple(weights.shape)}.")
    w = channel_weights(weights)
    c = w.shape[-1]
    if features.dim() == 4:  # map (B, c, h, w): the channel dimension is 1
        _check_channels(features.shape[1], c, "map (B, c, h, w)")
        return features.unsqueeze(1) * w[..., None, None]
    if features.dim() == 3:  # tokens (B, L, c): the channel dimension is the last
        _check_channels(features.shape[-1], c, "tokens (B, L, c)")
        return features.unsqueeze(1) * w.unsqueeze(2)
    if features.dim() == 2:  # pooled (B, c)
        _check_channels(features.shape[-1], c, "pooled (B, c)")
        return features.unsqueeze(1) * w
    raise ValueError(f"features must be a map (B, c, h, w), tokens (B, L, c) or pooled (B, c), "
                     f"got shape {tuple(features.shape)}.")


def weighted_views(features: Sequence[Tensor], weights: Tensor) -> List[Tensor]:
    """``weight_features`` for every view; the views of an image share its A_s [paper]."""
    return [weight_features(z, weights) for z in features]


def pooled_weighted_features(features: Tensor, weights: Tensor) -> Tensor:
    """The pooled shortcut: avgpool(a_t ⊙ Z) computed as sqrt(c) a_t ⊙ avgpool(Z), (B, n, c).

    Equal to pooling ``weight_features(features, weights)`` for average pooling over the spatial
    positions of a map (B, c, h, w) or over the tokens of (B, L, c); not valid for other poolings.
    """
    if features.dim() == 4:
        pooled = features.mean(dim=(2, 3))
    elif features.dim() == 3:
        pooled = features.mean(dim=1)
    else:
        pooled = features
    return weight_features(pooled, weights)


def _check_channels(found: int, expected: int, layout: str) -> None:
    if found != expected:
        raise ValueError(f"features given as {layout} have {found} channels but the weights have "
                         f"c = {expected}; build MetaSemanticRegularizer(feature_dim={found}).")

