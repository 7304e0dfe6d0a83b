"""Every config under configs/ loads, validates and translates to solo-learn 1.0.2 kwargs."""

from pathlib import Path

import pytest
import torch

from solo_iclmsr.backbones import create_backbone
from solo_iclmsr.config import (
    DATASETS,
    KnnConfig,
    LinearConfig,
    PretrainConfig,
    load_config,
    method_arguments,
    to_linear_kwargs,
    to_method_kwargs,
    trainer_kwargs,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# Group files (augmentations/...) are parts of configs, not configs.
FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if "augmentations" not in p.parts)
REQUIRED_METHODS = ("simclr", "byol", "barlow_twins", "mocov2plus", "vicreg", "swav", "dino",
                    "simsiam", "nnclr")


def _overrides(path: Path):
    # custom datasets count class folders of a path that does not exist here
    return ["data.num_classes=7"] if "custom" in path.parts else []


def test_every_dataset_has_the_required_methods():
    for dataset in DATASETS:
        folder = CONFIGS / "pretrain" / dataset
        assert {p.stem for p in folder.glob("*.yaml")} >= set(REQUIRED_METHODS), dataset
        assert (CONFIGS / "linear" / dataset / "linear.yaml").is_file()
    assert (CONFIGS / "knn" / "knn.yaml").is_file()


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_validates_and_translates(path):
    cfg = load_config(path, _overrides(path))
    trainer = trainer_kwargs(cfg)
    assert trainer["devices"] and trainer["precision"] is not None
    if isinstance(cfg, PretrainConfig):
        assert path.parent.name == cfg.data.dataset and path.stem == cfg.method
        assert cfg.iclmsr.enabled is True
        kwargs = to_method_kwargs(cfg)
        assert set(method_arguments(cfg.method)) <= set(kwargs)
        assert kwargs["num_large_crops"] >= 2 or kwargs["num_large_crops"] + \
            kwargs["num_small_crops"] >= 2
        assert kwargs["lr"] > 0 and kwargs["max_epochs"] == trainer["max_epochs"]
        assert kwargs["timm_backbone"]["name"] == cfg.backbone.name
        assert all(a.crop_size <= 224 for a in cfg.augmentations)
    elif isinstance(cfg, LinearConfig):
        kwargs = to_linear_kwargs(cfg)
        assert kwargs["num_classes"] >= 1 and kwargs["lr"] > 0
    else:
        assert isinstance(cfg, KnnConfig) and cfg.knn.k


def test_builtin_backbone_builds_and_runs():
    """The main job's default backbone, at its real size (32 px), pretrained=False."""
    cfg = load_config(CONFIGS / "pretrain" / "builtin" / "simclr.yaml")
    kwargs = to_method_kwargs(cfg)
    args = dict(kwargs["backbone_args"])
    backbone = create_backbone(kwargs["encoder"], cifar=args.pop("cifar"), **args).eval()
    assert kwargs["timm_backbone"] == {"name": kwargs["encoder"], **kwargs["backbone_args"]}
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, backbone.num_features)
