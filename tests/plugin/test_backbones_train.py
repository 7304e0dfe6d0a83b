"""ICL-MSR trains on several timm backbones: ResNet (with and without CIFAR stem), ViT, ConvNeXt."""

import pytest
import torch
from plugin_kit import make_batch, method_kwargs
from solo.methods import METHODS


@pytest.mark.parametrize("encoder,cifar,backbone_kwargs", [
    ("resnet18", False, {}),
    ("resnet18", True, {}),
    ("test_vit", False, {"img_size": 32, "patch_size": 8}),
    ("test_convnext", False, {}),
])
def test_one_step_with_iclmsr(encoder, cifar, backbone_kwargs):
    model = METHODS["simclr_iclmsr"](**method_kwargs("simclr", encoder=encoder, cifar=cifar,
                                                     backbone_kwargs=backbone_kwargs))
    model.train()
    if cifar:
        assert model.encoder.model.conv1.stride == (1, 1)
    batch = make_batch(batch=4)
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    pending = model._iclmsr_pending
    result = model.iclmsr_meta_step(pending["outputs"], pending["raw"], lr=0.05, reuse_grads=True)
    assert result["train_meta_grad_norm"] > 0
    assert all(p.grad is None for p in model.msr.parameters())  # stepped and cleared
