"""The meta step (ICLMSR.md section 4) on a tiny CNN + MLP head in float64."""

import copy
from functools import lru_cache

import pytest
import torch
from torch import nn
from torch.func import functional_call

from solo_iclmsr.core import (ICLMSROptions, MetaSemanticRegularizer, PlainGrads, collect_grads,
                              infonce_head_loss, meta_step, optimizer_step, total_loss,
                              uniformity_loss)

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
    return ICLMSROptions(**{"lambda_msr": LAMBDA, "gamma_uni": GAMMA, **kw})


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


#: The coordinates of f_msr's parameters checked numerically: every parameter tensor, 12 random
#: entries of each (the whole gradient costs minutes; a slice of every tensor checks each path).
CHECKED = 12


def checked_coordinates(reg) -> list:
    g = torch.Generator().manual_seed(0)
    return [torch.randperm(p.numel(), generator=g)[:CHECKED].tolist() for p in reg.parameters()]


@lru_cache(maxsize=None)
def numerical_gradient(meta_params: str) -> torch.Tensor:
    """dM/dphi by central differences on the checked coordinates of every parameter of f_msr."""
    encoder, head, reg, views, raw = build()
    h = 1e-6
    out = []
    for p, coords in zip(reg.parameters(), checked_coordinates(reg)):
        flat = p.data.view(-1)
        for i in coords:
            old = flat[i].item()
            flat[i] = old + h
            up = reference_meta_objective(encoder, head, reg, views, raw, meta_params).item()
            flat[i] = old - h
            down = reference_meta_objective(encoder, head, reg, views, raw, meta_params).item()
            flat[i] = old
            out.append((up - down) / (2 * h))
    return torch.tensor(out, dtype=torch.float64)


def meta_gradient(meta_params="all", stage1=False, alpha=ALPHA, plain=None, **kw) -> torch.Tensor:
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
    meta_step(encoder, head, reg, views, raw, head_loss, opts, alpha, stage1_grads=grads,
              plain_grads=plain)
    return torch.cat([p.grad.reshape(-1) for p in reg.parameters()])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("meta_params", ["all", "head"])
@pytest.mark.parametrize("exact_impl", ["jvp", "double_backward"])
def test_exact_meta_gradient_matches_numerical_gradient(meta_params, exact_impl):
    expected = numerical_gradient(meta_params)
    assert expected.norm() > 1e-6
    got = meta_gradient(meta_params, meta_grad="second_order", exact_impl=exact_impl)
    _, _, reg, _, _ = build()
    got = torch.cat([got_p.reshape(-1)[coords] for got_p, coords in zip(
        torch.split(got, [p.numel() for p in reg.parameters()]), checked_coordinates(reg))])
    assert rel_err(got, expected) < 1e-4


@pytest.mark.parametrize("meta_grad", ["second_order", "finite_difference", "linearized"])
def test_reusing_stage1_grads_gives_the_same_gradient(meta_grad):
    fresh = meta_gradient(meta_grad=meta_grad)
    reused = meta_gradient(meta_grad=meta_grad, stage1=True)
    assert rel_err(reused, fresh) < 1e-10


@pytest.mark.parametrize("meta_params", ["all", "head"])
def test_finite_difference_agrees_with_exact(meta_params):
    exact = meta_gradient(meta_params, meta_grad="second_order")
    approx = meta_gradient(meta_params, meta_grad="finite_difference")
    cosine = torch.nn.functional.cosine_similarity(exact, approx, dim=0).item()
    assert cosine > 0.999
    assert rel_err(approx, exact) < 2e-2


def random_relu_bn_model(seed: int):
    """A small random ReLU + BatchNorm encoder and head (random widths), f_msr and data."""
    g = torch.Generator().manual_seed(seed)
    w1, w2, c = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((4, 17), (4, 17), (8, 33)))
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Conv2d(3, w1, 3, padding=1), nn.BatchNorm2d(w1), nn.ReLU(),
                            nn.Conv2d(w1, w2, 3, padding=1, stride=2), nn.BatchNorm2d(w2), nn.ReLU(),
                            nn.Conv2d(w2, c, 3, padding=1, stride=2), nn.BatchNorm2d(c), nn.ReLU())
    head = nn.Sequential(nn.Linear(c, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16))
    reg = MetaSemanticRegularizer(feature_dim=c, n_strata=4, depth=2, width=8)
    raw = torch.rand(16, 3, 16, 16)
    views = [raw + 0.2 * torch.randn_like(raw), raw.flip(-1) + 0.2 * torch.randn_like(raw)]
    return encoder, head, reg, views, raw


def test_finite_difference_is_faithful_in_float32_on_relu_bn_networks():
    """The default fd_epsilon, in float32, against the exact meta-gradient in float64, over 20
    random ReLU + BatchNorm models: ReLU kinks and float32 rounding both stay out of the way."""
    cosines = []
    for seed in range(20):
        grads = {}
        for dtype, mode in ((torch.float64, "second_order"), (torch.float32, "finite_difference")):
            encoder, head, reg, views, raw = random_relu_bn_model(seed)
            encoder, head, reg = encoder.to(dtype), head.to(dtype), reg.to(dtype)
            meta_step(encoder, head, reg, [v.to(dtype) for v in views], raw.to(dtype),
                      infonce_head_loss(head, 0.2), ICLMSROptions(meta_grad=mode), 0.1)
            grads[mode] = torch.cat([p.grad.reshape(-1) for p in reg.parameters()]).double()
        cosines.append(torch.nn.functional.cosine_similarity(
            grads["second_order"], grads["finite_difference"], dim=0).item())
    assert min(cosines) >= 0.99, cosines


def test_linearized_converges_to_exact_as_the_step_shrinks():
    """meta_grad=linearized reads v = grad L_ct at theta instead of theta': the relative error of
    its L_ct(theta') part to the exact one is first order in alpha (gamma = 0 isolates that part;
    the finite differences are made negligible here)."""
    errors = []
    for alpha in (1e-3, 1e-4, 1e-5):
        exact = meta_gradient(alpha=alpha, gamma_uni=0.0)
        linear = meta_gradient(alpha=alpha, meta_grad="linearized", fd_epsilon=1e-8, gamma_uni=0.0)
        errors.append(rel_err(linear, exact))
    assert errors[2] < 2e-2
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] / errors[2] == pytest.approx(10, rel=0.3)  # first order: 10x per decade


def test_linearized_uses_the_given_plain_gradient():
    encoder, head, reg, views, raw = build()
    head_loss = infonce_head_loss(head, TAU)
    l_ct, _ = head_loss([encoder(x) for x in views], None)
    params = {**{"encoder." + k: p for k, p in encoder.named_parameters()},
              **{"head." + k: p for k, p in head.named_parameters()}}
    grads = dict(zip(params, torch.autograd.grad(l_ct, list(params.values()))))
    given = meta_gradient(meta_grad="linearized", plain=PlainGrads(l_ct.detach(), grads))
    computed = meta_gradient(meta_grad="linearized")
    torch.testing.assert_close(given, computed)


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
                                dict(meta_grad="linearized"),
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
    assert result.grad_norm > 0 and result.ct_grad_norm > 0 and result.uni_grad_norm > 0
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


def test_gradient_norm_is_split_into_its_two_parts():
    encoder, head, reg, views, raw = build()
    result = meta_step(encoder, head, reg, views, raw, infonce_head_loss(head, TAU),
                       options(gamma_uni=0.0), ALPHA)
    assert result.uni_grad_norm == 0 and result.ct_grad_norm > 0
    torch.testing.assert_close(result.grad_norm, result.ct_grad_norm)
    encoder, head, reg, views, raw = build()
    result = meta_step(encoder, head, reg, views, raw, infonce_head_loss(head, TAU),
                       options(lambda_msr=0.0), ALPHA)
    assert result.ct_grad_norm == 0 and result.uni_grad_norm > 0
    torch.testing.assert_close(result.grad_norm, result.uni_grad_norm)


# --------------------------------------------------------------------------------------------
# virtual_step: optimizer
# --------------------------------------------------------------------------------------------
OPTIMIZERS = {
    "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.2, momentum=0.9, weight_decay=1e-2),
    "sgd_nesterov_dampening": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.8, nesterov=True,
                                                         weight_decay=1e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2),
}


def _optimizer_with_state(name):
    """The tiny model, an optimizer of kind ``name`` that has taken one step, and the stage-1
    gradient of the next step in ``.grad``."""
    encoder, head, reg, views, raw = build()
    model = nn.ModuleDict(dict(encoder=encoder, head=head))
    optimizer = OPTIMIZERS[name](model.parameters())
    head_loss = infonce_head_loss(head, TAU)
    for _ in range(2):
        optimizer.zero_grad()
        total_loss([encoder(x) for x in views], reg(raw), head_loss, LAMBDA)[0].backward()
        if _ == 0:
            optimizer.step()
    return encoder, head, reg, views, raw, model, optimizer


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_step_is_the_update_the_optimizer_takes(name):
    encoder, head, reg, views, raw, model, optimizer = _optimizer_with_state(name)
    params = {**{"encoder." + k: p for k, p in encoder.named_parameters()},
              **{"head." + k: p for k, p in head.named_parameters()}}
    step = optimizer_step(optimizer, params)
    virtual = step({k: p.detach() for k, p in params.items()},
                   {k: p.grad.detach() for k, p in params.items()})
    state = copy.deepcopy(optimizer.state_dict())
    optimizer.step()
    for k, p in params.items():
        torch.testing.assert_close(virtual[k], p.detach(), rtol=1e-9, atol=1e-12)
    assert optimizer.state_dict()["param_groups"] == state["param_groups"]


def test_lars_groups_follow_the_trust_ratio():
    """Groups with eta / clip_lr / exclude_bias_n_norm (solo-learn's LARS) use its formula."""
    w = torch.randn(4, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    group = dict(params=[w, b], lr=0.5, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=1e-2, eta=0.02, eps=1e-8, clip_lr=True, exclude_bias_n_norm=True)
    optimizer = torch.optim.SGD([w, b], lr=0.5)
    optimizer.param_groups[0].update(group)
    g_w, g_b = torch.randn_like(w), torch.randn_like(b)
    out = optimizer_step(optimizer, {"w": w, "b": b})({"w": w, "b": b}, {"w": g_w, "b": g_b})
    trust = min(0.02 * w.norm() / (g_w.norm() + w.norm() * 1e-2 + 1e-8) / 0.5, 1.0)
    torch.testing.assert_close(out["w"], w - 0.5 * trust * (g_w + 1e-2 * w))
    torch.testing.assert_close(out["b"], b - 0.5 * g_b)  # 1-d, excluded: no scaling, no decay


@pytest.mark.parametrize("name", ["sgd_momentum_wd", "adam"])
def test_meta_gradient_through_the_optimizer_step_is_exact(name):
    """virtual_step=optimizer: the jvp path agrees with the literal double backward through
    theta' = U(theta, g(A)) for the optimizer's own update."""
    grads = {}
    for impl in ("jvp", "double_backward"):
        encoder, head, reg, views, raw, model, optimizer = _optimizer_with_state(name)
        params = {**{"encoder." + k: p for k, p in encoder.named_parameters()},
                  **{"head." + k: p for k, p in head.named_parameters()}}
        stage1 = collect_grads(encoder, head)
        reg.zero_grad(set_to_none=True)
        meta_step(encoder, head, reg, views, raw, infonce_head_loss(head, TAU),
                  options(virtual_step="optimizer", exact_impl=impl),
                  virtual_step=optimizer_step(optimizer, params), stage1_grads=stage1)
        grads[impl] = torch.cat([p.grad.reshape(-1) for p in reg.parameters()])
    assert grads["jvp"].norm() > 0
    assert rel_err(grads["jvp"], grads["double_backward"]) < 1e-8
    plain = meta_gradient()  # the paper's SGD step gives another gradient
    assert rel_err(plain, grads["jvp"]) > 1e-3


def test_optimizer_virtual_step_needs_the_step_and_known_optimizers():
    encoder, head, reg, views, raw = build()
    with pytest.raises(ValueError, match="virtual_step=optimizer needs"):
        meta_step(encoder, head, reg, views, raw, infonce_head_loss(head, TAU),
                  options(virtual_step="optimizer"), ALPHA)
    with pytest.raises(ValueError, match="cannot mirror RMSprop"):
        optimizer_step(torch.optim.RMSprop(head.parameters()), dict(head.named_parameters()))
    with pytest.raises(ValueError, match="not in the optimizer"):
        optimizer_step(torch.optim.SGD(head.parameters(), lr=0.1), dict(encoder.named_parameters()))


def test_regularizer_reading_the_feature_map():
    """msr_input=features: f_msr reads the encoder's map of the raw image; the meta step still
    reaches all of f_msr's parameters."""
    encoder, head, _, views, raw = build()
    reg = MetaSemanticRegularizer(feature_dim=C, n_strata=N_STRATA, depth=1, width=3,
                                  inputs="features", weight_head="softmax", bias=False).double()
    with torch.no_grad():
        raw_map = encoder(raw)
    meta_step(encoder, head, reg, views, None, infonce_head_loss(head, TAU), options(), ALPHA,
              raw_features=raw_map)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reg.parameters())


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (7, 5)])
def test_lean_batch_norm_forward_rule_equals_torchs(affine, shape):
    """The forward-mode rule the jvp pass uses for batch-statistics BatchNorm gives torch's
    generic derivative (values and tangents), for 4-d and 2-d inputs, with and without affine."""
    from torch.func import jvp

    from solo_iclmsr.core.meta_step import _LeanBatchNormJvp

    g = torch.Generator().manual_seed(0)
    x, tx = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    c = shape[1]
    params = (torch.randn(c, generator=g), torch.randn(c, generator=g)) if affine else ()
    tangents = (torch.randn(c, generator=g), torch.randn(c, generator=g)) if affine else ()

    def norm(x, *wb):
        return torch.nn.functional.batch_norm(x, None, None, *wb, training=True, eps=1e-5)

    y_ref, t_ref = jvp(norm, (x, *params), (tx, *tangents))
    with _LeanBatchNormJvp():
        y, t = jvp(norm, (x, *params), (tx, *tangents))
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(t, t_ref, rtol=1e-5, atol=1e-5)
