"""InfoNCE, both readings of L_msr and L_uni (ICLMSR.md section 3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from solo_iclmsr.core import (info_nce, info_nce_log_prob, infonce_head_loss, msr_loss,
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
    loss = msr_loss(lambda v: info_nce_log_prob(v[0], v[1], 0.2), [f1, f2], uniform, "mixture")
    torch.testing.assert_close(loss, info_nce(f1, f2, 0.2))


def test_mixture_of_identical_strata_is_info_nce():
    torch.manual_seed(0)
    c = 4
    z1, z2 = torch.randn(7, c, dtype=torch.float64), torch.randn(7, c, dtype=torch.float64)
    same = torch.full((7, 3, c), 1 / math.sqrt(c), dtype=torch.float64)
    loss = msr_loss(lambda v: info_nce_log_prob(v[0], v[1], 0.3), [z1, z2], same, "mixture")
    torch.testing.assert_close(loss, info_nce(z1, z2, 0.3))


def test_mixture_matches_the_backdoor_formula_with_loops():
    """-mean_{i,j} log((1/n) sum_t P_t(i,j)), P_t the InfoNCE probability of the positive on the
    a_t-weighted features, negatives from the same stratum; invariant to permuting strata."""
    torch.manual_seed(0)
    n_img, c, n = 6, 5, 4
    f1, f2 = torch.randn(n_img, c, dtype=torch.float64), torch.randn(n_img, c, dtype=torch.float64)
    a = F.normalize(torch.rand(n_img, n, c, dtype=torch.float64), dim=-1)
    fn = lambda v: info_nce_log_prob(v[0], v[1], 0.2)  # noqa: E731
    loss = msr_loss(fn, [f1, f2], a, "mixture")
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(msr_loss(fn, [f1, f2], a[:, perm], "mixture"), loss)
    u = [weight_features(f, a) for f in (f1, f2)]  # (N, n, c): sqrt(c) a_t * f
    total = 0.0
    for i in range(n_img):
        for j in range(2):
            p_mean = 0.0
            for t in range(n):
                views = [u[0][:, t], u[1][:, t]]
                sims = [[F.cosine_similarity(views[j][i], views[m][k], dim=0).item() / 0.2
                         for m in range(2)] for k in range(n_img)]
                denom = sum(math.exp(sims[k][m]) for k in range(n_img) for m in range(2)
                            if (k, m) != (i, j))
                p_mean += math.exp(sims[i][1 - j]) / denom / n
            total += -math.log(p_mean)
    assert loss.item() == pytest.approx(total / (2 * n_img), rel=1e-10)


def test_mean_reading_averages_the_given_loss_over_strata():
    torch.manual_seed(0)
    c, n = 4, 3
    f1, f2 = torch.randn(5, c, dtype=torch.float64), torch.randn(5, c, dtype=torch.float64)
    a = F.normalize(torch.rand(5, n, c, dtype=torch.float64), dim=-1)

    def loss_fn(views):
        return (views[0] - views[1]).pow(2).sum(-1).mean()

    w = [weight_features(f, a) for f in (f1, f2)]
    expected = sum(loss_fn([w[0][:, t], w[1][:, t]]) for t in range(n)) / n
    torch.testing.assert_close(msr_loss(loss_fn, [f1, f2], a, "mean"), expected)
    with pytest.raises(ValueError, match="form='sum'"):
        msr_loss(loss_fn, [f1, f2], a, "sum")


def test_a_batchnorm_head_normalises_each_stratum_on_its_own():
    """One definition of L_msr: the head runs once per stratum, so its BatchNorm statistics are
    those of the B vectors of one stratum (as for the plain features), not of all B * n."""
    torch.manual_seed(0)
    c, n = 6, 3
    projector = torch.nn.Sequential(torch.nn.Linear(c, 8), torch.nn.BatchNorm1d(8),
                                    torch.nn.ReLU(), torch.nn.Linear(8, 4)).double()
    feats = [torch.randn(5, c, dtype=torch.float64) for _ in range(2)]
    a = F.normalize(torch.rand(5, n, c, dtype=torch.float64), dim=-1)
    got = infonce_head_loss(projector, 0.2, msr_loss_form="mean")(feats, a)[1]
    w = [weight_features(f, a) for f in feats]
    per_stratum = [info_nce(projector(w[0][:, t]), projector(w[1][:, t]), 0.2) for t in range(n)]
    torch.testing.assert_close(got, sum(per_stratum) / n)
    joint = [projector(x.flatten(0, 1)).view(5, n, -1) for x in w]  # BN over all B * n vectors
    other = sum(info_nce(joint[0][:, t], joint[1][:, t], 0.2) for t in range(n)) / n
    assert abs(other.item() - got.item()) > 1e-6


@pytest.mark.parametrize("form", ["mixture", "mean"])
def test_pooled_shortcut_gives_the_same_loss_as_weighting_the_map(form):
    torch.manual_seed(0)
    c, n = 6, 3
    projector = torch.nn.Sequential(torch.nn.Linear(c, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    projector = projector.double()
    maps = [torch.randn(5, c, 4, 4, dtype=torch.float64) for _ in range(2)]
    a = F.normalize(torch.rand(5, n, c, dtype=torch.float64), dim=-1)
    shortcut = infonce_head_loss(projector, 0.2, msr_loss_form=form)(maps, a)[1]
    # The long way: weight every map by a_t, then average-pool, then project.
    u = [projector(weight_features(z, a).mean(dim=(-2, -1))) for z in maps]  # (5, n, 4)
    log_p = torch.stack([info_nce_log_prob(u[0][:, t], u[1][:, t], 0.2) for t in range(n)])
    if form == "mixture":
        long_way = -(torch.logsumexp(log_p, 0) - math.log(n)).mean()
    else:
        long_way = -log_p.mean()
    torch.testing.assert_close(shortcut, long_way)


def test_head_loss_without_weights_is_the_plain_loss():
    torch.manual_seed(0)
    projector = torch.nn.Linear(4, 3)
    z = [torch.randn(6, 4), torch.randn(6, 4)]
    l_ct, l_msr = infonce_head_loss(projector, 0.5)(z, None)
    torch.testing.assert_close(l_ct, info_nce(projector(z[0]), projector(z[1]), 0.5))
    assert l_msr.item() == 0.0
    with pytest.raises(ValueError, match="msr_loss_form='sum'"):
        infonce_head_loss(projector, msr_loss_form="sum")


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


def test_uniformity_over_the_batch_counts_pairs_across_images():
    """uni_over=batch: image-independent distinct masks are no longer a minimiser."""
    torch.manual_seed(0)
    c, n, b, t = 8, 3, 4, 2.0
    fixed = torch.eye(c, dtype=torch.float64)[:n].expand(b, n, c)  # same n masks on every image
    assert uniformity_loss(fixed, t, "image").item() == pytest.approx(-2 * t, rel=1e-12)
    # over the batch, the same stratum of two images is a pair at distance 0
    vecs = fixed.reshape(-1, c)
    g = [math.exp(2 * t * torch.dot(vecs[i], vecs[j]).item() - 2 * t)
         for i in range(b * n) for j in range(b * n) if i != j]
    assert uniformity_loss(fixed, t, "batch").item() == pytest.approx(math.log(sum(g) / len(g)),
                                                                      rel=1e-12)
    spread = torch.eye(b * n, c, dtype=torch.float64).view(b, n, c)  # all B * n orthogonal
    assert uniformity_loss(spread, t, "batch") < uniformity_loss(fixed, t, "batch")
    with pytest.raises(ValueError, match="over='pairs'"):
        uniformity_loss(fixed, t, "pairs")
