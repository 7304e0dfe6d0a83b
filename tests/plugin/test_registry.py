"""register(): one <name>_iclmsr variant per SSL method of solo-learn, originals untouched."""

import logging

import pytest
import torch
from solo.methods import METHODS
from solo.methods.base import BaseMethod
from solo.methods.simclr import SimCLR

from solo_iclmsr import adapters, registry

SSL_METHODS = ["barlow_twins", "byol", "deepclusterv2", "dino", "mocov2plus", "nnbyol", "nnclr",
               "nnsiam", "ressl", "simclr", "simsiam", "swav", "vicreg", "wmse"]


def test_every_ssl_method_gets_a_variant_subclassing_the_original():
    for name in SSL_METHODS:
        variant = METHODS[f"{name}_iclmsr"]
        assert issubclass(variant, METHODS[name]) and variant is not METHODS[name]
        assert variant._iclmsr_method_cls is METHODS[name]
    assert "base_iclmsr" not in METHODS and "linear_iclmsr" not in METHODS


@pytest.mark.parametrize("name", sorted(n for n in METHODS if not n.endswith("_iclmsr")))
def test_each_method_has_an_adapter_or_a_reason(name):
    assert name in adapters.ADAPTERS or name in adapters.EXCLUDED, name


def test_register_is_idempotent_and_leaves_originals_alone():
    before = {name: dict(vars(cls)) for name, cls in METHODS.items()}
    variants = {name: cls for name, cls in METHODS.items() if name.endswith("_iclmsr")}
    registry.register()
    registry.register()
    assert {n: c for n, c in METHODS.items() if n.endswith("_iclmsr")} == variants
    for name, cls in METHODS.items():
        assert dict(vars(cls)) == before[name], name
    assert "training_step" in vars(SimCLR) and SimCLR.training_step is before["simclr"]["training_step"]


def test_a_method_added_by_someone_else_gets_a_derived_variant(caplog):
    class MySimCLR(SimCLR):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx) * 1.0

    methods = {"simclr": SimCLR, "mine": MySimCLR, "base": BaseMethod, "odd": dict}
    with caplog.at_level(logging.INFO, logger="solo_iclmsr.registry"):
        skipped = registry.register(methods)
    assert issubclass(methods["mine_iclmsr"], MySimCLR)
    assert methods["mine_iclmsr"]._iclmsr_adapter.derived
    assert "odd_iclmsr" not in methods and "BaseMethod" in skipped["odd"]
    assert "base" in skipped and "odd" in caplog.text


def test_mro_puts_the_replay_point_between_method_and_base():
    mro = METHODS["byol_iclmsr"].__mro__
    names = [c.__name__ for c in mro]
    assert names.index("BYOL") < names.index("MomentumReplayPoint") < names.index("BaseMomentumMethod")


def test_unknown_method_error_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"method='simclrr' is unknown\. Did you mean 'simclr'\?.*Valid methods: barlow_twins"):
        registry.method_class("simclrr")


def test_msr_loss_auto_reading():
    assert adapters.ADAPTERS["simclr"].msr_form("auto") == "mixture"
    assert adapters.ADAPTERS["byol"].msr_form("auto") == "mean"
    with pytest.raises(ValueError, match="iclmsr.msr_loss=mixture is not available for method 'byol'"):
        adapters.ADAPTERS["byol"].msr_form("mixture")
