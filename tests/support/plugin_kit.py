"""Shared helpers of the plugin tests: solo-learn's own CIFAR configs of every method, made tiny
for the CPU, the variants built from them, and raw uint8 batches for the device augmentation."""

from typing import Any, Dict, List, Optional, Sequence

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from solo_source import solo_source
from torch.utils.data import DataLoader, Dataset

from solo_iclmsr.runs.pretrain import build_model
from solo_iclmsr.config import compose
from solo_iclmsr.plugin import prepare_pretrain
from solo_iclmsr.plugin import adapters

BATCH = 8
SIZE = 16  # px: the CIFAR stem gives a 2x2 last map
#: solo's file name of a method's CIFAR config, where it differs from the method's name.
SCRIPT_NAMES = {"barlow_twins": "barlow"}
#: Every SSL method of solo's METHODS that has a variant (MAE is excluded, with its reason).
METHOD_NAMES = sorted(n for n in adapters.ADAPTERS if not adapters.ADAPTERS[n].derived)
TINY_ICLMSR = {"n_strata": 2, "msr_depth": 1, "msr_width": 4}


def tiny(cfg: DictConfig) -> DictConfig:
    """Heads, prototypes, queues and whitening small enough for a CPU test."""
    kwargs = cfg.method_kwargs
    for key in list(kwargs.keys()):
        if key.endswith("_dim"):
            kwargs[key] = 4 if cfg.method == "wmse" and key == "proj_output_dim" else 32
        elif key == "num_prototypes":
            kwargs[key] = [8, 8] if OmegaConf.is_list(kwargs[key]) else 16
        elif key == "queue_size":
            kwargs[key] = 64
        elif key == "whitening_size":
            kwargs[key] = BATCH
    return cfg


def _hydra_value(value: Any) -> str:
    """A value as Hydra's override grammar spells it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def method_cfg(name: str, overrides: Sequence[str] = (), iclmsr: Optional[Dict[str, Any]] = None,
               backbone: str = "test_resnet", prepare: bool = True, size: int = SIZE) -> DictConfig:
    """solo's ``scripts/pretrain/cifar/<name>.yaml`` with small CPU overrides (and ICL-MSR on)."""
    folder = solo_source() / "scripts" / "pretrain" / "cifar"
    options = {"enabled": True, **TINY_ICLMSR, **(iclmsr or {})}
    cfg = compose(str(folder), SCRIPT_NAMES.get(name, name), [
        "++wandb.enabled=False", f"optimizer.batch_size={BATCH}", "devices=1", "accelerator=cpu",
        f"backbone.name={backbone}", "precision=32", "strategy=auto", "sync_batchnorm=False",
        "++scheduler.warmup_epochs=0", "data.num_workers=0",
        *(f"++iclmsr.{k}={_hydra_value(v)}" for k, v in options.items()), *overrides])
    cfg = tiny(cfg)
    for entry in cfg.augmentations:
        entry.crop_size = size
    return prepare_pretrain(cfg) if prepare else cfg


def build(name: str, overrides: Sequence[str] = (), iclmsr: Optional[Dict[str, Any]] = None,
          backbone: str = "test_resnet", size: int = SIZE) -> pl.LightningModule:
    """The variant of ``name`` built from its tiny solo config, with the device augmentation
    (views of ``size`` px)."""
    return build_model(method_cfg(name, overrides, iclmsr, backbone, size=size))


class RawImages(Dataset):
    """Deterministic raw uint8 images ``(index, image (3, SIZE, SIZE), label)``."""

    def __init__(self, n: int = 4 * BATCH, size: int = SIZE, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, 10, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return i, self.images[i], self.labels[i]


def loader(n: int = 4 * BATCH, seed: int = 0) -> DataLoader:
    return DataLoader(RawImages(n, seed=seed), batch_size=BATCH, shuffle=False, drop_last=True)


def raw_batch(seed: int = 0) -> List[Any]:
    """One raw batch in the loader's format."""
    data = RawImages(BATCH, seed=seed)
    return [torch.arange(BATCH), data.images, data.labels]


def trainer(**kwargs: Any) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    return pl.Trainer(**{**defaults, **kwargs})


def quiet(model: pl.LightningModule) -> pl.LightningModule:
    """No logging outside a Trainer."""
    model.log = lambda *a, **k: None
    model.log_dict = lambda *a, **k: None
    return model
