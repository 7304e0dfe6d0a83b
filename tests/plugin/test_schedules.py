"""The loop options: meta_every, two_stage, gradient accumulation, mixed precision, LARS."""

import pytest
import pytorch_lightning as pl
import torch
from plugin_kit import BATCH, loader, method_kwargs
from solo.methods import METHODS


def _fit(model, **trainer_kwargs):
    trainer_kwargs.setdefault("max_steps", 4)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, **trainer_kwargs)
    trainer.fit(model, loader(n=4 * BATCH))
    return trainer


def _msr_steps(model) -> int:
    state = model.msr_optimizer.state_dict()["state"]
    return int(state[0]["step"]) if state else 0


def test_meta_every_runs_the_meta_step_every_k_batches():
    model = METHODS["simclr_iclmsr"](**method_kwargs("simclr", iclmsr={"meta_every": 2}))
    _fit(model, max_steps=4)
    assert _msr_steps(model) == 2


def test_two_stage_updates_f_msr_in_a_second_pass_after_the_epoch():
    model = METHODS["simclr_iclmsr"](**method_kwargs("simclr", iclmsr={"schedule": "two_stage"}))
    calls = []
    real = model.iclmsr_meta_step
    model.iclmsr_meta_step = lambda *a, **k: calls.append(model.trainer.global_step) or real(*a, **k)
    _fit(model, max_epochs=1, max_steps=-1)
    assert _msr_steps(model) == 4  # one per batch of the epoch's second pass
    assert calls == [4, 4, 4, 4]  # all after the 4 optimizer steps of stage 1


def test_gradient_accumulation_recomputes_the_stage1_gradient():
    model = METHODS["byol_iclmsr"](**method_kwargs("byol"))
    reuse = []
    real = model.iclmsr_meta_step
    model.iclmsr_meta_step = lambda o, r, lr, reuse_grads=False: reuse.append(reuse_grads) or real(o, r, lr, reuse_grads)
    trainer = _fit(model, max_steps=2, accumulate_grad_batches=2)
    assert trainer.global_step == 2 and reuse == [False, False]


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_bf16_mixed_precision_and_lars(name):
    kwargs = method_kwargs(name)
    kwargs.update(lars=True, grad_clip_lars=True, exclude_bias_n_norm=True)
    model = METHODS[f"{name}_iclmsr"](**kwargs)
    before = {n: p.detach().clone() for n, p in model.msr.named_parameters()}
    trainer = _fit(model, max_steps=2, precision="bf16-mixed")
    assert torch.isfinite(trainer.logged_metrics["train_msr_loss_step"])
    assert _msr_steps(model) == 2
    assert any(not torch.equal(before[n], p) for n, p in model.msr.named_parameters())
