"""Every shipped pre-training config builds its model (variant, timm backbone, device
augmentation) without training."""

from pathlib import Path

import pytest
import torch

from solo_iclmsr import config as cfgmod
from solo_iclmsr.train import build_model

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "pretrain").glob("*/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_builds_its_model(path):
    overrides = [] if path.parent.name == "builtin" else ["data.train_path=unused"]
    if path.parent.name == "custom":
        overrides.append("data.num_classes=10")
    cfg = cfgmod.load_pretrain_config(path, overrides)
    with torch.device("meta"):
        model = build_model(cfg, world_size=1)
    assert model.encoder.num_features > 0
    assert model.iclmsr.enabled and hasattr(model, "msr")
    assert model.device_augmentation.num_views == cfg.num_large_crops + cfg.num_small_crops
    assert type(model).__name__.endswith("ICLMSR")
