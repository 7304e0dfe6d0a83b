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
