"""Where A_s comes from (``iclmsr.strata``): f_msr, or the fixed strata of the ablations."""

import pytest
import torch

from solo_iclmsr.core import (FixedStrata, MetaSemanticRegularizer, build_strata, gradient_cosine,
                              infonce_head_loss)


def test_learned_and_frozen_are_the_regularizer():
    for kind in ("learned", "frozen"):
        reg = build_strata(kind, 16, 4, depth=1, width=4)
        assert isinstance(reg, MetaSemanticRegularizer) and reg.n_strata == 4


def test_random_fixed_strata_are_non_negative_unit_vectors_drawn_from_the_seed():
    a = build_strata("random_fixed", 16, 4, seed=3)
    images = torch.rand(5, 3, 8, 8)
    weights = a(images)
    assert weights.shape == (5, 4, 16)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.norm(dim=-1), torch.ones(5, 4))
    assert torch.equal(weights[0], weights[4])  # the same for every image
    assert torch.equal(a.vectors, build_strata("random_fixed", 16, 4, seed=3).vectors)
    assert not torch.equal(a.vectors, build_strata("random_fixed", 16, 4, seed=4).vectors)
    assert list(a.parameters()) == [] and "vectors" in a.state_dict()


@pytest.mark.parametrize("form", ["mixture", "mean"])
def test_uniform_strata_make_l_msr_equal_to_l_ct(form):
    torch.manual_seed(0)
    projector = torch.nn.Linear(16, 8)
    head_loss = infonce_head_loss(projector, 0.2, msr_loss_form=form)
    features = [torch.randn(6, 16, 2, 2), torch.randn(6, 16, 2, 2)]
    weights = build_strata("uniform", 16, 8)(torch.zeros(6, 3, 4, 4))
    assert weights.shape == (6, 1, 16)  # n identical strata give the L_msr of one
    l_ct, l_msr = head_loss(features, weights)
    torch.testing.assert_close(l_msr, l_ct)


def test_fixed_strata_need_the_batch_and_a_matrix():
    with pytest.raises(ValueError, match="vectors must be"):
        FixedStrata(torch.ones(4))
    with pytest.raises(ValueError, match="batch size"):
        FixedStrata(torch.ones(2, 4))()
    with pytest.raises(ValueError, match="iclmsr.strata='fixed' is invalid"):
        build_strata("fixed", 4)


def test_gradient_cosine():
    params = [torch.zeros(3), torch.zeros(2)]
    a = [torch.tensor([1.0, 0.0, 0.0]), None]
    assert gradient_cosine(a, a, params) == pytest.approx(1.0)
    assert gradient_cosine(a, [None, torch.ones(2)], params) == pytest.approx(0.0)
    assert gradient_cosine(a, [-a[0], torch.zeros(2)], params) == pytest.approx(-1.0)
