"""Every key the project adds to solo's config schema (README, "Configuration") does what it
says, or is rejected in one line naming it: each one is set here and its effect observed."""

from dataclasses import fields
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from solo_iclmsr.runs.pretrain import _callbacks, build_model
from solo_iclmsr.config import BuiltinDataConfig, DiagnosticsConfig, compose
from solo_iclmsr.plugin import prepare_pretrain
from solo_iclmsr.core import ICLMSROptions
from solo_iclmsr.data.loaders import pretrain_dataset

REPO = Path(__file__).resolve().parents[1]
BUILTIN = str(REPO / "configs" / "pretrain" / "builtin")
TINY = ["backbone.name=test_resnet", "optimizer.batch_size=8", "++data.builtin.n_train=32",
        "++data.builtin.n_test=16", "++data.builtin.image_size=16", "augmentations.0.crop_size=16",
        "data.num_workers=0", "++scheduler.warmup_epochs=0", "method_kwargs.proj_hidden_dim=16",
        "method_kwargs.proj_output_dim=8", "iclmsr.n_strata=2", "iclmsr.msr_width=4",
        "iclmsr.msr_depth=1", "accelerator=cpu", "iclmsr.enabled=true", "++diagnostics.images=8"]

#: The documented keys.
DOCUMENTED = ([f"iclmsr.{f.name}" for f in fields(ICLMSROptions)]
              + [f"data.builtin.{f.name}" for f in fields(BuiltinDataConfig)]
              + [f"diagnostics.{f.name}" for f in fields(DiagnosticsConfig)]
              + ["data.image_size", "data.augment_on_device"])


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SOLO_ICLMSR_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def cfg_of(*overrides):
    return prepare_pretrain(compose(BUILTIN, "simclr", [*TINY, *overrides]))


def model_of(*overrides):
    torch.manual_seed(0)
    model = build_model(cfg_of(*overrides))
    model.log = model.log_dict = lambda *a, **k: None
    return model.train()


def batch_of(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=g)
    return model.on_after_batch_transfer([torch.arange(8), images, torch.randint(0, 10, (8,))], 0)


def step(model, seed=0):
    """Stage 1 and the meta step on one batch: (L_to, L_msr, meta result, f_msr grads before the
    meta optimizer stepped)."""
    torch.manual_seed(seed)
    logged = {}
    model.log_dict = lambda metrics, **k: logged.update({k2: float(v) for k2, v in metrics.items()})
    loss = model.training_step(batch_of(model, seed), 0)
    loss.backward()
    # momentum and weight decay: the optimizer's update is not the paper's plain step
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1,
                                momentum=0.9, weight_decay=0.05)
    grads = {}
    real_step = model.msr_optimizer.step
    model.msr_optimizer.step = lambda: grads.update(
        {n: p.grad.clone() for n, p in model.msr.named_parameters() if p.grad is not None}) or real_step()
    pending = model._iclmsr_pending
    result = model.iclmsr_meta_step(pending["record"], pending["raw"], optimizer, reuse_grads=True,
                                    plain=pending["plain"], diagnose=pending["diagnose"])
    return float(loss), logged.get("train_msr_loss"), result, grads


def flat(grads):
    return torch.cat([g.reshape(-1) for g in grads.values()])


def differs(a, b):
    return not torch.allclose(flat(a), flat(b), rtol=1e-4, atol=1e-7)


# -------------------------------------------------------------------------------------------
# Effects
# -------------------------------------------------------------------------------------------
def effect_enabled():
    assert not hasattr(model_of("iclmsr.enabled=false"), "msr")
    assert hasattr(model_of("iclmsr.enabled=true"), "msr")


def effect_strata():
    from solo_iclmsr.core import FixedStrata

    fixed = model_of("iclmsr.strata=random_fixed")
    assert isinstance(fixed.msr, FixedStrata) and fixed.msr_optimizer is None
    frozen = model_of("iclmsr.strata=frozen")
    frozen.training_step(batch_of(frozen), 0)
    assert frozen._iclmsr_pending is None and frozen.msr_optimizer is None  # no meta step


def effect_n_strata():
    model = model_of("iclmsr.n_strata=3")
    assert model.msr(torch.rand(2, 3, 16, 16)).shape[1] == 3


def effect_lambda_msr():
    a = step(model_of("iclmsr.lambda_msr=0.0"))
    b = step(model_of("iclmsr.lambda_msr=2.0"))
    assert a[1] == pytest.approx(b[1], rel=1e-5)  # the same L_msr ...
    assert b[0] - a[0] == pytest.approx(2.0 * b[1], rel=1e-4)  # ... enters L_to times lambda


def effect_gamma_uni():
    assert step(model_of("iclmsr.gamma_uni=0.0"))[2]["train_meta_grad_norm_uni"] == 0.0
    assert step(model_of("iclmsr.gamma_uni=1.0"))[2]["train_meta_grad_norm_uni"] > 0.0


def _uni(*overrides):
    model = model_of(*overrides)
    logged = {}
    model.log_dict = lambda metrics, **k: logged.update(metrics)
    model.training_step(batch_of(model), 0)
    return float(logged["train_uni_loss"])


def effect_uni_t():
    assert _uni("iclmsr.uni_t=1.0") != pytest.approx(_uni("iclmsr.uni_t=4.0"))


def effect_uni_over():
    assert _uni("iclmsr.uni_over=image") != pytest.approx(_uni("iclmsr.uni_over=batch"))


def effect_alpha():
    assert differs(step(model_of("iclmsr.alpha=0.01"))[3], step(model_of("iclmsr.alpha=1.0"))[3])


def effect_virtual_step():
    assert differs(step(model_of("iclmsr.virtual_step=sgd"))[3],
                   step(model_of("iclmsr.virtual_step=optimizer"))[3])


def effect_tau_msr():
    assert step(model_of("iclmsr.tau_msr=0.1"))[1] != pytest.approx(step(model_of("iclmsr.tau_msr=1.0"))[1])


def effect_msr_loss():
    assert model_of("iclmsr.msr_loss=auto").msr_form == "mixture"
    assert model_of("iclmsr.msr_loss=mean").msr_form == "mean"


def effect_meta_grad():
    exact = step(model_of("iclmsr.meta_grad=second_order"))[3]
    fd = step(model_of("iclmsr.meta_grad=finite_difference"))[3]
    assert differs(exact, fd)  # another computation ...
    assert torch.nn.functional.cosine_similarity(flat(exact), flat(fd), dim=0) > 0.99  # ... close
    assert differs(exact, step(model_of("iclmsr.meta_grad=linearized"))[3])


def effect_exact_impl(monkeypatch):
    import sys

    core_meta = sys.modules["solo_iclmsr.core.meta_step"]

    calls = []
    real = core_meta._double_backward
    monkeypatch.setattr(core_meta, "_double_backward", lambda *a, **k: calls.append(1) or real(*a, **k))
    jvp = step(model_of("iclmsr.exact_impl=jvp"))[3]
    assert calls == []
    double = step(model_of("iclmsr.exact_impl=double_backward"))[3]
    assert calls == [1]
    torch.testing.assert_close(flat(jvp), flat(double), rtol=1e-3, atol=1e-6)


def effect_fd_epsilon():
    a = step(model_of("iclmsr.meta_grad=finite_difference", "iclmsr.fd_epsilon=1e-4"))[3]
    b = step(model_of("iclmsr.meta_grad=finite_difference", "iclmsr.fd_epsilon=0.1"))[3]
    assert differs(a, b)


def effect_meta_every():
    model = model_of("iclmsr.meta_every=3")
    assert [model.iclmsr.should_meta_step(i) for i in range(4)] == [True, False, False, True]
    model.training_step(batch_of(model), 1)
    assert model._iclmsr_pending is None


def effect_meta_params():
    assert differs(step(model_of("iclmsr.meta_params=all"))[3],
                   step(model_of("iclmsr.meta_params=head"))[3])


def effect_meta_stages():
    model = model_of("iclmsr.meta_stages=1")
    assert model._iclmsr_tail is not None and model._iclmsr_tail.stages == 1
    assert differs(step(model)[3], step(model_of("iclmsr.meta_stages=null"))[3])


def effect_meta_batch():
    assert differs(step(model_of("iclmsr.meta_batch=0.5"))[3],
                   step(model_of("iclmsr.meta_batch=null"))[3])


def effect_meta_precision(monkeypatch):
    from solo_iclmsr.plugin import amp

    monkeypatch.setattr(amp, "autocast_dtype", lambda trainer: torch.bfloat16)  # a bf16-mixed run
    full = step(model_of("iclmsr.meta_precision=float32"))[3]
    half = step(model_of("iclmsr.meta_precision=autocast"))[3]
    assert differs(full, half) and all(torch.isfinite(g).all() for g in half.values())


def effect_schedule():
    model = model_of("iclmsr.schedule=two_stage")
    model.training_step(batch_of(model), 0)
    assert model._iclmsr_pending is None  # no meta step during the epoch


def effect_msr_input():
    model = model_of("iclmsr.msr_input=features")
    assert model.msr.reads_features and not model.msr.reads_image
    assert model_of("iclmsr.msr_input=both").msr.reads_image


def effect_weight_head():
    assert model_of("iclmsr.weight_head=softmax").msr.weight_head == "softmax"


def effect_weight_temperature():
    a = model_of("iclmsr.weight_head=softmax", "iclmsr.weight_temperature=0.1").eval()
    b = model_of("iclmsr.weight_head=softmax", "iclmsr.weight_temperature=10.0").eval()
    x = torch.rand(2, 3, 16, 16)
    assert not torch.allclose(a.msr(x), b.msr(x))


def effect_weight_bias():
    assert model_of("iclmsr.weight_bias=false").msr.fc.bias is None
    assert model_of("iclmsr.weight_bias=true").msr.fc.bias is not None


def effect_msr_depth():
    convs = [m for m in model_of("iclmsr.msr_depth=3").msr.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3


def effect_msr_width():
    assert model_of("iclmsr.msr_width=6").msr.fc.in_features == 6


def effect_msr_lr():
    assert model_of("iclmsr.msr_lr=0.05").msr_optimizer.param_groups[0]["lr"] == 0.05


def effect_msr_weight_decay():
    assert model_of("iclmsr.msr_weight_decay=0.01").msr_optimizer.param_groups[0]["weight_decay"] == 0.01


def _train_set(*overrides):
    return pretrain_dataset(cfg_of(*overrides))


def effect_builtin(key):
    if key == "root":
        root = Path("builtin-root")
        _train_set(f"++data.builtin.root={root}")
        assert any(root.rglob("train.npz"))
        return
    values = {"rho": ("0.0", "1.0"), "n_train": ("24", "40"), "n_test": ("8", "16"),
              "num_classes": ("4", "6"), "image_size": ("16", "24"), "seed": ("1", "2"),
              "variant": ("full", "fg")}[key]
    a, b = (_train_set(f"++data.builtin.{key}={v}") for v in values)
    if key == "n_train":
        assert (len(a), len(b)) == (24, 40)
    elif key == "n_test":
        cfg = cfg_of("++data.builtin.n_test=8")
        from solo_iclmsr.data.loaders import validation_loader
        assert len(validation_loader(cfg).dataset) == 8
    elif key == "num_classes":
        assert (a.labels.max(), b.labels.max()) == (3, 5)
    elif key == "image_size":
        assert (a[0][1].shape[-1], b[0][1].shape[-1]) == (16, 24)
    elif key == "rho":
        assert (a.bg_type == a.targets).mean() < (b.bg_type == b.targets).mean() == 1.0
    else:
        assert not torch.equal(a[0][1], b[0][1])


def effect_image_size():
    items = _train_set("data.dataset=custom", f"data.train_path={_folder()}", "++data.image_size=20")
    assert items[0][1].shape == (3, 20, 20) and items[0][1].dtype == torch.uint8


def _folder():
    from fake_data import write_image_folder

    return write_image_folder(Path("images"), classes=2, per_class=8, size=24)


def effect_augment_on_device():
    folder = _folder()
    cfg = cfg_of("data.dataset=custom", f"data.train_path={folder}", "++data.augment_on_device=false")
    assert isinstance(pretrain_dataset(cfg)[0][1], list)  # solo's per-image views
    assert getattr(build_model(cfg), "device_augmentation", None) is None


def effect_diagnostics(key):
    if key == "every_n_steps":
        for value, expected in (("1", True), ("0", False)):
            model = model_of(f"++diagnostics.every_n_steps={value}")
            logged = {}
            model.log = lambda name, value, **k: logged.__setitem__(name, value)
            model.training_step(batch_of(model), 0)
            assert ("diag/grad_cos_msr_ct" in logged) == expected
        return
    if key in ("enabled", "every_n_epochs", "images"):
        value = {"enabled": "false", "every_n_epochs": "3", "images": "5"}[key]
        cfg = cfg_of(f"++diagnostics.{key}={value}")
        probes = [c for c in _callbacks(cfg, build_model(cfg), None) if hasattr(c, "probe")]
        if key == "enabled":
            assert probes == []
        elif key == "every_n_epochs":
            assert probes[0].every_n_epochs == 3
        else:
            assert len(probes[0].probe) == 5
        return
    # the masked-set keys: a folder of images with mask PNGs beside them, or in another tree
    import numpy as np
    from PIL import Image

    root, masks = Path("masked"), Path("masks")
    for c in range(2):
        for d in (root / f"c{c}", masks / f"c{c}"):
            d.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / f"c{c}" / f"{i}.png")
            mask = np.zeros((16, 16), np.uint8)
            mask[4:12, 4:12] = 1
            Image.fromarray(mask).save((masks if key == "masks_root" else root) / f"c{c}" /
                                       (f"{i}.png" if key == "masks_root" else f"{i}_m.png"))
    where = (f"++diagnostics.masks_root={masks}" if key == "masks_root"
             else "++diagnostics.mask_suffix=_m")
    cfg = cfg_of("++diagnostics.masks=folder", f"++diagnostics.image_root={root}", where)
    (probe,) = [c for c in _callbacks(cfg, build_model(cfg), None) if hasattr(c, "probe")]
    assert probe.probe.masks is not None and int(probe.probe.masks[0].sum()) == 64
    if key in ("masks", "image_root", "annotations"):
        with pytest.raises(ValueError, match=r"diagnostics\.(annotations|image_root) is missing"):
            cfg_of("++diagnostics.masks=coco", f"++diagnostics.image_root={root}"
                   if key != "image_root" else "++diagnostics.annotations=x.json")


EFFECTS = {
    **{f"iclmsr.{name[7:]}": fn for name, fn in dict(globals()).items()
       if name.startswith("effect_") and f"iclmsr.{name[7:]}" in DOCUMENTED},
    **{f"data.builtin.{f.name}": (lambda k: lambda: effect_builtin(k))(f.name)
       for f in fields(BuiltinDataConfig)},
    **{f"diagnostics.{f.name}": (lambda k: lambda: effect_diagnostics(k))(f.name)
       for f in fields(DiagnosticsConfig)},
    "data.image_size": effect_image_size,
    "data.augment_on_device": effect_augment_on_device,
}


def test_every_documented_key_has_a_test():
    assert sorted(EFFECTS) == sorted(DOCUMENTED)


@pytest.mark.parametrize("key", sorted(DOCUMENTED))
def test_the_key_has_its_effect(key, monkeypatch):
    fn = EFFECTS[key]
    if fn.__code__.co_argcount == 1:
        fn(monkeypatch)
    else:
        fn()


# -------------------------------------------------------------------------------------------
# Rejections
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("++iclmsr.lamda_msr=1", r"iclmsr\.lamda_msr is an unknown key.*Did you mean 'lambda_msr'"),
    ("++iclmsr.n_strata=two", r"iclmsr\.n_strata='two' is invalid"),
    ("++iclmsr.n_strata=0", r"iclmsr\.n_strata=0 is invalid: expected a value >= 1"),
    ("++iclmsr.virtual_step=adam", r"iclmsr\.virtual_step='adam' is invalid: expected one of sgd, optimizer"),
    ("++iclmsr.uni_over=pairs", r"iclmsr\.uni_over='pairs' is invalid"),
    ("++iclmsr.weight_temperature=0", r"iclmsr\.weight_temperature=0.0 is invalid"),
    ("++data.builtin.n_trian=5", r"data\.builtin\.n_trian is an unknown key.*'n_train'"),
    ("++data.builtin.variant=bg", r"data\.builtin\.variant='bg' is invalid"),
    ("++diagnostics.image=5", r"diagnostics\.image is an unknown key.*'images'"),
    ("++diagnostics.every_n_epochs=0", r"diagnostics\.every_n_epochs=0 is invalid"),
    ("++diagnostics.every_n_steps=-1", r"diagnostics\.every_n_steps=-1 is invalid"),
    ("++iclmsr.strata=fixed", r"iclmsr\.strata='fixed' is invalid: expected one of learned"),
    ("++iclmsr.meta_batch=1.5", r"iclmsr\.meta_batch=1.5 is invalid"),
    ("++data.image_size=big", r"data\.image_size='big' is invalid"),
    ("++data.augment_on_device=maybe", r"data\.augment_on_device='maybe' is invalid"),
    ("++data.builtin=3", r"data\.builtin=3 is invalid: expected a mapping"),
])
def test_a_bad_value_is_rejected_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        cfg_of(override)


def test_the_defaults_file_is_the_code():
    """configs/pretrain/builtin/iclmsr/default.yaml lists ICL-MSR's options with the code's
    defaults."""
    on_disk = OmegaConf.to_container(OmegaConf.load(Path(BUILTIN) / "iclmsr" / "default.yaml"))
    assert on_disk == {f.name: f.default for f in fields(ICLMSROptions)}
