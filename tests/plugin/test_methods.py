"""The contract of every <name>_iclmsr variant: a short Lightning fit on a tiny timm backbone.

For each of the 14 methods: the loss is finite, L_msr and L_uni are logged, f_msr, the backbone and
the head all change, and the virtual step of the meta step leaves every buffer as it was.
"""

import math

import pytest
import pytorch_lightning as pl
import torch
from plugin_kit import METHOD_NAMES, loader, make_batch, method_kwargs
from solo.methods import METHODS

from solo_iclmsr import adapters


def _trainer(**kwargs):
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(before, module, prefix):
    return any(not torch.equal(before[n], p.detach())
               for n, p in module.named_parameters() if n.startswith(prefix))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_fit_with_iclmsr_trains_everything(name):
    model = METHODS[f"{name}_iclmsr"](**method_kwargs(name))
    before = _snapshot(model)
    trainer = _trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, loader())
    metrics = trainer.logged_metrics
    for key in ("train_msr_loss", "train_uni_loss", "train_meta_loss"):
        assert f"{key}_step" in metrics, (key, sorted(metrics))
        assert math.isfinite(float(metrics[f"{key}_step"])), (key, metrics)
    assert _changed(before, model, "msr."), "f_msr did not change"
    assert _changed(before, model, "encoder."), "backbone did not change"
    heads = adapters.head_module_names(model)
    assert heads and any(_changed(before, model, h + ".") for h in heads), "head did not change"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_meta_step_leaves_every_buffer_and_parameter_of_the_method_alone(name):
    """Checked inside a real fit: around every meta step, nothing but f_msr changes."""
    model = METHODS[f"{name}_iclmsr"](**method_kwargs(name))
    real_meta_step, checked = model.iclmsr_meta_step, []

    def checked_meta_step(*args, **kwargs):
        buffers = {n: b.detach().clone() for n, b in model.named_buffers() if not n.startswith("msr.")}
        params = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("msr.")}
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        msr_before = {n: p.detach().clone() for n, p in model.msr.named_parameters()}
        result = real_meta_step(*args, **kwargs)
        for n, b in model.named_buffers():
            if not n.startswith("msr."):
                assert torch.equal(b, buffers[n]), f"buffer {n} changed"
        for n, p in model.named_parameters():
            if not n.startswith("msr."):
                assert torch.equal(p.detach(), params[n]), f"parameter {n} changed"
                assert (p.grad is None) == (n not in grads), n
                if n in grads:
                    assert torch.equal(p.grad, grads[n]), f"gradient of {n} changed"
        assert any(not torch.equal(msr_before[n], p) for n, p in model.msr.named_parameters())
        checked.append(True)
        return result

    model.iclmsr_meta_step = checked_meta_step
    _trainer(max_steps=2, limit_val_batches=0).fit(model, loader())
    assert len(checked) == 2
