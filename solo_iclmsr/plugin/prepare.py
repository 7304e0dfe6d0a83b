"""From a composed config to one solo's pretraining can use: the project's keys validated, the
method and backbone names known (one line with the nearest names otherwise), then solo's own
``parse_cfg`` (defaults for checkpointing, auto-resume, wandb, the dataset, the learning-rate
scaling), with every rejection turned into one line that names the key.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from solo_iclmsr.config import check_backbone, solo_checked, validate_project_keys
from solo_iclmsr.plugin.registry import method_class

__all__ = ["prepare_pretrain"]


def prepare_pretrain(cfg: DictConfig) -> DictConfig:
    """The project's keys, the method and backbone names, then solo's ``parse_cfg``.

    Raises:
        ValueError: one line naming the key at fault.
    """
    from solo.args.pretrain import parse_cfg

    OmegaConf.set_struct(cfg, False)
    for key in ("method", "backbone.name", "data.dataset", "optimizer.batch_size", "augmentations"):
        if OmegaConf.select(cfg, key, default=None) is None:
            raise ValueError(f"{key} is missing from the config: set it (solo's configs in "
                             f"scripts/pretrain/ show every key).")
    method_class(str(cfg.method), enabled=False)  # an unknown method fails here, in one line
    validate_project_keys(cfg)
    method_class(str(cfg.method), enabled=cfg.iclmsr.enabled)  # ICL-MSR asked of MAE fails here
    check_backbone(cfg.backbone.name)
    if cfg.data.dataset == "custom" and not os.path.isdir(str(cfg.data.train_path)):
        raise FileNotFoundError(f"data.train_path={str(cfg.data.train_path)!r} is not a folder: a "
                                f"custom dataset is a folder of class folders (or of images, with "
                                f"data.no_labels=true).")
    return solo_checked(parse_cfg, cfg)
