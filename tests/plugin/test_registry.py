"""register(): one <name>_iclmsr variant per SSL method of solo-learn main, originals untouched."""

import logging

import pytest
from plugin_kit import METHOD_NAMES, method_cfg
from solo.methods import METHODS
from solo.methods.base import BaseMethod
from solo.methods.simclr import SimCLR

from solo_iclmsr.plugin import adapters, registry

SOLO_SSL_METHODS = sorted(n for n in METHODS if not n.endswith("_iclmsr") and n not in ("base", "linear"))


def test_every_ssl_method_of_main_gets_a_variant_subclassing_the_original():
    assert len(SOLO_SSL_METHODS) == 19  # main at 9187ea3
    for name in SOLO_SSL_METHODS:
        if name == "mae":
            continue
        variant = METHODS[f"{name}_iclmsr"]
        assert issubclass(variant, METHODS[name]) and variant is not METHODS[name]
        assert variant._iclmsr_method_cls is METHODS[name]
    assert set(METHOD_NAMES) == set(SOLO_SSL_METHODS) - {"mae"}
    assert not {"base_iclmsr", "linear_iclmsr", "mae_iclmsr"} & set(METHODS)


@pytest.mark.parametrize("name", sorted(n for n in METHODS if not n.endswith("_iclmsr")))
def test_each_method_has_an_adapter_or_a_reason(name):
    assert name in adapters.ADAPTERS or name in adapters.EXCLUDED, name


def test_mae_is_refused_with_its_reason():
    with pytest.raises(ValueError, match=r"method='mae_iclmsr' has no ICL-MSR variant: MAE "
                                         r"reconstructs masked pixels"):
        registry.method_class("mae_iclmsr")
    with pytest.raises(ValueError, match="no ICL-MSR variant"):
        registry.method_class("mae")


def test_register_is_idempotent_and_leaves_originals_alone():
    before = {name: dict(vars(cls)) for name, cls in METHODS.items()}
    variants = {name: cls for name, cls in METHODS.items() if name.endswith("_iclmsr")}
    registry.register()
    registry.register()
    assert {n: c for n, c in METHODS.items() if n.endswith("_iclmsr")} == variants
    for name, cls in METHODS.items():
        assert dict(vars(cls)) == before[name], name


def test_a_method_added_by_someone_else_gets_a_derived_variant(caplog):
    class MySimCLR(SimCLR):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx) * 1.0

    methods = {"simclr": SimCLR, "mine": MySimCLR, "base": BaseMethod, "odd": dict}
    with caplog.at_level(logging.INFO, logger="solo_iclmsr.plugin.registry"):
        skipped = registry.register(methods)
    assert issubclass(methods["mine_iclmsr"], MySimCLR)
    assert methods["mine_iclmsr"]._iclmsr_adapter.derived
    assert "odd_iclmsr" not in methods and "BaseMethod" in skipped["odd"]
    assert "base" in skipped and "mine" in caplog.text


def test_overwriting_an_adapter_warns():
    original = adapters.ADAPTERS["simclr"]
    try:
        with pytest.warns(UserWarning, match="Overwriting the ICL-MSR adapter of method 'simclr'"):
            adapters.register_adapter(adapters.MethodAdapter("simclr"))
    finally:
        adapters.ADAPTERS["simclr"] = original


def test_the_variant_sits_above_the_method():
    names = [c.__name__ for c in METHODS["byol_iclmsr"].__mro__]
    assert names[:4] == ["BYOLICLMSR", "ICLMSRMixin", "DeviceAugmentationMixin", "BYOL"]


def test_unknown_method_error_names_the_nearest():
    with pytest.raises(ValueError, match=r"method='simclrr' is unknown\. Did you mean 'simclr'.*"
                                         r"Valid: all4one, barlow_twins"):
        registry.method_class("simclrr")


def test_msr_loss_auto_reading():
    assert adapters.ADAPTERS["simclr"].msr_form("auto") == "mixture"
    assert adapters.ADAPTERS["mocov3"].msr_form("auto") == "mixture"
    assert adapters.ADAPTERS["byol"].msr_form("auto") == "mean"
    with pytest.raises(ValueError, match="iclmsr.msr_loss=mixture is not available for method 'byol'"):
        adapters.ADAPTERS["byol"].msr_form("mixture")


@pytest.mark.parametrize("method, enabled", [("simclr", False), ("simclr_iclmsr", True)])
def test_the_flag_and_the_suffix_both_select_iclmsr(method, enabled):
    cfg = method_cfg("simclr", [f"method={method}"],
                     iclmsr={"enabled": None})
    assert cfg.method == "simclr" and cfg.iclmsr.enabled is enabled
    cfg = method_cfg("simclr", iclmsr={"enabled": True})
    assert cfg.method == "simclr" and cfg.iclmsr.enabled is True
    with pytest.raises(ValueError, match="iclmsr.enabled=false contradicts method='simclr_iclmsr'"):
        method_cfg("simclr", ["method=simclr_iclmsr"], iclmsr={"enabled": False})
