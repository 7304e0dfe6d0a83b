"""The options of the meta step added for the ablations and for a cheaper step (ICLMSR.md
section 8): ``meta_grad: none``, the virtual step restricted to some encoder parameters and run
from given activations (``meta_stages``), meta sub-batches (``meta_batch``) and the first-order
diagnostic; tiny float64 models."""

import pytest
import torch
from torch import nn

from solo_iclmsr.core import (ICLMSROptions, MetaSemanticRegularizer, PlainGrads,
                              infonce_head_loss, meta_step, uniformity_loss)

ALPHA, TAU = 0.3, 0.5


def build(seed: int = 0, batch: int = 6, bn: bool = True):
    """trunk -> tail encoder (the tail: the last conv stage), projector head, f_msr, data."""
    torch.manual_seed(seed)
    norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
    trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), norm(4), nn.ReLU())
    tail = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, stride=2), norm(6), nn.ReLU())
    encoder = nn.Sequential(trunk, tail).double()
    head = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5)).double()
    reg = MetaSemanticRegularizer(feature_dim=6, n_strata=3, depth=1, width=3).double()
    raw = torch.rand(batch, 3, 8, 8, dtype=torch.float64)
    views = [raw + 0.3 * torch.randn_like(raw), raw.flip(-1) + 0.3 * torch.randn_like(raw)]
    return encoder, head, reg, views, raw


def grad_of(reg: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in reg.parameters()])


def test_meta_grad_none_trains_f_msr_by_the_uniformity_loss_alone():
    encoder, head, reg, views, raw = build()
    result = meta_step(encoder, head, reg, views, raw, infonce_head_loss(head, TAU),
                       ICLMSROptions(meta_grad="none", gamma_uni=0.1), ALPHA)
    got = grad_of(reg)
    reg.zero_grad()
    expected = torch.autograd.grad(0.1 * uniformity_loss(reg(raw), 2.0), list(reg.parameters()))
    torch.testing.assert_close(got, torch.cat([g.reshape(-1) for g in expected]))
    assert result.ct_grad_norm == 0 and torch.isnan(result.ct_virtual)
    torch.testing.assert_close(result.meta_loss, 0.1 * result.uni)


def test_the_virtual_step_from_given_activations_is_the_truncated_step():
    """meta_stages: the meta step on the tail alone, fed the trunk's activations, equals the
    meta step of the whole encoder whose virtual step moves the tail only (the earlier stages
    frozen), exactly, for both exact implementations of the latter."""
    encoder, head, reg, views, raw = build()
    tail_names = [f"1.{k}" for k, _ in encoder[1].named_parameters()]
    reference = {}
    for impl in ("jvp", "double_backward"):
        reg.zero_grad(set_to_none=True)
        meta_step(encoder, head, reg, views, raw, infonce_head_loss(head, TAU),
                  ICLMSROptions(exact_impl=impl), ALPHA, encoder_params=tail_names)
        reference[impl] = grad_of(reg)
    torch.testing.assert_close(reference["jvp"], reference["double_backward"], rtol=1e-9,
                               atol=1e-12)
    with torch.no_grad():
        activations = [encoder[0](x) for x in views]
    reg.zero_grad(set_to_none=True)
    meta_step(encoder[1], head, reg, activations, raw, infonce_head_loss(head, TAU),
              ICLMSROptions(), ALPHA)
    torch.testing.assert_close(grad_of(reg), reference["jvp"], rtol=1e-10, atol=1e-13)
    # ... and it is another gradient than the full step's
    reg.zero_grad(set_to_none=True)
    meta_step(encoder, head, reg, views, raw, infonce_head_loss(head, TAU), ICLMSROptions(), ALPHA)
    assert (grad_of(reg) - reference["jvp"]).norm() > 1e-6 * reference["jvp"].norm()


def test_encoder_params_must_name_trainable_parameters():
    encoder, head, reg, views, raw = build()
    with pytest.raises(ValueError, match="encoder_params names 'nope'"):
        meta_step(encoder, head, reg, views, raw, infonce_head_loss(head, TAU), ICLMSROptions(),
                  ALPHA, encoder_params=["nope"])


def per_image_head_loss(head: nn.Module):
    """A BYOL-like loss that is a mean over images: each view's projection regressed on a fixed
    target of its own image; L_msr the mean reading (the strata's losses averaged)."""
    target = torch.randn(64, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def loss(features, weights, index):
        pooled = [z.mean(dim=(2, 3)) for z in features]

        def one(views):
            t = nn.functional.normalize(target[index], dim=-1)
            return sum(((nn.functional.normalize(head(v), dim=-1) - t) ** 2).sum(-1).mean()
                       for v in views)

        l_ct = one(pooled)
        if weights is None:
            return l_ct, l_ct.new_zeros(())
        strata = [[p * weights[:, t] * weights.shape[-1] ** 0.5 for p in pooled]
                  for t in range(weights.shape[1])]
        return l_ct, torch.stack([one(s) for s in strata]).mean()

    return loss


def test_meta_sub_batches_are_unbiased_for_a_loss_that_is_a_mean_over_images():
    """meta_batch: the mean of the sub-batch meta-gradients over many draws equals the
    whole-batch meta-gradient within its standard error (no BatchNorm, so that images do not
    interact)."""
    batch = 8
    encoder, head, reg, views, raw = build(batch=batch, bn=False)
    loss = per_image_head_loss(head)
    full_index = torch.arange(batch)
    meta_step(encoder, head, reg, views, raw, lambda f, w: loss(f, w, full_index),
              ICLMSROptions(gamma_uni=0.0), ALPHA)
    full = grad_of(reg).clone()
    generator = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(300):
        reg.zero_grad(set_to_none=True)
        meta_step(encoder, head, reg, views, raw, lambda f, w: loss(f, w, full_index),
                  ICLMSROptions(gamma_uni=0.0, meta_batch=0.5), ALPHA, generator=generator,
                  subset_loss=lambda index: (lambda f, w: loss(f, w, index)))
        draws.append(grad_of(reg).clone())
    draws = torch.stack(draws)
    mean, se = draws.mean(0), draws.std(0) / len(draws) ** 0.5
    assert (draws.std(0) > 0).any(), "the sub-batches must differ between draws"
    z = ((mean - full) / se.clamp_min(1e-12 * full.abs().max()))
    assert z.abs().max() < 5, z.abs().max()
    # over all coordinates: the error is of the size of the standard error, not larger
    assert (mean - full).norm() < 2 * se.norm()


def test_a_meta_batch_of_the_whole_batch_is_the_plain_meta_step():
    encoder, head, reg, views, raw = build()
    meta_step(encoder, head, reg, views, raw, infonce_head_loss(head, TAU), ICLMSROptions(), ALPHA)
    plain = grad_of(reg).clone()
    reg.zero_grad(set_to_none=True)
    meta_step(encoder, head, reg, views, raw, infonce_head_loss(head, TAU),
              ICLMSROptions(meta_batch=6), ALPHA)
    torch.testing.assert_close(grad_of(reg), plain)


def test_sub_batches_touch_only_their_images_and_follow_the_generator():
    encoder, head, reg, views, raw = build(batch=8)
    seen = []

    def subset(index):
        seen.append(index.tolist())
        return infonce_head_loss(head, TAU)

    runs = []
    for _ in range(2):
        reg.zero_grad(set_to_none=True)
        meta_step(encoder, head, reg, views, raw, infonce_head_loss(head, TAU),
                  ICLMSROptions(meta_batch=0.25), ALPHA, subset_loss=subset,
                  generator=torch.Generator().manual_seed(3))
        runs.append(grad_of(reg).clone())
    assert all(len(s) == 2 for s in seen) and seen[:2] == seen[2:]  # v and jvp draws, same seed
    torch.testing.assert_close(runs[0], runs[1])


def test_the_first_order_diagnostic():
    """diagnose: the first-order (alignment) term is the linearized meta-gradient's L_ct part;
    it approaches the exact one as the step shrinks; for meta_grad=linearized it is the whole
    L_ct part."""
    cosines = []
    for alpha in (0.3, 1e-4):
        encoder, head, reg, views, raw = build()
        result = meta_step(encoder, head, reg, views, raw, infonce_head_loss(head, TAU),
                           ICLMSROptions(gamma_uni=0.0, fd_epsilon=1e-7), alpha, diagnose=True)
        assert result.first_order_grad_norm > 0
        cosines.append(float(result.first_order_cos))
        total = result.ct_grad_norm
        assert result.curvature_grad_norm <= total + result.first_order_grad_norm
    assert cosines[1] > 0.999 and cosines[1] >= cosines[0] - 1e-9
    encoder, head, reg, views, raw = build()
    result = meta_step(encoder, head, reg, views, raw, infonce_head_loss(head, TAU),
                       ICLMSROptions(meta_grad="linearized"), ALPHA, diagnose=True)
    torch.testing.assert_close(result.first_order_cos, torch.ones((), dtype=torch.float64))
    assert result.curvature_grad_norm < 1e-12
    encoder, head, reg, views, raw = build()
    plain = meta_step(encoder, head, reg, views, raw, infonce_head_loss(head, TAU),
                      ICLMSROptions(), ALPHA)
    assert plain.first_order_cos is None


def test_the_diagnostic_reads_the_given_plain_gradient():
    encoder, head, reg, views, raw = build()
    head_loss = infonce_head_loss(head, TAU)
    l_ct, _ = head_loss([encoder(x) for x in views], None)
    params = {**{"encoder." + k: p for k, p in encoder.named_parameters()},
              **{"head." + k: p for k, p in head.named_parameters()}}
    grads = dict(zip(params, torch.autograd.grad(l_ct, list(params.values()))))
    given = meta_step(encoder, head, reg, views, raw, head_loss, ICLMSROptions(), ALPHA,
                      plain_grads=PlainGrads(l_ct.detach(), grads), diagnose=True)
    computed = meta_step(encoder, head, reg, views, raw, head_loss, ICLMSROptions(), ALPHA,
                         diagnose=True)
    torch.testing.assert_close(given.first_order_cos, computed.first_order_cos)


@pytest.mark.parametrize("options, message", [
    (dict(meta_params="head", meta_stages=1), "meta_stages=1 is invalid"),
    (dict(meta_stages=0), "meta_stages=0 is invalid"),
    (dict(meta_batch=2.5), "meta_batch=2.5 is invalid"),
    (dict(meta_batch=0), "meta_batch=0 is invalid"),
    (dict(meta_batch=0.5, exact_impl="double_backward"), "meta_batch=0.5 is invalid"),
    (dict(strata="learnt"), "strata='learnt' is invalid"),
])
def test_invalid_options_name_the_key(options, message):
    with pytest.raises(ValueError, match=message):
        ICLMSROptions(**options)


def test_meta_batch_size_and_which_strata_have_a_meta_step():
    assert ICLMSROptions(meta_batch=0.25).meta_batch_size(112) == 28
    assert ICLMSROptions(meta_batch=32).meta_batch_size(112) == 32
    assert ICLMSROptions(meta_batch=500).meta_batch_size(112) == 112
    assert ICLMSROptions().meta_batch_size(7) == 7
    assert ICLMSROptions().should_meta_step(0)
    for kind in ("frozen", "random_fixed", "uniform"):
        assert not ICLMSROptions(strata=kind).should_meta_step(0)
