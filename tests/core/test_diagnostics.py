"""Statistics of the strata (solo_iclmsr.core.diagnostics) on A_s with known structure."""

import math

import pytest
import torch
import torch.nn.functional as F

from solo_iclmsr.core import (effective_channels, foreground_channels, foreground_share,
                              strata_diagnostics, variance_explained)


def test_image_independent_masks_have_cross_image_cosine_one():
    c, n, b = 8, 3, 5
    masks = torch.eye(c)[:n]  # n distinct one-channel masks
    d = strata_diagnostics(masks.expand(b, n, c))
    torch.testing.assert_close(d.cross_image_cosine, torch.ones(n))
    assert d.within_image_cosine.item() == pytest.approx(0.0)
    torch.testing.assert_close(d.effective_channels, torch.ones(n))
    row = d.as_dict("strata/")
    assert row["strata/cross_image_cos"] == pytest.approx(1.0)
    assert row["strata/within_image_cos"] == pytest.approx(0.0)


def test_image_dependent_strata_and_loop_reference():
    torch.manual_seed(0)
    a = F.normalize(torch.rand(6, 3, 10), dim=-1)
    d = strata_diagnostics(a)
    for t in range(3):
        pairs = [float(a[i, t] @ a[j, t]) for i in range(6) for j in range(6) if i != j]
        assert d.cross_image_cosine[t].item() == pytest.approx(sum(pairs) / len(pairs), rel=1e-5)
    within = [float(a[i, s] @ a[i, r]) for i in range(6) for s in range(3) for r in range(3) if s != r]
    assert d.within_image_cosine.item() == pytest.approx(sum(within) / len(within), rel=1e-5)


def test_effective_channels_counts_the_weighted_channels():
    c = 16
    uniform = torch.full((1, c), 1 / math.sqrt(c))
    assert effective_channels(uniform).item() == pytest.approx(c)
    four = torch.zeros(1, c)
    four[0, :4] = 0.5
    assert effective_channels(four).item() == pytest.approx(4.0)


def test_variance_explained_by_a_grouping():
    torch.manual_seed(0)
    groups = torch.arange(40) % 4
    centres = torch.randn(4, 2, 5)
    a = centres[groups] + 0.01 * torch.randn(40, 2, 5)  # A_s set by the group
    eta, chance = variance_explained(a, groups)
    assert eta > 0.99 and chance == pytest.approx(3 / 39)
    noise = torch.randn(40, 2, 5)  # unrelated to the grouping
    eta_noise, _ = variance_explained(noise, groups)
    assert eta_noise < 0.3
    # eta^2 of a single informative coordinate, by hand
    x = torch.tensor([0.0, 2.0, 10.0, 12.0]).view(4, 1)
    eta, chance = variance_explained(x, torch.tensor([0, 0, 1, 1]))
    assert eta == pytest.approx(100.0 / 104.0) and chance == pytest.approx(1 / 3)


def test_foreground_channels_and_share():
    fg = torch.tensor([[3.0, 0.0, 1.0], [5.0, 0.0, 1.0]])
    bg = torch.tensor([[1.0, 2.0, 1.0], [1.0, 4.0, 1.0]])
    chans = foreground_channels(fg, bg)
    assert chans.tolist() == [True, False, False]
    a = torch.tensor([[[0.6, 0.8, 0.0], [1 / math.sqrt(3)] * 3]])
    share = foreground_share(a, chans)
    assert share[0, 0].item() == pytest.approx(0.6 / 1.4)
    assert share[0, 1].item() == pytest.approx(1 / 3)  # uniform: the fraction of such channels
