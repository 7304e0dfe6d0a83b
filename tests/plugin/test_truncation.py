"""A cheaper meta step inside solo's methods: the virtual step on the last k stages
(``meta_stages``, with the training step's own activations) and meta sub-batches
(``meta_batch``)."""

import math

import pytest
import torch
from plugin_kit import BATCH, build, loader, quiet, raw_batch, trainer

from solo_iclmsr.core import frozen_batch_norm
from solo_iclmsr.plugin.backbones import create_backbone
from solo_iclmsr.plugin.truncation import EncoderTail, stage_ends


def _solo_resnet18():
    from solo.methods.base import BaseMethod

    backbone = BaseMethod._BACKBONES["resnet18"](method="simclr")
    backbone.fc = torch.nn.Identity()
    return backbone


BACKBONES = {
    "timm test_resnet": lambda: create_backbone("test_resnet", cifar=True),
    "solo resnet18": _solo_resnet18,
    "timm test_vit": lambda: create_backbone("test_vit", img_size=16, patch_size=4),
}


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("stages", [1, 2])
def test_the_tail_from_the_recorded_activation_is_the_backbone(name, stages):
    torch.manual_seed(0)
    backbone = BACKBONES[name]()
    tail = EncoderTail(backbone, stages)
    x = [torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)]
    activations = []
    with tail.recording(activations):
        expected = [backbone(v) for v in x]
    assert len(activations) == 2
    with frozen_batch_norm(backbone):
        got = [tail(a) for a in activations]
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)
    moved = set(tail.parameter_names())
    ends = stage_ends(backbone)
    last = ends[-1]
    assert any(n.startswith(f"backbone.{last}.") for n in moved)
    first_stage = ends[0].split(".")
    assert not any(n.startswith(f"backbone.{ends[-(stages + 1)]}.") for n in moved)
    assert not any(n.startswith(f"backbone.{ends[0]}.") for n in moved)
    if "vit" in name:
        assert not any("pos_embed" in n or "cls_token" in n or "patch_embed" in n for n in moved)
        assert any(n.startswith("backbone.model.norm.") for n in moved)
    assert first_stage  # (names read)


def test_meta_stages_out_of_range_fail_naming_the_key():
    with pytest.raises(ValueError, match="iclmsr.meta_stages=5 is invalid"):
        EncoderTail(create_backbone("test_resnet"), 5)


def _meta_grads(model, record, raw, reuse=True):
    """f_msr's meta-gradient of one meta step (its optimizer held still)."""
    model.msr_optimizer.step = lambda *a, **k: None
    model.msr_optimizer.zero_grad = lambda *a, **k: None
    for p in model.msr.parameters():
        p.grad = None
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.iclmsr_meta_step(record, raw, optimizer, reuse_grads=reuse)
    return torch.cat([p.grad.reshape(-1) for p in model.msr.parameters()])


def _stage1(model, seed=0):
    batch = model.on_after_batch_transfer(raw_batch(seed=seed), 0)
    torch.manual_seed(1)
    model.training_step(batch, 0).backward()
    pending = model._iclmsr_pending
    return pending["record"], pending["raw"]


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_the_truncated_meta_step_is_the_full_one_with_the_earlier_stages_frozen(name):
    torch.manual_seed(0)
    cut = quiet(build(name, iclmsr={"meta_stages": 1}))
    record, raw = _stage1(cut)
    truncated = _meta_grads(cut, record, raw)
    assert truncated.norm() > 0
    # the activations recomputed now instead of kept from the training step
    recomputed = []
    with torch.no_grad(), frozen_batch_norm(cut.backbone), cut._iclmsr_tail.recording(recomputed):
        for view in record.views:
            cut.backbone(view)
    record.cut_activations = recomputed
    torch.testing.assert_close(_meta_grads(cut, record, raw), truncated, rtol=1e-4, atol=1e-7)
    # the full meta step of the same model with every parameter before the cut frozen
    torch.manual_seed(0)
    full = quiet(build(name))
    moved = {n[len("backbone."):] for n in cut._iclmsr_tail.parameter_names()}
    for n, p in full.backbone.named_parameters():
        p.requires_grad_(n in moved)
    record, raw = _stage1(full)
    torch.testing.assert_close(_meta_grads(full, record, raw), truncated, rtol=1e-4, atol=1e-7)


def test_a_tail_module_that_writes_into_its_input_is_caught():
    torch.manual_seed(0)
    backbone = create_backbone("test_resnet", cifar=True)
    tail = EncoderTail(backbone, 1)
    activations = []
    with tail.recording(activations):
        backbone(torch.randn(2, 3, 16, 16))
    tail.check_unchanged()
    activations[0].add_(1.0)
    with pytest.raises(RuntimeError, match="modified its input in place"):
        tail.check_unchanged()


@pytest.mark.parametrize("name", ["simclr", "byol", "mocov2plus"])
@pytest.mark.parametrize("options", [{"meta_batch": 0.5}, {"meta_batch": 0.5, "meta_stages": 1}])
def test_meta_sub_batches_train_in_a_real_fit(name, options):
    model = build(name, iclmsr=options)
    before = {n: p.detach().clone() for n, p in model.msr.named_parameters()}
    fit = trainer(max_steps=2)
    fit.fit(model, loader(n=4 * BATCH))
    assert math.isfinite(float(fit.logged_metrics["train_meta_loss_epoch"]))
    assert any(not torch.equal(before[n], p) for n, p in model.msr.named_parameters())


def test_a_sub_record_holds_the_rows_of_its_images():
    model = quiet(build("byol", iclmsr={"meta_stages": 1}))
    record, _ = _stage1(model)
    index = torch.tensor([1, 4, 6])
    sub = record.subset(index)
    assert torch.equal(sub.batch[0], record.batch[0][index])
    assert torch.equal(sub.batch[-1], record.batch[-1][index])
    for full_list, sub_list in ((record.views, sub.views), (record.feats, sub.feats),
                                (record.momentum_feats, sub.momentum_feats),
                                (record.cut_activations, sub.cut_activations)):
        assert len(full_list) == len(sub_list) > 0
        for a, b in zip(full_list, sub_list):
            assert torch.equal(a[index], b)
    assert sub.constants == {} and sub.state is record.state
