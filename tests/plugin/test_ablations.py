"""The ablations of the strata and the gradient diagnostics inside solo's methods (ICLMSR.md
section 8): ``strata: frozen | random_fixed | uniform``, ``meta_grad: none`` and
``diagnostics.every_n_steps``."""

import math

import pytest
import torch
from plugin_kit import BATCH, build, loader, quiet, raw_batch, trainer

from solo_iclmsr.core import FixedStrata, MetaSemanticRegularizer


def _fit(model, steps: int = 2):
    fit = trainer(max_steps=steps)
    fit.fit(model, loader(n=4 * BATCH))
    return fit


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_frozen_strata_keep_f_msr_at_its_initialisation_with_no_meta_step():
    model = build("simclr", iclmsr={"strata": "frozen"})
    assert isinstance(model.msr, MetaSemanticRegularizer) and model.msr_optimizer is None
    before = _params(model.msr)
    model.iclmsr_meta_step = lambda *a, **k: pytest.fail("no meta step for frozen strata")
    fit = _fit(model)
    assert all(torch.equal(before[n], p) for n, p in model.msr.named_parameters())
    assert math.isfinite(float(fit.logged_metrics["train_msr_loss"]))
    # image-dependent: two images get different strata
    weights = model._proposals(torch.rand(2, 3, 16, 16))
    assert not torch.allclose(weights[0], weights[1])


def test_random_fixed_strata_come_from_the_run_seed_and_are_saved():
    a = build("simclr", ["++seed=3"], iclmsr={"strata": "random_fixed"})
    b = build("simclr", ["++seed=3"], iclmsr={"strata": "random_fixed"})
    c = build("simclr", ["++seed=4"], iclmsr={"strata": "random_fixed"})
    assert isinstance(a.msr, FixedStrata)
    assert torch.equal(a.msr.vectors, b.msr.vectors)
    assert not torch.equal(a.msr.vectors, c.msr.vectors)
    assert a.msr.vectors.shape == (2, a.features_dim)  # n_strata of the tiny configs
    assert torch.equal(a.state_dict()["msr.vectors"], a.msr.vectors)


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_uniform_strata_make_l_msr_the_methods_loss(name):
    """a_t = 1/sqrt(c): the mixture reading (SimCLR) and the mean reading (BYOL) both give
    L_msr = L_ct, and grad L_msr is grad L_ct (the diagnostic's cosine is 1)."""
    model = quiet(build(name, iclmsr={"strata": "uniform"}, overrides=[
        "++diagnostics.every_n_steps=1"]))
    logged = {}
    model.log = lambda key, value, **k: logged.__setitem__(key, float(value))
    model.log_dict = lambda d, **k: logged.update({k_: float(v) for k_, v in d.items()})
    batch = model.on_after_batch_transfer(raw_batch(), 0)
    torch.manual_seed(0)
    l_to = model.training_step(batch, 0)
    # l_to = L_ct + classifier loss + lambda L_msr, and L_msr = L_ct
    l_ct = float(l_to) - _classifier_loss(model, batch)
    assert logged["train_msr_loss"] * (1 + model.iclmsr.lambda_msr) == pytest.approx(l_ct, rel=1e-5)
    assert logged["diag/grad_cos_msr_ct"] == pytest.approx(1.0, abs=1e-5)


def _classifier_loss(model, batch) -> float:
    """The online classifier's part of the method's returned loss (it is no SSL loss)."""
    with torch.no_grad():
        out = model._base_shared_step(batch[1][0], batch[2])
    losses = [out["loss"]]
    for x in batch[1][1:model.num_large_crops]:
        losses.append(model._base_shared_step(x, batch[2])["loss"])
    return float(sum(losses) / len(losses))


def test_meta_grad_none_trains_f_msr_by_l_uni_alone():
    model = build("simclr", iclmsr={"meta_grad": "none"})
    before = _params(model.msr)
    fit = _fit(model)
    assert any(not torch.equal(before[n], p) for n, p in model.msr.named_parameters())
    metrics = fit.logged_metrics
    assert float(metrics["train_meta_grad_norm_ct_epoch"]) == 0
    assert float(metrics["train_meta_grad_norm_uni_epoch"]) > 0
    assert "train_meta_ct_virtual_epoch" not in metrics


def test_the_gradient_diagnostics_are_logged_on_their_steps():
    model = build("byol", ["++diagnostics.every_n_steps=2"])
    calls = []
    real = model.iclmsr_meta_step

    def spy(record, raw, optimizer, reuse_grads=False, plain=None, diagnose=False, **kwargs):
        calls.append((model.global_step, diagnose, plain is not None))
        return real(record, raw, optimizer, reuse_grads, plain, diagnose, **kwargs)

    model.iclmsr_meta_step = spy
    fit = _fit(model, steps=3)
    assert calls == [(0, True, True), (1, False, False), (2, True, True)]
    metrics = fit.logged_metrics
    for key in ("diag/grad_cos_msr_ct", "diag/meta_first_order_cos_epoch",
                "diag/meta_first_order_norm_epoch", "diag/meta_curvature_norm_epoch"):
        assert math.isfinite(float(metrics[key])), key
    assert -1 <= float(metrics["diag/grad_cos_msr_ct"]) <= 1


def test_no_diagnostics_when_switched_off():
    model = build("simclr", ["++diagnostics.every_n_steps=0"])
    fit = _fit(model, steps=1)
    assert not any(k.startswith("diag/") for k in fit.logged_metrics)
