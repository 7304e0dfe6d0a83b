"""Mixed precision as solo's configs run it (ICLMSR.md section 9): every variant through
Lightning's own ``MixedPrecision`` plugin with a real ``torch.amp.GradScaler("cpu")`` (float16),
and at bf16-mixed. Overflows are forced two ways: a large initial scale (the first steps'
scaled gradients overflow float16) and an inf written into one gradient at a chosen step. The
scaler's skipped steps are read off its scale (halved on every skip), independently of the
plugin's own reading of the scaler."""

import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from plugin_kit import BATCH, METHOD_NAMES, build, loader, trainer

from solo_iclmsr.plugin import amp

STEPS = 6  # batches of the one epoch each test trains


class ForceOverflow(pl.Callback):
    """Writes inf into one backbone gradient after the backward of the chosen steps, and counts
    the steps the scaler skipped (its scale fell) and the losses the module logged."""

    def __init__(self, at_steps=()):
        self.at_steps, self.skipped, self.scale, self.losses = set(at_steps), 0, None, []

    def _scaler(self, trainer):
        return amp.grad_scaler(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        scaler = self._scaler(trainer)
        self.scale = None if scaler is None else scaler.get_scale()

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step in self.at_steps:
            p = next(p for p in pl_module.backbone.parameters() if p.grad is not None)
            p.grad[(0,) * p.grad.dim()] = float("inf")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        scaler = self._scaler(trainer)
        if scaler is not None and scaler.get_scale() < self.scale:
            self.skipped += 1
        self.losses.append(float(outputs["loss"]))


def _fit(model, precision, overflow, init_scale=2.0 ** 8, **kwargs):
    if precision == "16-mixed":
        plugin = MixedPrecision("16-mixed", "cpu",
                                scaler=torch.amp.GradScaler("cpu", init_scale=init_scale))
        t = trainer(plugins=[plugin], max_epochs=1, callbacks=[overflow], **kwargs)
    else:
        t = trainer(precision=precision, max_epochs=1, callbacks=[overflow], **kwargs)
    t.fit(model, loader(STEPS * BATCH))
    return t


def _finite_module(model):
    return all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_overflows_skip_the_meta_step_and_nothing_turns_non_finite(name, precision):
    """Per variant: f_msr, the whole model and every loss stay finite; at 16-mixed the meta steps
    skipped equal the scaler's skipped steps (at least the two with an injected inf) and the
    others are taken; at bf16-mixed (no scaler) every meta step is taken."""
    model = build(name)
    overflow = ForceOverflow(at_steps={1, 4} if precision == "16-mixed" else ())
    t = _fit(model, precision, overflow)
    counts = model.iclmsr_meta_counts
    assert _finite_module(model)
    assert all(math.isfinite(v) for v in overflow.losses)
    logged = {k: float(v) for k, v in t.callback_metrics.items()}
    assert all(math.isfinite(v) for v in logged.values()), logged
    if precision == "16-mixed":
        assert overflow.skipped >= 2
        assert counts["skipped"] == overflow.skipped
        assert logged["train_meta_skipped"] == overflow.skipped
    else:
        assert counts["skipped"] == 0
    assert counts["taken"] + counts["refused"] + counts["skipped"] == STEPS
    assert counts["taken"] >= 1


@pytest.mark.parametrize("name", ["simclr", "byol", "vicreg"])
def test_a_large_initial_scale_skips_the_first_steps_and_their_meta_steps(name):
    """GradScaler at 2^24: the first steps' scaled float16 gradients overflow, the scaler skips
    them (halving its scale) and so does the meta step; nothing turns non-finite."""
    model = build(name)
    overflow = ForceOverflow()
    _fit(model, "16-mixed", overflow, init_scale=2.0 ** 24)
    assert overflow.skipped >= 3
    assert model.iclmsr_meta_counts["skipped"] == overflow.skipped
    assert _finite_module(model) and all(math.isfinite(v) for v in overflow.losses)


def test_the_base_method_runs_as_solo_runs_it_under_a_scaler():
    """With ``iclmsr.enabled: false`` the variant is solo's method: under the same scaler and
    the same forced overflows, the same losses and the same weights."""
    from solo.methods import METHODS

    def run(make):
        pl.seed_everything(0)  # the same initial weights
        model = make()
        pl.seed_everything(0)  # the same augmentations
        overflow = ForceOverflow(at_steps={1, 4})
        _fit(model, "16-mixed", overflow)
        return overflow, model

    variant_overflow, variant = run(lambda: build("simclr", iclmsr={"enabled": False},
                                                  backbone="resnet18"))
    assert not hasattr(variant, "msr")
    solo_overflow, original = run(lambda: _solo_simclr())
    assert variant_overflow.skipped == solo_overflow.skipped >= 2
    assert variant_overflow.losses == pytest.approx(solo_overflow.losses, rel=0, abs=1e-6)
    for (n, a), (_, b) in zip(variant.named_parameters(), original.named_parameters()):
        assert torch.equal(a, b), n


def _solo_simclr():
    """solo's own SimCLR class on the same config, fed the views the variant's device
    augmentation makes (the variant with ICL-MSR off, less nothing but its class)."""
    from solo.methods import METHODS

    variant = build("simclr", iclmsr={"enabled": False}, backbone="resnet18")
    original = type("SoloSimCLR", (_DeviceViews, METHODS["simclr"]), {})(variant.cfg.copy())
    original.load_state_dict(variant.state_dict())
    original.device_augmentation = variant.device_augmentation
    return original.to(memory_format=torch.channels_last)  # as solo's main_pretrain does


class _DeviceViews:
    """The views of a raw batch, made as the variant makes them (for solo's own class)."""

    def on_after_batch_transfer(self, batch, dataloader_idx):
        indexes, images, targets = batch
        return [indexes, self.device_augmentation(images), targets]


@pytest.mark.parametrize("schedule", [{"meta_every": 2}, {"schedule": "two_stage", "alpha": 0.01},
                                      {"meta_stages": 1, "meta_batch": 0.5}])
def test_the_schedules_and_cheaper_modes_follow_the_scaler(schedule):
    model = build("simclr", iclmsr=schedule)
    overflow = ForceOverflow(at_steps={0, 1, 2})
    _fit(model, "16-mixed", overflow)
    counts = model.iclmsr_meta_counts
    assert _finite_module(model) and all(math.isfinite(v) for v in overflow.losses)
    if schedule.get("schedule") == "two_stage":  # its meta pass runs after the epoch
        assert counts["skipped"] == 0 and counts["taken"] + counts["refused"] == STEPS
    elif "meta_every" in schedule:  # meta batches 0, 2 and 4; 0 and 2 overflow
        assert counts["skipped"] == 2 and counts["taken"] + counts["refused"] == 1
    else:
        assert counts["skipped"] == overflow.skipped >= 3


def test_gradient_accumulation_follows_the_scaler():
    model = build("simclr")
    overflow = ForceOverflow(at_steps={0})  # the global step of the first two batches
    _fit(model, "16-mixed", overflow, accumulate_grad_batches=2)
    counts = model.iclmsr_meta_counts
    assert _finite_module(model)
    assert counts["skipped"] >= 1 and sum(counts.values()) == STEPS // 2


def test_a_non_finite_meta_gradient_is_refused_and_counted():
    """Without a scaler (float32): a meta-gradient with a NaN leaves f_msr as it was."""
    model = build("simclr")
    real = model.iclmsr_meta_step.__func__

    def poisoned(self, *args, **kwargs):
        for p in self.msr.parameters():
            p.grad = torch.full_like(p, float("nan"))
        return real(self, *args, **kwargs)

    model.iclmsr_meta_step = poisoned.__get__(model)
    before = {n: p.detach().clone() for n, p in model.msr.named_parameters()}
    overflow = ForceOverflow()
    t = _fit(model, "32", overflow)
    assert model.iclmsr_meta_counts == {"taken": 0, "skipped": 0, "refused": STEPS}
    assert all(torch.equal(before[n], p) for n, p in model.msr.named_parameters())
    assert float(t.callback_metrics["train_meta_refused"]) == STEPS


def test_a_run_that_loses_most_meta_steps_says_so():
    model = build("simclr")
    overflow = ForceOverflow(at_steps=set(range(STEPS)))
    with pytest.warns(UserWarning, match=rf"ICL-MSR: {STEPS} of {STEPS} meta steps were lost"):
        _fit(model, "16-mixed", overflow)


def test_still_scaled_gradients_are_unscaled_for_the_virtual_step():
    """An optimizer that unscales inside its own step leaves the hook scaled gradients: the
    reading gives the scale to divide by, and the skip decision from the gradients."""
    scaler = torch.amp.GradScaler("cpu", init_scale=64.0)
    scaler.scale(torch.ones(()))  # as a scaled backward would, before the hook
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([p], lr=0.1)
    fake = type("T", (), {"precision_plugin": MixedPrecision("16-mixed", "cpu", scaler=scaler)})()
    p.grad = torch.full((3,), 64.0)
    assert amp.step_gradients(fake, optimizer, [p]) == amp.StepGradients(False, 64.0)
    p.grad[1] = float("inf")
    assert amp.step_gradients(fake, optimizer, [p]).skipped
    scaler.unscale_(optimizer)  # Lightning's order: the scaler's record decides
    assert amp.step_gradients(fake, optimizer, [p]) == amp.StepGradients(True, 1.0)


def test_16_mixed_on_a_cpu_gets_float16_with_a_real_scaler():
    kwargs = amp.trainer_precision("16-mixed", "cpu")
    (plugin,) = kwargs["plugins"]
    assert plugin.precision == "16-mixed" and plugin.scaler.get_scale() == 2.0 ** 16
    assert amp.trainer_precision("bf16-mixed", "cpu") == {"precision": "bf16-mixed"}
    assert amp.trainer_precision(32, "cpu") == {"precision": 32}
