"""The timm backbones of the variants: shapes, the pooling contract, stems, the feature map, and
errors (32 px, batch 2)."""

import pytest
import torch

from solo_iclmsr.plugin.backbones import (create_backbone, feature_map, supports_cifar_stem,
                                          timm_backbone_for)

torch.manual_seed(0)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32)


# (name, cifar, kwargs, expected feature shape at 32 px, feature_format, pooling_commutes)
CASES = [
    ("resnet18", True, {}, (2, 512, 4, 4), "map", True),
    ("resnet18", False, {}, (2, 512, 1, 1), "map", True),
    ("vit_tiny_patch16_224", True, {}, (2, 65, 192), "tokens", True),  # 8x8 patches + cls token
    ("vit_tiny_patch16_224", False, {"img_size": 32, "patch_size": 4, "global_pool": "avg",
                                     "fc_norm": False}, (2, 65, 192), "tokens", True),
    ("convnext_atto", False, {}, (2, 320, 1, 1), "map", False),
]


@pytest.mark.parametrize("name,cifar,kwargs,shape,fmt,avg", CASES)
def test_shapes_and_contract(images, name, cifar, kwargs, shape, fmt, avg):
    backbone = create_backbone(name, cifar=cifar, **kwargs).eval()
    with torch.no_grad():
        z = backbone.forward_features(images)
        pooled = backbone(images)
        assert tuple(z.shape) == shape
        assert backbone.feature_format == fmt
        assert backbone.pooling_commutes is avg
        assert pooled.shape == (2, backbone.num_features)
        assert z.shape[backbone.channel_dim] == backbone.feature_channels
        torch.testing.assert_close(pooled, backbone.forward_head(z))
    assert len(backbone.mean) == 3 and len(backbone.std) == 3


@pytest.mark.parametrize("name,cifar,kwargs,shape,fmt,avg", CASES)
def test_weighting_pooled_vector_matches_map_iff_pooling_commutes(images, name, cifar, kwargs,
                                                                   shape, fmt, avg):
    """ICLMSR.md section 2: with average pooling or a class token, pool(a ⊙ Z) == a ⊙ pool(Z);
    with a norm after the pool (ConvNeXt) it does not hold."""
    backbone = create_backbone(name, cifar=cifar, **kwargs).eval()
    with torch.no_grad():
        z = backbone.forward_features(images)
        weights = torch.rand(2, backbone.feature_channels) * 2
        weighted_then_pooled = backbone.forward_head(backbone.scale_channels(z, weights))
        pooled_then_weighted = backbone.forward_head(z) * weights
    same = torch.allclose(weighted_then_pooled, pooled_then_weighted, atol=1e-5, rtol=1e-4)
    assert weighted_then_pooled.shape == pooled_then_weighted.shape
    assert same is avg


def test_cifar_stem_replaces_conv_and_maxpool():
    backbone = create_backbone("resnet18", cifar=True)
    conv = backbone.model.conv1
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
    assert isinstance(backbone.model.maxpool, torch.nn.Identity)
    assert backbone.cifar is True


def test_none_kwargs_are_dropped_and_pretrained_defaults_off():
    backbone = create_backbone("resnet18", drop_rate=None)
    assert backbone.model.drop_rate == 0.0
    assert backbone.model.pretrained_cfg is not None


def test_unknown_name_suggests_nearest():
    with pytest.raises(ValueError, match=r"backbone\.name.*Did you mean.*resnet18"):
        create_backbone("resnet81")


def test_cifar_stem_undefined_for_convnext():
    assert not supports_cifar_stem("convnext_atto")
    with pytest.raises(ValueError, match="no CIFAR stem"):
        create_backbone("convnext_atto", cifar=True)


def test_num_classes_must_stay_zero():
    with pytest.raises(ValueError, match="num_classes"):
        create_backbone("resnet18", num_classes=10)


def test_scale_channels_checks_shape(images):
    backbone = create_backbone("resnet18")
    z = backbone.forward_features(images)
    with pytest.raises(ValueError, match="weights of shape"):
        backbone.scale_channels(z, torch.ones(2, 3))


@pytest.mark.parametrize("name,cifar,kwargs,shape,fmt,avg", CASES)
def test_feature_map_is_channels_first(images, name, cifar, kwargs, shape, fmt, avg):
    backbone = create_backbone(name, cifar=cifar, **kwargs).eval()
    z = feature_map(backbone, images)
    assert z.dim() == 4 and z.shape[:2] == (2, backbone.feature_channels)
    if fmt == "tokens":
        assert z.shape[2:] == (shape[1], 1)  # tokens as a (L, 1) layout


def test_the_cifar_variant_follows_the_dataset_unless_asked():
    assert timm_backbone_for("resnet18", {}, "cifar10").cifar
    assert timm_backbone_for("resnet18", {}, "builtin").cifar
    assert not timm_backbone_for("resnet18", {}, "imagenet100").cifar
    assert not timm_backbone_for("resnet18", {"cifar": False}, "cifar10").cifar
    assert not timm_backbone_for("convnext_atto", {}, "cifar10").cifar  # none defined
    with pytest.raises(ValueError, match="backbone.kwargs.cifar='yes' is invalid"):
        timm_backbone_for("resnet18", {"cifar": "yes"}, "cifar10")
