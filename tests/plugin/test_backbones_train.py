"""ICL-MSR trains on solo's own backbones and on timm's: ResNets (the CIFAR stems), a ViT with
its class token, ConvNeXt; f_msr can read each one's feature map."""

import pytest
import torch
from plugin_kit import build, quiet, raw_batch

from solo_iclmsr.plugin.backbones import TimmBackbone, feature_map


@pytest.mark.parametrize("backbone, overrides, size", [
    ("resnet18", [], 16),                                # solo's torchvision ResNet
    ("resnet18.a1_in1k", [], 16),                        # timm's ResNet (a tagged name)
    ("test_vit", ["++backbone.kwargs.img_size=16", "++backbone.kwargs.patch_size=4"], 16),
    ("test_convnext", ["++backbone.kwargs.cifar=false"], 64),
])
@pytest.mark.parametrize("msr_input", ["image", "features"])
def test_one_step_with_iclmsr(backbone, overrides, size, msr_input):
    model = quiet(build("simclr", overrides, iclmsr={"msr_input": msr_input}, backbone=backbone,
                        size=size))
    model.train()
    if backbone.startswith("resnet18"):  # the CIFAR stem at 32 px and below
        stem = model.backbone.model.conv1 if isinstance(model.backbone, TimmBackbone) else model.backbone.conv1
        assert stem.stride == (1, 1)
    batch = model.on_after_batch_transfer(raw_batch(), 0)
    z = feature_map(model.backbone, model._iclmsr_raw)
    assert z.dim() == 4 and z.shape[1] == model.features_dim
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    pending = model._iclmsr_pending
    result = model.iclmsr_meta_step(pending["record"], pending["raw"], optimizer, reuse_grads=True)
    assert result["train_meta_grad_norm"] > 0
    assert all(p.grad is None for p in model.msr.parameters())  # stepped and cleared
