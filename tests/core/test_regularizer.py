"""f_msr and the channel weighting (ICLMSR.md section 2)."""

import math

import pytest
import torch

from solo_iclmsr.core import (MetaSemanticRegularizer, channel_weights, pooled_weighted_features,
                              weight_features, weighted_views)


def test_weights_are_unit_norm_non_negative_and_shaped():
    torch.manual_seed(0)
    reg = MetaSemanticRegularizer(feature_dim=12, n_strata=5, depth=3, width=8)
    a = reg(torch.randn(7, 3, 16, 16) * 3)
    assert a.shape == (7, 5, 12)
    assert (a >= 0).all()
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(7, 5))


def test_depth_and_width_are_configurable():
    reg = MetaSemanticRegularizer(feature_dim=4, n_strata=2, depth=2, width=6)
    convs = [m for m in reg.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 and all(c.out_channels == 6 for c in convs)
    assert reg.fc.out_features == 2 * 4


def test_input_size_resizes_the_raw_image():
    torch.manual_seed(0)
    reg = MetaSemanticRegularizer(feature_dim=4, n_strata=2, depth=1, width=4, input_size=8).eval()
    raw = torch.randn(2, 3, 16, 16)
    small = torch.nn.functional.interpolate(raw, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(reg(raw), reg(small))


def test_invalid_arguments_name_the_key():
    with pytest.raises(ValueError, match="n_strata=0"):
        MetaSemanticRegularizer(feature_dim=4, n_strata=0)
    with pytest.raises(ValueError, match=r"raw images \(B, C, H, W\)"):
        MetaSemanticRegularizer(feature_dim=4)(torch.randn(3, 8, 8))


@pytest.mark.parametrize("shape", [(3, 6, 4, 5), (3, 7, 6), (3, 6)])
def test_uniform_weights_are_the_identity(shape):
    torch.manual_seed(0)
    z = torch.randn(*shape)
    c = 6
    a = torch.full((3, 2, c), 1 / math.sqrt(c))
    w = weight_features(z, a)
    assert w.shape == (3, 2) + tuple(shape[1:])
    torch.testing.assert_close(w[:, 0], z)
    torch.testing.assert_close(w[:, 1], z)


def test_weighting_scales_the_channel_dimension():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.rand(2, 3, 4), dim=-1)
    scale = channel_weights(a)  # (B, n, c)
    z_map, z_tok = torch.randn(2, 4, 3, 3), torch.randn(2, 5, 4)
    wm, wt = weight_features(z_map, a), weight_features(z_tok, a)
    for b in range(2):
        for t in range(3):
            for r in range(4):
                torch.testing.assert_close(wm[b, t, r], z_map[b, r] * scale[b, t, r])
                torch.testing.assert_close(wt[b, t, :, r], z_tok[b, :, r] * scale[b, t, r])
    assert [v.shape for v in weighted_views([z_map, z_map], a)] == [(2, 3, 4, 3, 3)] * 2


def test_pooled_shortcut_equals_pooling_the_weighted_map_and_tokens():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.rand(4, 3, 5), dim=-1)
    z_map, z_tok = torch.randn(4, 5, 6, 6), torch.randn(4, 9, 5)
    torch.testing.assert_close(pooled_weighted_features(z_map, a),
                               weight_features(z_map, a).mean(dim=(-2, -1)))
    torch.testing.assert_close(pooled_weighted_features(z_tok, a),
                               weight_features(z_tok, a).mean(dim=2))


def test_channel_mismatch_is_an_error():
    with pytest.raises(ValueError, match="feature_dim=5"):
        weight_features(torch.randn(2, 5, 3, 3), torch.rand(2, 3, 4))


@pytest.mark.parametrize("head", ["softplus", "softmax"])
def test_weight_heads_give_unit_non_negative_vectors(head):
    torch.manual_seed(0)
    reg = MetaSemanticRegularizer(feature_dim=12, n_strata=3, depth=2, width=8, weight_head=head,
                                  temperature=0.5)
    a = reg(torch.randn(4, 3, 16, 16))
    assert (a >= 0).all()
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(4, 3))
    reg.eval()
    x = torch.randn(4, 3, 16, 16)
    logits = reg.logits(x)
    expected = (torch.nn.functional.normalize(torch.softmax(logits / 0.5, -1), dim=-1)
                if head == "softmax" else
                torch.nn.functional.normalize(torch.nn.functional.softplus(logits), dim=-1))
    torch.testing.assert_close(reg(x), expected)


def test_without_bias_a_constant_input_gives_no_constant_offset():
    reg = MetaSemanticRegularizer(feature_dim=4, n_strata=2, depth=1, width=4, bias=False)
    assert reg.fc.bias is None
    reg.eval()
    with torch.no_grad():
        # zero conv output after ReLU and eval-mode BN shift set to 0: logits are exactly 0
        for m in reg.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.zero_()
                m.running_mean.zero_()
        torch.testing.assert_close(reg.logits(torch.zeros(2, 3, 8, 8)), torch.zeros(2, 2, 4))


@pytest.mark.parametrize("inputs", ["features", "both"])
def test_feature_map_input(inputs):
    torch.manual_seed(0)
    reg = MetaSemanticRegularizer(feature_dim=6, n_strata=3, depth=2, width=5, inputs=inputs)
    raw, fmap = torch.randn(4, 3, 16, 16), torch.randn(4, 6, 4, 4, requires_grad=True)
    a = reg(raw if inputs == "both" else None, fmap)
    assert a.shape == (4, 3, 6)
    assert reg.reads_features and reg.reads_image == (inputs == "both")
    a.sum().backward()
    assert fmap.grad is None  # the feature map is read without gradient
    assert reg.fc.in_features == 5 * (2 if inputs == "both" else 1)
    # 1x1 convolutions: a token layout (B, c, L, 1) works like a map
    assert reg(raw if inputs == "both" else None, torch.randn(4, 6, 9, 1)).shape == (4, 3, 6)
    with pytest.raises(ValueError, match=r"feature map \(B, 6, h, w\)"):
        reg(raw, None)


def test_unknown_choices_name_the_argument():
    with pytest.raises(ValueError, match="inputs='pixels'"):
        MetaSemanticRegularizer(feature_dim=4, inputs="pixels")
    with pytest.raises(ValueError, match="weight_head='sigmoid'"):
        MetaSemanticRegularizer(feature_dim=4, weight_head="sigmoid")
