"""``solo-iclmsr linear``: solo-learn's ``main_linear.py``, for solo's and timm backbones.

The steps are main_linear's, on the same config (``scripts/linear/**``): solo's linear
``parse_cfg``, the backbone by name, the pretrained weights from ``pretrained_feature_extractor``
(its ``backbone.*`` entries; read with ``weights_only=True`` and checked against the backbone),
the loss with mixup/cutmix or label smoothing, solo's ``LinearModel`` (optimizer and
``scheduler`` as configured: ``step`` decays at ``lr_decay_steps``), solo's data, checkpointer,
auto-resume and ``Trainer``. The backbone is built by the same rules as in pretraining
(``plugin/backbones.py``), so a timm backbone pretrained with ICL-MSR evaluates like solo's own.
The project's built-in dataset validates on its test split.

A dataset without a fixed recipe of solo's (``custom``, ImageNet at another size) is trained and
evaluated at the pretraining run's crop size and with its normalisation
(``data/eval_transforms.py``): ``data.augmentations`` (``crop_size``, ``mean``, ``std``) when the
config gives them, else the first view of the run that ``pretrained_feature_extractor`` comes
from (its ``args.json``). Test folders (``linear(cfg, tests)``; ``--test``, ``--test-suite`` of
the command) are checked before training and the trained classifier is evaluated on each.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from solo_iclmsr.runs.checkpoints import check_matches, read_checkpoint
from solo_iclmsr.config import check_backbone, check_schedule, solo_checked

__all__ = ["linear", "build_backbone", "LinearResult", "load_linear", "linear_entry"]


def build_backbone(cfg: DictConfig) -> nn.Module:
    """The backbone of ``cfg.backbone`` for evaluation, by the pretraining rules: solo's names
    as main_linear builds them (ResNet without fc; the CIFAR stem for cifar10/100 and the
    built-in set), every other name from timm."""
    from solo.methods.base import BaseMethod

    from solo_iclmsr.plugin.backbones import SMALL_IMAGE_DATASETS, solo_cifar_stem, timm_backbone_for

    name, kwargs = cfg.backbone.name, OmegaConf.to_container(cfg.backbone.kwargs)
    if name not in BaseMethod._BACKBONES:
        return timm_backbone_for(name, kwargs, cfg.data.dataset)
    backbone = BaseMethod._BACKBONES[name](method=cfg.pretrain_method, **kwargs)
    if name.startswith("resnet"):
        backbone.fc = nn.Identity()
        if cfg.data.dataset in SMALL_IMAGE_DATASETS:
            solo_cifar_stem(backbone)
    return backbone


def _parse(cfg: DictConfig) -> DictConfig:
    """solo's linear ``parse_cfg``. It accepts only its own backbone names: a timm name is
    checked here, and stands aside for solo's check."""
    from solo.args.linear import parse_cfg
    from solo.methods.base import BaseMethod

    OmegaConf.set_struct(cfg, False)
    name = OmegaConf.select(cfg, "backbone.name", default=None)
    if name is None:
        raise ValueError("backbone.name is missing from the config: set it.")
    check_backbone(name)
    if name not in BaseMethod._BACKBONES:
        cfg.backbone.name = next(iter(BaseMethod._BACKBONES))
    cfg = solo_checked(parse_cfg, cfg)
    cfg.backbone.name = name
    return cfg


def _loss(cfg: DictConfig) -> tuple:
    """main_linear's loss and mixup function."""
    from timm.data.mixup import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, cutmix_minmax=None, prob=1.0,
                      switch_prob=0.5, mode="batch", label_smoothing=cfg.label_smoothing,
                      num_classes=cfg.data.num_classes)
        return SoftTargetCrossEntropy(), mixup
    if cfg.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.label_smoothing), None
    return nn.CrossEntropyLoss(), None


def linear_entry(cfg: DictConfig) -> Optional[DictConfig]:
    """The crop size and normalisation of a linear config (``data.augmentations``) or, when it
    gives no crop size, those of the first view of the pretraining run of
    ``pretrained_feature_extractor`` (the ``args.json`` beside it); ``None`` when neither."""
    given = OmegaConf.select(cfg, "data.augmentations", default=None)
    if given is not None and given.get("crop_size") is not None:
        return OmegaConf.create(OmegaConf.to_container(given, resolve=True))
    path = OmegaConf.select(cfg, "pretrained_feature_extractor", default=None)
    args = Path(str(path)).parent / "args.json" if path else None
    if args is None or not args.is_file():
        return None
    try:
        run = json.loads(args.read_text())
    except ValueError:
        return None
    views = run.get("augmentations") or []
    if not views or not isinstance(views[0], dict) or views[0].get("crop_size") is None:
        return None
    from solo_iclmsr.data.augment import mean_std

    mean, std = mean_std(str(run.get("data", {}).get("dataset")), views[0])
    return OmegaConf.create({"crop_size": int(views[0]["crop_size"]), "mean": list(mean),
                             "std": list(std)})


def _loaders(cfg: DictConfig) -> tuple:
    if cfg.data.dataset == "builtin" or OmegaConf.select(cfg, "diagnostics.masks", default=None):
        from torch.utils.data import DataLoader

        from solo_iclmsr.data.loaders import evaluation_sets

        train, tests = evaluation_sets(cfg, entry=cfg.data.augmentations)
        batch, workers = int(cfg.optimizer.batch_size), int(cfg.data.num_workers)
        return (DataLoader(train, batch, shuffle=True, drop_last=True, num_workers=workers),
                DataLoader(tests["full"], batch, num_workers=workers))
    from solo.data.classification_dataloader import (prepare_data, prepare_dataloaders,
                                                     prepare_datasets)

    from solo_iclmsr.data.eval_transforms import recipe_of
    from solo_iclmsr.data.loaders import _fetching

    data = cfg.data
    data_format = "image_folder" if data.format == "dali" else data.format
    recipe = recipe_of(str(data.dataset), data.augmentations)
    if recipe.fixed:
        return _fetching(data.dataset, data.train_path, lambda: prepare_data(
            data.dataset, train_data_path=data.train_path, val_data_path=data.val_path,
            data_format=data_format, batch_size=cfg.optimizer.batch_size,
            num_workers=data.num_workers, auto_augment=cfg.auto_augment))
    val_path = data.val_path if data.val_path is not None else data.train_path
    train, val = _fetching(data.dataset, data.train_path, lambda: prepare_datasets(
        data.dataset, recipe.train_transform(bool(cfg.auto_augment)), recipe.eval_transform(),
        train_data_path=data.train_path, val_data_path=val_path, data_format=data_format))
    train_loader, val_loader = prepare_dataloaders(train, val, int(cfg.optimizer.batch_size),
                                                   int(data.num_workers))
    return train_loader, (val_loader if data.val_path is not None else None)


@dataclass
class LinearResult:
    """What ``linear`` trained: solo's ``LinearModel`` (backbone and classifier, eval mode) and
    the trainer's final metrics."""

    model: pl.LightningModule
    metrics: Dict[str, Any]
    tests: Dict[str, Any] = field(default_factory=dict)  # {test set: TopK}


def linear(cfg: DictConfig, tests: Optional[Mapping[str, str]] = None) -> LinearResult:
    """Linear evaluation of a pretrained backbone (see the module docstring); ``tests``:
    {name: test folder} on which the trained classifier is evaluated (``LinearResult.tests``)."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.strategies.ddp import DDPStrategy
    from solo.methods.linear import LinearModel
    from solo.utils.auto_resumer import AutoResumer
    from solo.utils.checkpointer import Checkpointer
    from solo.utils.misc import make_contiguous

    from solo_iclmsr.plugin.registry import register

    register()  # the project's datasets are known to solo's parsers
    OmegaConf.set_struct(cfg, False)
    entry = linear_entry(cfg)
    if entry is not None:
        given = OmegaConf.select(cfg, "data.augmentations", default=None) or {}
        cfg.data.augmentations = OmegaConf.merge(entry, {k: v for k, v in given.items()
                                                         if v is not None})
    cfg = _parse(cfg)
    if cfg.data.dataset == "builtin":
        from solo_iclmsr.config import validate_block
        from solo_iclmsr.config.schema import BuiltinDataConfig

        validate_block(cfg, "data.builtin", BuiltinDataConfig)
    backbone = build_backbone(cfg)
    key, path = "pretrained_feature_extractor", str(cfg.pretrained_feature_extractor)
    state = read_checkpoint(path, key)
    check_matches(state, backbone, key, path, prefix="backbone.")
    backbone.load_state_dict({k[len("backbone."):]: v for k, v in state["state_dict"].items()
                              if k.startswith("backbone.")})
    loss_func, mixup_func = _loss(cfg)
    model = solo_checked(LinearModel, backbone, loss_func=loss_func, mixup_func=mixup_func, cfg=cfg)
    check_schedule(cfg)
    make_contiguous(model)
    if not cfg.performance.disable_channel_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader, val_loader = _loaders(cfg)
    test_sets = _test_sets(cfg, train_loader.dataset, tests or {})

    ckpt_path = None
    if cfg.auto_resume.enabled and cfg.resume_from_checkpoint is None:
        found, _ = AutoResumer(checkpoint_dir=os.path.join(cfg.checkpoint.dir, "linear"),
                               max_hours=cfg.auto_resume.max_hours).find_checkpoint(cfg)
        ckpt_path = found
    elif cfg.resume_from_checkpoint is not None:
        ckpt_path = cfg.resume_from_checkpoint
    if ckpt_path is not None:
        check_matches(read_checkpoint(ckpt_path, "resume_from_checkpoint"), model,
                      "resume_from_checkpoint", ckpt_path)
    callbacks = []
    if cfg.checkpoint.enabled:
        callbacks.append(Checkpointer(cfg, logdir=os.path.join(cfg.checkpoint.dir, "linear"),
                                      frequency=cfg.checkpoint.frequency,
                                      keep_prev=cfg.checkpoint.keep_prev))
    loggers = [CSVLogger(os.path.join(cfg.checkpoint.dir, "linear"), name="")]
    if cfg.wandb.enabled:
        from lightning.pytorch.callbacks import LearningRateMonitor
        from lightning.pytorch.loggers import WandbLogger

        loggers.insert(0, WandbLogger(name=cfg.name, project=cfg.wandb.project,
                                      entity=cfg.wandb.entity, offline=cfg.wandb.offline))
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    kwargs = OmegaConf.to_container(cfg)
    valid = inspect.signature(pl.Trainer.__init__).parameters
    kwargs = {name: kwargs[name] for name in valid if name in kwargs}
    kwargs.update(logger=loggers, callbacks=callbacks, enable_checkpointing=False,
                  strategy=DDPStrategy(find_unused_parameters=False) if cfg.strategy == "ddp"
                  else (cfg.strategy or "auto"))
    trainer = pl.Trainer(**kwargs)
    trainer.fit(model, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
    return LinearResult(model.eval(), dict(trainer.callback_metrics),
                        _evaluate(model, cfg, test_sets))


def _test_sets(cfg: DictConfig, train_set: Any, tests: Mapping[str, str]) -> Dict[str, Any]:
    """The test folders as evaluation sets of the linear config, checked against the classes of
    its training set before anything is trained."""
    if not tests:
        return {}
    from solo_iclmsr.data.eval_transforms import recipe_of
    from solo_iclmsr.data.test_sets import (check_test_sets, class_names, test_folder_sets,
                                            training_classes)

    classes = class_names(train_set) or training_classes(cfg)
    check_test_sets(classes, tests, f"the training set data.train_path={cfg.data.train_path!r}")
    transform = recipe_of(str(cfg.data.dataset), cfg.data.augmentations).eval_transform(True)
    return test_folder_sets(tests, classes, transform)


def _evaluate(model: pl.LightningModule, cfg: DictConfig, sets: Mapping[str, Any]
              ) -> Dict[str, Any]:
    """{test set: TopK} of the trained classifier, on one device."""
    if not sets:
        return {}
    from solo_iclmsr.evaluation import classifier_accuracy, evaluation_device, loader_workers

    model.to(evaluation_device())
    workers = loader_workers(cfg.data.num_workers)
    return {name: classifier_accuracy(model, dataset, int(cfg.optimizer.batch_size), workers,
                                      cfg.precision, name=name)
            for name, dataset in sets.items()}


def load_linear(checkpoint: Path) -> Tuple[pl.LightningModule, DictConfig]:
    """A trained linear model (solo's ``LinearModel``: backbone and classifier) from a checkpoint
    ``linear`` wrote, rebuilt from the ``args.json`` beside it, in eval mode; and its config.

    Raises:
        CheckpointError: a missing ``args.json`` or an unusable checkpoint.
    """
    from solo.methods.linear import LinearModel

    from solo_iclmsr.plugin.registry import register
    from solo_iclmsr.runs.checkpoints import CheckpointError

    register()
    path = Path(str(checkpoint))
    state = read_checkpoint(path, "the linear checkpoint")
    args = path.parent / "args.json"
    if not args.is_file():
        raise CheckpointError(f"the linear checkpoint {str(path)!r} has no args.json beside it: "
                              f"give a checkpoint written by solo-iclmsr linear.")
    cfg = OmegaConf.create(json.loads(args.read_text()))
    OmegaConf.set_struct(cfg, False)
    loss_func, mixup_func = _loss(cfg)
    model = solo_checked(LinearModel, build_backbone(cfg), loss_func=loss_func,
                         mixup_func=mixup_func, cfg=cfg)
    check_matches(state, model, "the linear checkpoint", path)
    model.load_state_dict(state["state_dict"])
    return model.eval(), cfg
