"""The meta step (ICLMSR.md section 4) on a tiny CNN + MLP head in float64."""

import copy
from functools import lru_cache

import pytest
import torch
from torch import nn
from torch.func import functional_call

from solo_iclmsr.core import (ICLMSROptions, MetaSemanticRegularizer, collect_grads,
                              infonce_head_loss, meta_step, total_loss, uniformity_loss)

ALPHA, LAMBDA, GAMMA, TAU = 0.3, 1.0, 0.1, 0.5
C, N_STRATA = 6, 3


def build(seed: int = 0):
    """encoder (3 -> map of C channels, with BN), projector head (with BN), f_msr, data."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                            nn.Conv2d(4, C, 3, padding=1, stride=2)).double()
    head = nn.Sequential(nn.Linear(C, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5)).double()
    reg = MetaSemanticRegularizer(feature_dim=C, n_strata=N_STRATA, depth=1, width=3).double()
    raw = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    views = [raw + 0.3 * torch.randn_like(raw), raw.flip(-1) + 0.3 * torch.randn_like(raw)]
    return encoder, head, reg, views, raw


def options(**kw) -> ICLMSROptions:
    return ICLMSROptions(lambda_msr=LAMBDA, gamma_uni=GAMMA, **kw)


def reference_meta_objective(encoder, head, reg, views, raw, meta_params):
    """M(phi) = L_ct(theta - alpha grad L_to(theta, A(phi))) + gamma L_uni(A(phi)), written with
    functional calls on copied buffers (so BN uses batch statistics and nothing is updated)."""
    a = reg(raw)
    enc_p = {k: p.detach().requires_grad_() for k, p in encoder.named_parameters()}
    head_p = {k: p.detach().requires_grad_() for k, p in head.named_parameters()}
    enc_b = {k: b.clone() for k, b in encoder.named_buffers()}
    head_b = {k: b.clone() for k, b in head.named_buffers()}

    def loss(ep, hp, weights):
        feats = [functional_call(encoder, {**ep, **enc_b}, (x,)) for x in views]
        projector = lambda x: functional_call(head, {**hp, **head_b}, (x,))  # noqa: E731
        return infonce_head_loss(projector, TAU)(feats, weights)

    l_ct, l_msr = loss(enc_p, head_p, a)
    theta = list(head_p.values()) + (list(enc_p.values()) if meta_params == "all" else [])
    grads = torch.autograd.grad(l_ct + LAMBDA * l_msr, theta)
    virtual = [p - ALPHA * g for p, g in zip(theta, grads)]
    head_v = dict(zip(head_p, virtual[:len(head_p)]))
    enc_v = dict(zip(enc_p, virtual[len(head_p):])) if meta_params == "all" else enc_p
    return loss(enc_v, head_v, None)[0] + GAMMA * uniformity_loss(a, 2.0)


@lru_cache(maxsize=None)
def numerical_gradient(meta_params: str) -> torch.Tensor:
    """dM/dphi by central differences on every parameter of f_msr."""
    encoder, head, reg, views, raw = build()
    h = 1e-6
    out = []
    for p in reg.parameters():
        flat = p.data.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + h
            up = reference_meta_objective(encoder, head, reg, views, raw, meta_params).item()
            flat[i] = old - h
            down = reference_meta_objective(encoder, head, reg, views, raw, meta_params).item()
            flat[i] = old
            out.append((up - down) / (2 * h))
    return torch.tensor(out, dtype=torch.float64)


def meta_gradient(meta_params="all", stage1=False, **kw) -> torch.Tensor:
    encoder, head, reg, views, raw = build()
    opts = options(meta_params=meta_params, **kw)
    head_loss = infonce_head_loss(head, TAU)
    grads = None
    if stage1:
        weights = reg(raw)
        l_to, _, _ = total_loss([encoder(x) for x in views], weights, head_loss, LAMBDA)
        l_to.backward()
        grads = collect_grads(encoder, head)
        assert all(p.grad is None for p in reg.parameters()), "L_to must not reach f_msr"
    meta_step(encoder, head, reg, views, raw, head_loss, opts, ALPHA, stage1_grads=grads)
    return torch.cat([p.grad.reshape(-1) for p in reg.parameters()])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("meta_params", ["all", "head"])
@pytest.mark.parametrize("exact_impl", ["jvp", "double_backward"])
def test_exact_meta_gradient_matches_numerical_gradient(meta_params, exact_impl):
    expected = numerical_gradient(meta_params)
    assert expected.norm() > 1e-6
    got = meta_gradient(meta_params, meta_grad="second_order", exact_impl=exact_impl)
    assert rel_err(got, expected) < 1e-4


@pytest.mark.parametrize("meta_grad", ["second_order", "finite_difference"])
def test_reusing_stage1_grads_gives_the_same_gradient(meta_grad):
    fresh = meta_gradient(meta_grad=meta_grad)
    reused = meta_gradient(meta_grad=meta_grad, stage1=True)
    assert rel_err(reused, fresh) < 1e-10


@pytest.mark.parametrize("meta_params", ["all", "head"])
def test_finite_difference_agrees_with_exact(meta_params):
    exact = meta_gradient(meta_params, meta_grad="second_order")
    approx = meta_gradient(meta_params, meta_grad="finite_difference")
    cosine = torch.nn.functional.cosine_similarity(exact, approx, dim=0).item()
    assert cosine > 0.99
    assert rel_err(approx, exact) < 5e-2


def test_detaching_grad_l_to_gives_f_msr_no_signal_from_l_ct():
    """The first-order shortcut: theta' = theta - alpha * stopgrad(grad L_to). L_ct(theta') then
    does not depend on A, so only L_uni would train f_msr; this is why it is not offered."""
    encoder, head, reg, views, raw = build()
    a = reg(raw)
    head_loss = infonce_head_loss(head, TAU)
    params = dict(encoder.named_parameters())
    l_ct, l_msr = head_loss([encoder(x) for x in views], a)  # A attached: the full L_to graph
    grads = torch.autograd.grad(l_ct + LAMBDA * l_msr, list(params.values()))
    virtual = {k: p - ALPHA * g.detach() for (k, p), g in zip(params.items(), grads)}
    ct_virtual = head_loss([functional_call(encoder, virtual, (x,)) for x in views], None)[0]
    meta_grads = torch.autograd.grad(ct_virtual, list(reg.parameters()), allow_unused=True)
    assert all(g is None or g.abs().max() == 0 for g in meta_grads)
    # ... whereas the second-order meta-gradient of the same L_ct(theta') (gamma = 0) is not zero.
    encoder, head, reg, views, raw = build()
    meta_step(encoder, head, reg, views, raw, infonce_head_loss(head, TAU),
              ICLMSROptions(lambda_msr=LAMBDA, gamma_uni=0.0), ALPHA)
    assert torch.cat([p.grad.reshape(-1) for p in reg.parameters()]).norm() > 1e-6


@pytest.mark.parametrize("kw", [dict(meta_grad="second_order", exact_impl="jvp"),
                                dict(meta_grad="second_order", exact_impl="double_backward"),
                                dict(meta_grad="finite_difference"),
                                dict(meta_grad="second_order", meta_params="head")])
def test_virtual_step_leaves_model_optimizer_and_grads_untouched(kw):
    encoder, head, reg, views, raw = build()
    model = nn.ModuleDict(dict(encoder=encoder, head=head))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    head_loss = infonce_head_loss(head, TAU)
    l_to, _, _ = total_loss([encoder(x) for x in views], reg(raw), head_loss, LAMBDA)
    l_to.backward()
    optimizer.step()  # the optimizer now has momentum buffers
    l_to, _, _ = total_loss([encoder(x) for x in views], reg(raw), head_loss, LAMBDA)
    optimizer.zero_grad()
    l_to.backward()  # stage-1 grads in .grad, as when the meta step runs before optimizer.step
    state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    result = meta_step(encoder, head, reg, views, raw, head_loss, options(**kw), ALPHA,
                       stage1_grads=collect_grads(encoder, head))
    for k, v in model.state_dict().items():  # parameters and BN running statistics
        assert torch.equal(v, state[k]), f"{k} changed"
    after = optimizer.state_dict()
    for i, s in opt_state["state"].items():
        assert torch.equal(after["state"][i]["momentum_buffer"], s["momentum_buffer"])
    assert after["param_groups"] == opt_state["param_groups"]
    for k, p in model.named_parameters():
        assert torch.equal(p.grad, grads[k]), f"{k}.grad changed"
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reg.parameters())
    assert result.grad_norm > 0
    torch.testing.assert_close(result.meta_loss, result.ct_virtual + GAMMA * result.uni)


def test_meta_step_accumulates_into_the_regularizer_grad():
    once = meta_gradient()
    encoder, head, reg, views, raw = build()
    for _ in range(2):
        meta_step(encoder, head, reg, views, raw, infonce_head_loss(head, TAU), options(), ALPHA)
    twice = torch.cat([p.grad.reshape(-1) for p in reg.parameters()])
    torch.testing.assert_close(twice, 2 * once)


def test_precomputed_weights_and_token_features_work():
    """A_s passed in (with its graph) gives the gradient of computing it inside; token outputs."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, C, 3, stride=2), nn.Flatten(2)).double()

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = encoder

        def forward(self, x):
            return self.body(x).transpose(1, 2)  # (B, L, C)

    _, head, reg, views, raw = build()
    tokens = Tokens()
    grads = []
    for weights in (None, "given"):
        reg.zero_grad(set_to_none=True)
        w = reg(raw) if weights else None
        meta_step(tokens, head, reg, views, raw, infonce_head_loss(head, TAU), options(), ALPHA,
                  weights=w)
        grads.append(torch.cat([p.grad.reshape(-1) for p in reg.parameters()]))
    assert grads[0].norm() > 0
    torch.testing.assert_close(grads[0], grads[1])


def test_error_paths_name_the_problem():
    encoder, head, reg, views, raw = build()
    head_loss = infonce_head_loss(head, TAU)
    with pytest.raises(ValueError, match="alpha=0"):
        meta_step(encoder, head, reg, views, raw, head_loss, options(), 0)
    with pytest.raises(ValueError, match="detached"):
        meta_step(encoder, head, reg, views, raw, head_loss, options(), ALPHA,
                  weights=reg(raw).detach())
    with pytest.raises(ValueError, match="stage1_grads lacks"):
        meta_step(encoder, head, reg, views, raw, head_loss, options(), ALPHA, stage1_grads={})
