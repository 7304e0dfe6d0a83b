"""InfoNCE, both readings of L_msr and L_uni (ICLMSR.md section 3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from solo_iclmsr.core import (info_nce, infonce_head_loss, msr_mean_loss, msr_mixture_loss,
                              uniformity_loss, weight_features)


def reference_info_nce(z1, z2, tau):
    """NT-Xent written from the paper's formula with loops: for anchor (i, j),
    P = exp(s(x_i^j, x_i^{3-j})/tau) / sum_{(k,l) != (i,j)} exp(s(x_i^j, x_k^l)/tau)."""
    views = [z1, z2]
    n = z1.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(2):
            anchor = views[j][i]
            positive = views[1 - j][i]
            denom = 0.0
            for k in range(n):
                for m in range(2):
                    if (k, m) == (i, j):
                        continue
                    denom += math.exp(F.cosine_similarity(anchor, views[m][k], dim=0).item() / tau)
            num = math.exp(F.cosine_similarity(anchor, positive, dim=0).item() / tau)
            total += -math.log(num / denom)
    return total / (2 * n)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_info_nce_matches_loop_reference(tau):
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    assert info_nce(z1, z2, tau).item() == pytest.approx(reference_info_nce(z1, z2, tau), rel=1e-10)


def test_mixture_with_one_stratum_and_uniform_weights_is_info_nce():
    torch.manual_seed(0)
    c = 8
    f1, f2 = torch.randn(10, c, dtype=torch.float64), torch.randn(10, c, dtype=torch.float64)
    uniform = torch.full((10, 1, c), 1 / math.sqrt(c), dtype=torch.float64)
    u1, u2 = weight_features(f1, uniform), weight_features(f2, uniform)  # (10, 1, c)
    torch.testing.assert_close(msr_mixture_loss(u1, u2, 0.2), info_nce(f1, f2, 0.2))


def test_mixture_of_identical_strata_is_info_nce():
    torch.manual_seed(0)
    z1, z2 = torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    u1, u2 = z1[:, None].expand(7, 3, 4), z2[:, None].expand(7, 3, 4)
    torch.testing.assert_close(msr_mixture_loss(u1, u2, 0.3), info_nce(z1, z2, 0.3))


def test_mixture_is_invariant_to_permuting_strata_and_matches_its_formula():
    torch.manual_seed(0)
    u1, u2 = torch.randn(6, 4, 5, dtype=torch.float64), torch.randn(6, 4, 5, dtype=torch.float64)
    perm = torch.tensor([2, 0, 3, 1])
    loss = msr_mixture_loss(u1, u2, 0.2)
    torch.testing.assert_close(msr_mixture_loss(u1[:, perm], u2[:, perm], 0.2), loss)
    # -mean_{i,j} log((1/n) sum_t P_t(i,j)) with P_t from the loop reference's formula.
    n, total = 6, 0.0
    for i in range(n):
        for j in range(2):
            p_mean = 0.0
            for t in range(4):
                views = [u1[:, t], u2[:, t]]
                sims = [[F.cosine_similarity(views[j][i], views[m][k], dim=0).item() / 0.2
                         for m in range(2)] for k in range(n)]
                denom = sum(math.exp(sims[k][m]) for k in range(n) for m in range(2)
                            if (k, m) != (i, j))
                p_mean += math.exp(sims[i][1 - j]) / denom / 4
            total += -math.log(p_mean)
    assert loss.item() == pytest.approx(total / (2 * n), rel=1e-10)


def test_mean_reading_averages_the_given_loss_over_strata():
    torch.manual_seed(0)
    u1, u2 = torch.randn(5, 3, 4, dtype=torch.float64), torch.randn(5, 3, 4, dtype=torch.float64)

    def loss_fn(a, b):
        return (a - b).pow(2).sum(-1).mean()

    expected = sum(loss_fn(u1[:, t], u2[:, t]) for t in range(3)) / 3
    torch.testing.assert_close(msr_mean_loss(loss_fn, u1, u2), expected)
    with pytest.raises(ValueError, match="at least one"):
        msr_mean_loss(loss_fn)


@pytest.mark.parametrize("msr_loss", ["mixture", "mean"])
def test_pooled_shortcut_gives_the_same_loss_as_weighting_the_map(msr_loss):
    torch.manual_seed(0)
    c, n = 6, 3
    projector = torch.nn.Sequential(torch.nn.Linear(c, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    projector = projector.double()
    maps = [torch.randn(5, c, 4, 4, dtype=torch.float64) for _ in range(2)]
    a = F.normalize(torch.rand(5, n, c, dtype=torch.float64), dim=-1)
    shortcut = infonce_head_loss(projector, 0.2, msr_loss=msr_loss)(maps, a)[1]
    # The long way: weight every map by a_t, then average-pool, then project.
    u = [projector(weight_features(z, a).mean(dim=(-2, -1))) for z in maps]  # (5, n, 4)
    if msr_loss == "mixture":
        long_way = msr_mixture_loss(u[0], u[1], 0.2)
    else:
        long_way = msr_mean_loss(lambda x, y: info_nce(x, y, 0.2), u[0], u[1])
    torch.testing.assert_close(shortcut, long_way)


def test_head_loss_without_weights_is_the_plain_loss():
    torch.manual_seed(0)
    projector = torch.nn.Linear(4, 3)
    z = [torch.randn(6, 4), torch.randn(6, 4)]
    l_ct, l_msr = infonce_head_loss(projector, 0.5)(z, None)
    torch.testing.assert_close(l_ct, info_nce(projector(z[0]), projector(z[1]), 0.5))
    assert l_msr.item() == 0.0
    with pytest.raises(ValueError, match="msr_loss='sum'"):
        infonce_head_loss(projector, msr_loss="sum")


def test_uniformity_is_zero_for_identical_vectors_and_lower_for_spread_ones():
    c, n = 8, 4
    same = F.normalize(torch.rand(3, 1, c, dtype=torch.float64), dim=-1).expand(3, n, c)
    assert uniformity_loss(same, t=2.0).item() == pytest.approx(0.0, abs=1e-12)
    spread = torch.eye(c, dtype=torch.float64)[:n].expand(3, n, c)  # orthonormal strata
    # a.b = 0 for every pair: log mean exp(-2t) = -2t.
    assert uniformity_loss(spread, t=2.0).item() == pytest.approx(-4.0, rel=1e-12)
    partly = F.normalize(same + 0.5 * spread, dim=-1)
    assert uniformity_loss(spread, 2.0) < uniformity_loss(partly, 2.0) < uniformity_loss(same, 2.0)


def test_uniformity_matches_its_formula_with_loops():
    torch.manual_seed(0)
    a = F.normalize(torch.rand(2, 3, 5, dtype=torch.float64), dim=-1)
    t = 1.5
    expected = 0.0
    for i in range(2):
        g = [math.exp(2 * t * torch.dot(a[i, s], a[i, r]).item() - 2 * t)
             for s in range(3) for r in range(3) if s != r]
        expected += math.log(sum(g) / len(g)) / 2
    assert uniformity_loss(a, t).item() == pytest.approx(expected, rel=1e-12)
    assert uniformity_loss(a[:, :1], t).item() == 0.0
