"""iclmsr.enabled: false trains exactly the original method (a fair A/B switch)."""

import pytest
import torch
from plugin_kit import make_batch, method_kwargs
from solo.methods import METHODS

from solo_iclmsr.mixin import TimmBackboneMixin


@pytest.mark.parametrize("name", ["simclr", "byol", "vicreg", "nnclr", "mocov2plus", "dino"])
def test_disabled_variant_loss_equals_the_original(name):
    kwargs = method_kwargs(name, iclmsr={"enabled": False})
    variant = METHODS[f"{name}_iclmsr"](**kwargs)
    assert not hasattr(variant, "msr")
    # The untouched method on the same timm backbone, with the same weights.
    original_cls = type("Original", (TimmBackboneMixin, METHODS[name]), {})
    kwargs.pop("iclmsr")
    original = original_cls(**kwargs)
    original.load_state_dict(variant.state_dict())
    variant.train(), original.train()
    batch = make_batch(seed=3)
    torch.manual_seed(7)
    loss_variant = variant.training_step(batch, 0)
    torch.manual_seed(7)
    loss_original = original.training_step(batch, 0)
    assert torch.allclose(loss_variant, loss_original, atol=1e-6, rtol=0)
    for (n, a), (_, b) in zip(variant.named_buffers(), original.named_buffers()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_enabled_variant_adds_lambda_times_msr_loss():
    kwargs = method_kwargs("simclr", iclmsr={"lambda_msr": 0.0})
    model = METHODS["simclr_iclmsr"](**kwargs)
    model.train()
    batch = make_batch(seed=3)
    plain = METHODS["simclr_iclmsr"](**method_kwargs("simclr", iclmsr={"enabled": False}))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("msr.")})
    plain.train()
    assert torch.allclose(model.training_step(batch, 0), plain.training_step(batch, 0), atol=1e-6)
