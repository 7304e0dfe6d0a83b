"""solo's LARSWrapper stepped the way Lightning 2 steps an optimizer.

Lightning 2 calls ``optimizer.step(closure)``, and the closure runs zero_grad, forward and
backward. The first step must give the LARS update computed here by hand: for each parameter
that LARS adapts,

    trust = eta * ||w|| / (||g|| + wd * ||w|| + eps)
    scale = min(trust / lr, 1) if the wrapper clips, else trust
    g'    = (g + wd * w) * scale

while parameters LARS excludes (1-D: bias and norm layers, with ``exclude_bias_n_norm``) keep
their raw gradient and get no weight decay. SGD with momentum then starts its buffer at g' and
moves w to w - lr * g'. solo-learn 1.0.2 rescales the gradients before running the closure, so
under Lightning 2 it applies plain SGD instead; the pristine source shows that.
"""

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from solo.utils.lars import LARSWrapper

REPO = Path(__file__).resolve().parents[1]

LR, MOMENTUM, WEIGHT_DECAY, ETA, EPS = 0.1, 0.9, 1e-2, 0.02, 1e-8

X = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 3.0], [2.0, 0.5, -1.0], [-1.0, 1.5, 0.0]])
Y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
W0 = torch.tensor([[0.3, -0.2, 0.1], [0.05, 0.4, -0.3]])
B0 = torch.tensor([0.1, -0.2])


def pristine_lars_wrapper() -> type:
    """LARSWrapper of the unpatched solo-learn 1.0.2, from the project's patch tool."""

    spec = importlib.util.spec_from_file_location(
        "solo_patch_for_test_lars", REPO / "patches" / "solo_patch.py"
    )
    solo_patch = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = solo_patch  # dataclasses look their module up while it is built
    spec.loader.exec_module(solo_patch)
    module = types.ModuleType("pristine_solo_lars")
    source = solo_patch.pristine_source("solo/utils/lars.py")
    exec(compile(source, "solo/utils/lars.py (1.0.2)", "exec"), module.__dict__)
    return module.LARSWrapper


def make_model() -> nn.Linear:
    model = nn.Linear(3, 2).double()
    with torch.no_grad():
        model.weight.copy_(W0)
        model.bias.copy_(B0)
    return model


def loss_fn(model: nn.Linear) -> torch.Tensor:
    """0.5 * sum of squared residuals, so that the gradients are easy to write down."""
    return 0.5 * ((model(X.double()) - Y.double()) ** 2).sum()


def lightning_style_step(optimizer, model: nn.Linear):
    """What Lightning 2's automatic optimisation does: step with a zero_grad/forward/backward
    closure; no gradient exists before the first step."""

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(model)
        loss.backward()
        return loss

    return optimizer.step(closure)


def expected_first_step(clip: bool, exclude_bias_n_norm: bool):
    """Weights, bias and momentum buffers after one LARS step, from the formulas above."""

    x, y, w, b = X.double(), Y.double(), W0.double(), B0.double()
    residual = x @ w.T + b - y
    grads = {"weight": residual.T @ x, "bias": residual.sum(0)}
    params = {"weight": w, "bias": b}

    new, buffers = {}, {}
    for name, p in params.items():
        g = grads[name]
        if exclude_bias_n_norm and p.ndim == 1:
            g_eff = g
        else:
            trust = ETA * p.norm() / (g.norm() + WEIGHT_DECAY * p.norm() + EPS)
            scale = min(trust / LR, 1.0) if clip else trust
            g_eff = (g + WEIGHT_DECAY * p) * scale
        buffers[name] = g_eff  # first momentum step: the buffer is the gradient itself
        new[name] = p - LR * g_eff
    loss = 0.5 * (residual**2).sum()
    return new, buffers, loss, grads


def run_first_step(wrapper_cls, clip: bool, exclude_bias_n_norm: bool):
    model = make_model()
    sgd = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    optimizer = wrapper_cls(
        sgd, eta=ETA, clip=clip, eps=EPS, exclude_bias_n_norm=exclude_bias_n_norm
    )
    loss = lightning_style_step(optimizer, model)
    return model, sgd, loss


CASES = [(False, False), (False, True), (True, False), (True, True)]


@pytest.mark.parametrize("clip,exclude_bias_n_norm", CASES)
def test_first_step_is_the_lars_update(clip, exclude_bias_n_norm):
    model, sgd, loss = run_first_step(LARSWrapper, clip, exclude_bias_n_norm)
    new, buffers, expected_loss, _ = expected_first_step(clip, exclude_bias_n_norm)

    torch.testing.assert_close(model.weight.detach(), new["weight"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.bias.detach(), new["bias"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sgd.state[model.weight]["momentum_buffer"], buffers["weight"])
    torch.testing.assert_close(sgd.state[model.bias]["momentum_buffer"], buffers["bias"])
    # the closure's loss comes back, and the optimizer gets its weight decay back
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-12)
    assert sgd.param_groups[0]["weight_decay"] == WEIGHT_DECAY


def test_clipping_changes_the_step():
    """Clipped and unclipped trust ratios give different weights, so the test above checks
    both branches of the formula."""

    weights = [run_first_step(LARSWrapper, *case)[0].weight.detach() for case in CASES]
    for i in range(len(weights)):
        for j in range(i + 1, len(weights)):
            if CASES[i][0] != CASES[j][0]:  # clip on vs off changes the weight update
                assert (weights[i] - weights[j]).abs().max().item() > 1e-4


def test_first_step_inside_a_lightning_trainer():
    """The same update when a real Lightning 2 Trainer does the stepping."""

    import pytorch_lightning as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = make_model()

        def training_step(self, batch, batch_idx):
            return loss_fn(self.model)

        def configure_optimizers(self):
            sgd = torch.optim.SGD(
                self.model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
            )
            return LARSWrapper(sgd, eta=ETA, clip=True, eps=EPS, exclude_bias_n_norm=True)

    module = Module()
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, torch.utils.data.DataLoader([0]))
    new, _, _, _ = expected_first_step(clip=True, exclude_bias_n_norm=True)

    assert trainer.global_step == 1
    torch.testing.assert_close(module.model.weight.detach(), new["weight"])
    torch.testing.assert_close(module.model.bias.detach(), new["bias"])


@pytest.mark.parametrize("clip,exclude_bias_n_norm", CASES)
def test_unpatched_wrapper_skips_lars_under_lightning2(clip, exclude_bias_n_norm):
    """solo-learn 1.0.2 finds no gradient before the closure runs, so LARS and weight decay
    are skipped and the step is plain SGD: w - lr * g."""

    model, _, _ = run_first_step(pristine_lars_wrapper(), clip, exclude_bias_n_norm)
    new, _, _, grads = expected_first_step(clip, exclude_bias_n_norm)

    weight = model.weight.detach()
    assert (weight - new["weight"]).abs().max().item() > 1e-3
    torch.testing.assert_close(weight, W0.double() - LR * grads["weight"])
    torch.testing.assert_close(model.bias.detach(), B0.double() - LR * grads["bias"])
