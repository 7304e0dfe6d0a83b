"""iclmsr.enabled: false trains exactly the original method (a fair A/B switch), and with
ICL-MSR the training loss is the method's plus lambda times L_msr, L_msr computed here from the
paper's formula, independently of the plugin."""

import math

import pytest
import torch
import torch.nn.functional as F
from plugin_kit import BATCH, build, quiet
from solo.methods import METHODS

from solo_iclmsr.core import info_nce_log_prob


def _views_batch(seed=3, size=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 3, size, size, generator=g)
    views = [x + 0.1 * torch.randn(x.shape, generator=g) for _ in range(2)]
    return [torch.arange(BATCH), views, torch.randint(0, 10, (BATCH,), generator=g)]


def _original(name, variant):
    """solo's own class, from the same config, with the variant's weights."""
    original = METHODS[name](variant.cfg.copy())
    missing, unexpected = original.load_state_dict(variant.state_dict(), strict=False)
    assert not missing and all(k.startswith("msr.") for k in unexpected)
    return quiet(original)


def _step_both(name, variant):
    """One training step of the variant and of solo's own class with the same weights, batch and
    random state: (batch, variant's loss, original's loss, the original)."""
    original = _original(name, variant)
    variant.train(), original.train()
    batch = _views_batch()
    torch.manual_seed(7)
    loss_variant = variant.training_step(batch, 0)
    torch.manual_seed(7)
    loss_original = original.training_step(batch, 0)
    return batch, loss_variant, loss_original, original


@pytest.mark.parametrize("name", ["simclr", "byol", "vicreg", "nnclr", "mocov2plus", "dino"])
def test_disabled_variant_is_the_original_method(name):
    variant = quiet(build(name, iclmsr={"enabled": False}, backbone="resnet18"))
    assert not hasattr(variant, "msr")
    _, loss_variant, loss_original, original = _step_both(name, variant)
    assert torch.allclose(loss_variant, loss_original, atol=1e-6, rtol=0)
    for (n, a), (_, b) in zip(variant.named_buffers(), original.named_buffers()):
        assert torch.allclose(a, b, atol=1e-6), n


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_enabled_variant_adds_lambda_times_the_backdoor_loss(lam):
    """SimCLR: L_to = L_simclr + lambda * L_msr with the mixture reading
    L_msr = -mean_{i,j} log((1/n) sum_t P_t(i,j)), P_t the NT-Xent probability of the positive on
    sqrt(c) a_t-weighted pooled features, negatives from the same stratum."""
    variant = quiet(build("simclr", iclmsr={"lambda_msr": lam, "n_strata": 3}, backbone="resnet18"))
    batch, loss_variant, loss_original, _ = _step_both("simclr", variant)
    with torch.no_grad():
        raw = batch[1][0]  # no raw image in this batch: f_msr reads the first large crop
        a = variant.msr(raw)  # (B, n, c)
        c = a.shape[-1]
        feats = [variant.backbone(v) for v in batch[1]]
        log_p = []
        for t in range(a.shape[1]):
            z = [variant.projector(math.sqrt(c) * a[:, t] * f) for f in feats]
            log_p.append(info_nce_log_prob(z[0], z[1], variant.temperature))
        log_p = torch.stack(log_p)  # (n, 2B)
        l_msr = -(torch.logsumexp(log_p, 0) - math.log(a.shape[1])).mean()
    assert l_msr > 0
    torch.testing.assert_close(loss_variant.detach(), loss_original.detach() + lam * l_msr,
                               rtol=1e-5, atol=1e-5)


def test_the_weighting_is_the_identity_for_uniform_strata():
    """With f_msr's output uniform, every stratum is the plain feature and L_msr = L_ct."""
    variant = quiet(build("simclr", iclmsr={"lambda_msr": 1.0}, backbone="resnet18"))
    c = variant.features_dim
    variant.msr.forward = lambda raw=None, features=None: torch.full(
        (raw.shape[0], variant.iclmsr.n_strata, c), 1 / math.sqrt(c))
    batch, loss_variant, loss_original, _ = _step_both("simclr", variant)
    # solo's loss adds the online classifier's; L_msr equals the NT-Xent part alone.
    with torch.no_grad():
        z = [F.normalize(variant.projector(variant.backbone(v)), dim=-1) for v in batch[1]]
        nce = -info_nce_log_prob(z[0], z[1], variant.temperature).mean()
    torch.testing.assert_close(loss_variant.detach() - loss_original.detach(), nce,
                               rtol=1e-5, atol=1e-5)
