"""The contract of every <name>_iclmsr variant, one per SSL method of solo's METHODS: a short
Lightning fit on solo's own CIFAR config of the method (tiny heads, a tiny timm backbone, raw
batches augmented on the device)."""

import math

import pytest
import torch
from plugin_kit import BATCH, METHOD_NAMES, build, loader, trainer

from solo_iclmsr.plugin import adapters


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(before, module, prefix):
    return any(not torch.equal(before[n], p.detach())
               for n, p in module.named_parameters() if n.startswith(prefix))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_fit_trains_everything_and_the_meta_step_touches_only_f_msr(name):
    """Two steps of a real fit: the losses and the strata statistics are logged and finite;
    f_msr, the backbone and the head all change; and around every meta step nothing but f_msr
    changes (parameters, gradients, buffers: queues, centres, BatchNorm statistics)."""
    model = build(name)
    before = _snapshot(model)
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
        checked.append(result)
        return result

    model.iclmsr_meta_step = checked_meta_step
    # DeepClusterV2 has no cluster assignments, hence no loss, before its second epoch.
    steps, images = (4, 2 * BATCH) if name == "deepclusterv2" else (2, 4 * BATCH)
    fit = trainer(max_steps=steps)
    fit.fit(model, loader(n=images))
    assert len(checked) == steps and all(math.isfinite(r["train_meta_loss"]) for r in checked)
    metrics = fit.logged_metrics
    for key in ("train_msr_loss", "train_uni_loss", "train_meta_loss_epoch",
                "train_meta_grad_norm_ct_epoch", "strata/cross_image_cos",
                "strata/effective_channels"):
        assert key in metrics, (key, sorted(metrics))
        assert math.isfinite(float(metrics[key])), (key, metrics)
    assert _changed(before, model, "msr."), "f_msr did not change"
    assert _changed(before, model, "backbone."), "backbone did not change"
    heads = adapters.head_module_names(model)
    assert heads and any(_changed(before, model, h + ".") for h in heads), "head did not change"
