"""The loop options: meta_every, two_stage, gradient accumulation, mixed precision, solo's
LARS, and the optimizer's virtual step."""

import pytest
import torch
from plugin_kit import BATCH, build, loader, quiet, raw_batch, trainer
from solo.utils.lars import LARS

from solo_iclmsr.core import optimizer_step


def _fit(model, **kwargs):
    kwargs.setdefault("max_steps", 4)
    fit = trainer(**kwargs)
    fit.fit(model, loader(n=4 * BATCH))
    return fit


def _msr_steps(model) -> int:
    state = model.msr_optimizer.state_dict()["state"]
    return int(state[0]["step"]) if state else 0


def test_meta_every_runs_the_meta_step_every_k_batches():
    model = build("simclr", iclmsr={"meta_every": 2})
    _fit(model, max_steps=4)
    assert _msr_steps(model) == 2


def test_two_stage_updates_f_msr_in_a_second_pass_after_the_epoch():
    model = build("simclr", ["scheduler.name=none"], iclmsr={"schedule": "two_stage"})
    calls = []
    real = model.iclmsr_meta_step
    model.iclmsr_meta_step = lambda *a, **k: calls.append(model.trainer.global_step) or real(*a, **k)
    _fit(model, max_epochs=1, max_steps=-1)
    assert _msr_steps(model) == 4  # one per batch of the epoch's second pass
    assert calls == [4, 4, 4, 4]  # all after the 4 optimizer steps of stage 1


def test_gradient_accumulation_recomputes_the_stage1_gradient():
    model = build("byol")
    reuse = []
    real = model.iclmsr_meta_step

    def spy(record, raw, optimizer, reuse_grads=False, *args, **kwargs):
        reuse.append(reuse_grads)
        return real(record, raw, optimizer, reuse_grads, *args, **kwargs)

    model.iclmsr_meta_step = spy
    fit = _fit(model, max_steps=2, accumulate_grad_batches=2)
    assert fit.global_step == 2 and reuse == [False, False]


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_bf16_mixed_precision_with_solos_lars(name):
    model = build(name)  # solo's CIFAR recipes train with LARS (clip_lr, exclude_bias_n_norm)
    assert model.optimizer == "lars" and model.extra_optimizer_args.exclude_bias_n_norm
    before = {n: p.detach().clone() for n, p in model.msr.named_parameters()}
    fit = _fit(model, max_steps=2, precision="bf16-mixed")
    assert torch.isfinite(fit.logged_metrics["train_msr_loss"])
    assert _msr_steps(model) == 2
    assert any(not torch.equal(before[n], p) for n, p in model.msr.named_parameters())


def test_the_optimizer_virtual_step_is_solos_lars_update():
    """virtual_step=optimizer: theta' is where solo's LARS (momentum, weight decay, trust ratio,
    clipping, excluded biases and norms) moves theta, with its state only read."""
    model = quiet(build("simclr"))
    fit = trainer(max_steps=1)
    fit.fit(model, loader(n=BATCH))  # LARS now has momentum buffers
    optimizer = fit.optimizers[0]
    assert isinstance(optimizer, LARS)
    batch = model.on_after_batch_transfer(raw_batch(seed=1), 0)
    optimizer.zero_grad()
    model.training_step(batch, 0).backward()
    _, params = model._theta()
    step = optimizer_step(optimizer, params)
    virtual = step({k: p.detach() for k, p in params.items()},
                   {k: p.grad.detach() for k, p in params.items()})
    first = next(iter(params.values()))
    state = {k: v.clone() for k, v in optimizer.state[first].items()}
    optimizer.step()
    for name, p in params.items():
        torch.testing.assert_close(virtual[name], p.detach(), rtol=1e-5, atol=1e-7, msg=name)
    assert not torch.equal(state["momentum_buffer"], optimizer.state[first]["momentum_buffer"])


@pytest.mark.parametrize("options", [{"virtual_step": "optimizer"},
                                     {"meta_grad": "linearized"},
                                     {"meta_grad": "finite_difference"},
                                     {"uni_over": "batch", "weight_head": "softmax",
                                      "weight_bias": False, "msr_input": "both"}])
def test_the_options_train_in_a_real_fit(options):
    model = build("simclr", iclmsr=options)
    before = {n: p.detach().clone() for n, p in model.msr.named_parameters()}
    fit = _fit(model, max_steps=2)
    assert torch.isfinite(fit.logged_metrics["train_meta_loss_epoch"])
    assert any(not torch.equal(before[n], p) for n, p in model.msr.named_parameters())
