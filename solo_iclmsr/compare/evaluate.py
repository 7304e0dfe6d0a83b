"""Evaluation of one finished run of a comparison: the project's ``knn`` and ``linear``
(solo's ``main_knn`` / ``main_linear`` flows) on every test version of the run's data.

Test versions (``data.loaders.evaluation_sets``): the built-in set's full / foreground-only /
background-decorrelated test splits; full / fg / bg of a held-out part of a dataset with masks
(``diagnostics.masks``); otherwise solo's validation set. The k-NN bank and the linear probe's
training set are the run's training images (the built-in set's in the variant it trained on).

The linear config is derived from the pretraining config (``linear_config``) unless one is
given: solo's recipe of ``scripts/linear/**`` (SGD, lr 0.1, no weight decay, step decays at 60%
and 80% of its epochs) with the run's backbone, data and batch size. Evaluation runs on one
device (a run trained with DDP is evaluated on one of its devices).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

__all__ = ["evaluate_run", "linear_config", "EVAL_KINDS"]

EVAL_KINDS = ("knn", "linear")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def evaluate_run(checkpoint: Path, folder: Path, evaluation: Dict[str, Any]) -> Dict[str, Any]:
    """{"knn": {test: {"knn<k>": {"top1", "top5"}}}, "linear": {test: {"top1", "top5"}},
    "seconds": ...} for the pretraining ``checkpoint``; ``folder`` receives the linear runs."""
    from solo_iclmsr.runs.checkpoints import load_pretrained
    from solo_iclmsr.runs.knn import knn_grid
    from solo_iclmsr.data.loaders import evaluation_sets

    start = time.perf_counter()
    model, cfg = load_pretrained(checkpoint)
    model.to(_device())
    out: Dict[str, Any] = {"knn": {}, "linear": {}}
    kinds = list(evaluation.get("eval", EVAL_KINDS))
    if "knn" in kinds:
        ks: List[int] = list(evaluation.get("knn_k", [5, 20]))
        train_set, tests = evaluation_sets(cfg)
        grid = knn_grid(model, train_set, tests, ks=ks)
        for test in tests:
            row = grid[f"backbone / {test}"]
            out["knn"][test] = {f"knn{k}": _topk(row[f"k={k},cosine,T=0.07"]) for k in ks}
    if "linear" in kinds:
        out["linear"] = _linear(cfg, checkpoint, folder / "linear", evaluation)
    out["seconds"] = time.perf_counter() - start
    return out


def _topk(result: Any) -> Dict[str, float]:
    return {"top1": float(result.top1), "top5": float(result.top5)}


def _linear(pretrain_cfg: DictConfig, checkpoint: Path, folder: Path,
            evaluation: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    from solo_iclmsr.runs.linear import linear
    from solo_iclmsr.config import compose
    from solo_iclmsr.data.loaders import evaluation_sets
    from solo_iclmsr.evaluation import classifier_accuracy

    # on one device, in this process (as solo's main_knn): Lightning's DDP launcher would start
    # the other ranks by running this job again
    placed = [f"++pretrained_feature_extractor='{checkpoint}'", f"++checkpoint.dir='{folder}'",
              "++auto_resume.enabled=False", "++wandb.enabled=False", "++devices=1",
              "++strategy=auto", "++sync_batchnorm=False"]
    if evaluation.get("linear_config_path"):
        cfg = compose(evaluation["linear_config_path"], evaluation["linear_config_name"],
                      [*evaluation.get("linear_overrides", []), *placed])
    else:
        cfg = linear_config(pretrain_cfg, checkpoint, folder, evaluation.get("linear_epochs"))
    result = linear(cfg)
    model = result.model.to(_device())
    _, tests = evaluation_sets(cfg, entry=cfg.data.augmentations)
    return {test: _topk(classifier_accuracy(model, dataset)) for test, dataset in tests.items()}


def linear_config(pretrain_cfg: DictConfig, checkpoint: Path, folder: Path,
                  epochs: Optional[int] = None) -> DictConfig:
    """A linear config in solo's schema (``scripts/linear/**``) for a pretraining run: its
    backbone, data, batch size and accelerator, on one device; solo's SGD recipe; ``epochs``
    (default 100, solo's) with the learning rate divided by 10 at 60% and 80% of them."""
    from solo_iclmsr.data.augment import mean_std

    p = pretrain_cfg
    epochs = int(epochs or 100)
    entry = p.augmentations[0]
    mean, std = mean_std(p.data.dataset, entry)
    data = {key: OmegaConf.select(p, f"data.{key}", default=None)
            for key in ("dataset", "train_path", "val_path", "format", "num_workers",
                        "image_size", "fraction")}
    data = {k: v for k, v in data.items() if v is not None}
    data["augmentations"] = {"crop_size": int(entry.crop_size), "mean": list(mean),
                             "std": list(std)}
    if p.data.dataset == "builtin":
        data["builtin"] = OmegaConf.to_container(p.data.builtin)
    cfg = {
        "name": f"{p.name}-linear",
        "pretrained_feature_extractor": str(checkpoint),
        "backbone": OmegaConf.to_container(p.backbone),
        "pretrain_method": str(p.method),
        "data": data,
        "optimizer": {"name": "sgd", "batch_size": int(p.optimizer.batch_size), "lr": 0.1,
                      "weight_decay": 0.0},
        "scheduler": {"name": "step", "lr_decay_steps": [max(1, int(0.6 * epochs)),
                                                         max(1, int(0.8 * epochs))]},
        "checkpoint": {"enabled": True, "dir": str(folder), "frequency": 1},
        "auto_resume": {"enabled": False},
        "wandb": {"enabled": False},
        "max_epochs": epochs,
        "devices": 1,  # evaluation runs on one device (see _linear)
        "accelerator": p.accelerator,
        "precision": p.precision,
        "strategy": "auto",
        "enable_progress_bar": OmegaConf.select(p, "enable_progress_bar", default=True),
    }
    if OmegaConf.select(p, "diagnostics.masks", default=None) is not None:
        cfg["diagnostics"] = OmegaConf.to_container(p.diagnostics)
    out = OmegaConf.create(cfg)
    OmegaConf.set_struct(out, False)
    return out
