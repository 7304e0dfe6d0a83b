"""``solo-iclmsr pretrain``: solo-learn's ``main_pretrain.py``, plus ICL-MSR and the device
augmentation.

The steps are main_pretrain's, on the same config: solo's ``parse_cfg``, ``seed_everything``,
the model from ``METHODS`` (here its ``<method>_iclmsr`` variant, which is the untouched method
when ``iclmsr.enabled`` is false), ``make_contiguous`` and channels-last, the training loader of
solo's datasets and the validation loader, resuming from ``resume_from_checkpoint`` or, with
``auto_resume.enabled``, a checkpoint of the same training config (``runs.resume``: solo's
``AutoResumer`` compares a few keys only), solo's ``Checkpointer``
(``checkpoint.dir/<method>/<version>/``, with ``args.json``), wandb when enabled, and a
``Trainer`` built from the config's top-level keys that it accepts. What the project adds: the
views made on the device (``data.augment_on_device``), a CSV log of the metrics beside the
checkpoints, the training time kept in every checkpoint (``TrainClock``: a resumed run adds to
it), the non-finite loss guard, the strata probe, and one-line errors for bad input before
anything is trained; a resumed checkpoint that has already reached ``max_epochs`` is reported as
such, and nothing is trained.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from solo_iclmsr.runs.checkpoints import check_matches, read_checkpoint
from solo_iclmsr.config import check_schedule, solo_checked
from solo_iclmsr.plugin import prepare_pretrain
from solo_iclmsr.plugin.amp import trainer_precision

__all__ = ["RunResult", "build_model", "pretrain"]


@dataclass
class RunResult:
    """Where a pretraining run wrote its files.

    Attributes:
        folder: ``checkpoint.dir/<method>/<version>`` (checkpoints, ``args.json``, ``metrics.csv``).
        last_checkpoint: the last checkpoint written, or ``None``.
        global_step: optimizer steps taken, counting a resumed run's earlier ones.
        already_complete: the checkpoint it resumed had reached ``max_epochs``: nothing was
            trained, and ``folder`` and ``last_checkpoint`` are that checkpoint's.
    """

    folder: Path
    last_checkpoint: Optional[Path]
    global_step: int
    already_complete: bool = False


def build_model(cfg: DictConfig) -> pl.LightningModule:
    """The ``<method>_iclmsr`` variant of a prepared config, with its device augmentation."""
    from solo.utils.misc import make_contiguous

    from solo_iclmsr.data.augment import build_multiview_augmentation
    from solo_iclmsr.plugin.registry import method_class

    model = solo_checked(method_class(cfg.method, enabled=cfg.iclmsr.enabled), cfg)
    check_schedule(model.cfg)
    make_contiguous(model)
    if not cfg.performance.disable_channel_last:
        model = model.to(memory_format=torch.channels_last)
    if OmegaConf.select(cfg, "data.augment_on_device", default=True):
        model.set_device_augmentation(build_multiview_augmentation(cfg.augmentations,
                                                                   cfg.data.dataset))
    return model


def _resume_path(cfg: DictConfig,
                 model: pl.LightningModule) -> Tuple[Optional[str], Optional[RunResult]]:
    """``resume_from_checkpoint``, else the checkpoint of the same training config that
    ``find_resumable`` finds (its one line printed); read and checked against the model first
    (one line if it cannot be used; the file is left as it is). The second item is the run's
    result when that checkpoint has already reached ``max_epochs``: nothing is left to train."""
    from solo_iclmsr.runs.resume import find_resumable, reached_max_epochs

    key, path = "resume_from_checkpoint", cfg.resume_from_checkpoint
    if path is None and cfg.auto_resume.enabled:
        choice = find_resumable(cfg, os.path.join(cfg.checkpoint.dir, cfg.method),
                                cfg.auto_resume.max_hours)
        key, path = "auto_resume (the checkpoint it found)", choice.checkpoint
        if choice.reason is not None:
            print(choice.reason)
    if path is None:
        return None, None
    state = read_checkpoint(path, key)
    check_matches(state, model, key, path)
    if reached_max_epochs(state, cfg):
        return str(path), RunResult(Path(str(path)).parent, Path(str(path)),
                                    int(state.get("global_step", 0)), already_complete=True)
    return str(path), None


def _callbacks(cfg: DictConfig, model: pl.LightningModule, train_set: Any) -> List[pl.Callback]:
    from solo.utils.checkpointer import Checkpointer

    from solo_iclmsr.data.probe import probe_set
    from solo_iclmsr.plugin.callbacks import NonFiniteLossGuard, StrataProbe, TrainClock

    # the clock first: its state is current when the checkpointer saves it
    callbacks: List[pl.Callback] = [TrainClock(), NonFiniteLossGuard()]
    if cfg.checkpoint.enabled:
        callbacks.append(Checkpointer(cfg, logdir=os.path.join(cfg.checkpoint.dir, cfg.method),
                                      frequency=cfg.checkpoint.frequency,
                                      keep_prev=cfg.checkpoint.keep_prev))
    if OmegaConf.select(cfg, "auto_umap.enabled", default=False):
        from solo.utils.auto_umap import AutoUMAP

        callbacks.append(AutoUMAP(cfg.name, logdir=os.path.join(cfg.auto_umap.dir, cfg.method),
                                  frequency=cfg.auto_umap.frequency))
    if cfg.wandb.enabled:
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.iclmsr.enabled and cfg.diagnostics.enabled and getattr(
            model, "device_augmentation", None) is not None:
        probe = probe_set(cfg, train_set)
        if probe is not None:
            callbacks.append(StrataProbe(probe, cfg.diagnostics.every_n_epochs))
    return callbacks


def _loggers(cfg: DictConfig, model: pl.LightningModule) -> List[Any]:
    from lightning.pytorch.loggers import CSVLogger

    loggers: List[Any] = []
    if cfg.wandb.enabled:
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(name=cfg.name, project=cfg.wandb.project, entity=cfg.wandb.entity,
                             offline=cfg.wandb.offline)
        logger.watch(model, log="gradients", log_freq=100)
        logger.log_hyperparams(OmegaConf.to_container(cfg))
        loggers.append(logger)
    # Beside the checkpoints: solo's Checkpointer names its folder after the first logger's
    # version, so without wandb the metrics and the checkpoints share one folder of
    # checkpoint.dir/<method>/, named as solo names its offline runs.
    from solo.utils.checkpointer import Checkpointer

    logdir = os.path.join(cfg.checkpoint.dir, cfg.method)
    taken = set(os.listdir(logdir)) if os.path.isdir(logdir) else set()
    version = "offline-" + Checkpointer.random_string()
    while version in taken:
        version = "offline-" + Checkpointer.random_string()
    loggers.append(CSVLogger(logdir, name="", version=version))
    return loggers


def pretrain(cfg: DictConfig, callbacks: Sequence[pl.Callback] = ()) -> RunResult:
    """Pretrain one method from a composed config (see the module docstring); ``callbacks`` are
    added to the run's own."""
    from lightning.pytorch.strategies.ddp import DDPStrategy

    from solo_iclmsr.data.loaders import pretrain_dataset, pretrain_loader, validation_loader

    cfg = prepare_pretrain(cfg)
    pl.seed_everything(cfg.seed)
    model = build_model(cfg)
    train_set = pretrain_dataset(cfg)
    train_loader = pretrain_loader(cfg, train_set)
    val_loader = validation_loader(cfg)
    ckpt_path, complete = _resume_path(cfg, model)
    if complete is not None:
        return complete
    callbacks = _callbacks(cfg, model, train_set) + list(callbacks)
    kwargs = OmegaConf.to_container(cfg)
    valid = inspect.signature(pl.Trainer.__init__).parameters
    kwargs = {name: kwargs[name] for name in valid if name in kwargs}
    # 16-mixed on a CPU: float16 with a real GradScaler, not Lightning's silent bf16-mixed
    kwargs.update(trainer_precision(kwargs.pop("precision", None), kwargs.get("accelerator")))
    kwargs.update(logger=_loggers(cfg, model), callbacks=callbacks, enable_checkpointing=False,
                  strategy=DDPStrategy(find_unused_parameters=False) if cfg.strategy == "ddp"
                  else (cfg.strategy or "auto"))
    trainer = pl.Trainer(**kwargs)
    trainer.fit(model, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
    checkpointer = next((c for c in callbacks if hasattr(c, "ckpt_placeholder")), None)
    folder = Path(getattr(checkpointer, "path", trainer.loggers[-1].log_dir))
    last = getattr(checkpointer, "last_ckpt", None)
    return RunResult(folder, Path(last) if last else None, trainer.global_step)
