"""Pre-training and offline evaluation runs, from validated configs (``solo_iclmsr.config``).

A pre-training run owns one folder, ``<output_dir>/<name>/``:

* ``config.yaml``: the resolved config;
* ``checkpoints/epoch=NNN.ckpt`` every ``checkpoint.frequency`` epochs and ``checkpoints/last.ckpt``;
* ``metrics.csv`` (Lightning's CSV logger) and ``tensorboard/``.

Running the same command again resumes from ``checkpoints/last.ckpt`` (auto-resume), so a run
killed mid-epoch restarts from its last completed epoch and ends after the same number of
optimizer steps. Checkpoints are read with ``weights_only=True``: no code runs from a file.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from solo_iclmsr import config as cfgmod
from solo_iclmsr import registry
from solo_iclmsr.augment import build_multiview_augmentation
from solo_iclmsr.backbones import create_backbone
from solo_iclmsr.data import BuiltinSpec, build_dataset, make_dataloader
from solo_iclmsr.evaluation import TopK, extract_features, knn_accuracy, linear_probe

CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped."""


class NonFiniteLossGuard(Callback):
    """Stops the run, with one line, at the first non-finite training loss.

    The check runs after each batch; checkpoints are written only at epoch ends, so the last
    good one (of a completed epoch) is never overwritten by a broken state.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not math.isfinite(float(loss)):
            last = Path(trainer.default_root_dir) / CHECKPOINTS / LAST
            kept = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"the training loss became {float(loss)} at step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}, batch {batch_idx}); the run stopped, {kept}. Try a lower "
                f"optimizer.lr or iclmsr.lambda_msr.")


def builtin_spec(kwargs: Dict[str, Any], key: str = "data.kwargs") -> BuiltinSpec:
    """The built-in dataset's generator settings from ``data.kwargs`` (``variant`` excluded)."""
    names = [f.name for f in fields(BuiltinSpec)]
    unknown = [k for k in kwargs if k not in names and k != "variant"]
    if unknown:
        raise ValueError(f"{key}.{unknown[0]} is not a setting of the builtin dataset: expected "
                         f"one of {', '.join(names + ['variant'])}.")
    return BuiltinSpec(**{k: v for k, v in kwargs.items() if k != "variant"})


def builtin_train_variant(kwargs: Dict[str, Any], key: str = "data.kwargs") -> str:
    """``data.kwargs.variant`` of the built-in dataset: the images the model trains on (the
    pre-training set, and the training set of k-NN / linear evaluation): ``full`` (default) or
    ``fg`` (foreground on neutral gray)."""
    variant = kwargs.get("variant", "full")
    if variant not in ("full", "fg"):
        raise ValueError(f"{key}.variant={variant!r} is invalid: expected full or fg.")
    return variant


def _fraction(value: float) -> float:
    return 1.0 if value is None or value <= 0 else float(value)


def pretrain_dataset(cfg: "cfgmod.PretrainConfig"):
    data = cfg.data
    return build_dataset(data.dataset, data.train_path, split="pretrain", image_size=data.image_size,
                         fraction=_fraction(data.fraction), seed=cfg.seed, download=data.download,
                         builtin=builtin_spec(data.kwargs) if data.dataset == "builtin" else None,
                         variant=builtin_train_variant(data.kwargs) if data.dataset == "builtin" else "full")


def build_model(cfg: "cfgmod.PretrainConfig", world_size: Optional[int] = None) -> pl.LightningModule:
    """The ``<method>_iclmsr`` variant (``iclmsr.enabled`` decides whether ICL-MSR is on), with
    its timm backbone and its device augmentation."""
    model = registry.method_class(cfg.method)(**cfgmod.to_method_kwargs(cfg, world_size))
    model.set_device_augmentation(build_multiview_augmentation(
        [augmentation_dict(a) for a in cfg.augmentations], cfg.data.dataset))
    return model


def augmentation_dict(aug: "cfgmod.AugmentationConfig") -> Dict[str, Any]:
    """A validated pipeline entry as the plain mapping ``build_multiview_augmentation`` reads
    (disabled transforms become probability 0)."""
    out: Dict[str, Any] = {"crop_size": aug.crop_size, "num_crops": aug.num_crops,
                           "rrc": {"enabled": aug.rrc.enabled, "crop_min_scale": aug.rrc.crop_min_scale,
                                   "crop_max_scale": aug.rrc.crop_max_scale},
                           "color_jitter": {"prob": aug.color_jitter.p,
                                            "brightness": aug.color_jitter.brightness,
                                            "contrast": aug.color_jitter.contrast,
                                            "saturation": aug.color_jitter.saturation,
                                            "hue": aug.color_jitter.hue}}
    for name in ("grayscale", "gaussian_blur", "solarization", "equalization", "horizontal_flip"):
        out[name] = {"prob": getattr(aug, name).p}
    if aug.mean is not None:
        out["mean"], out["std"] = list(aug.mean), list(aug.std)
    return out


def pretrain(cfg: "cfgmod.PretrainConfig", output_dir: Union[str, Path] = "runs",
             raw_config: Any = None, progress_bar: bool = True) -> Path:
    """Pre-train one method; returns the run folder (see module docstring)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run = Path(output_dir) / cfg.run_name
    (run / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    if raw_config is not None:
        (run / "config.yaml").write_text(OmegaConf.to_yaml(raw_config))
    # Raw uint8 batches; the model augments them on its device (DeviceAugmentationMixin).
    loader = make_dataloader(pretrain_dataset(cfg), cfg.optimizer.batch_size, shuffle=True,
                             drop_last=True, num_workers=cfg.data.num_workers, seed=cfg.seed)
    model = build_model(cfg)
    checkpoints = ModelCheckpoint(dirpath=run / CHECKPOINTS, filename="epoch={epoch:03d}",
                                  auto_insert_metric_name=False, save_top_k=-1, save_last=True,
                                  every_n_epochs=cfg.checkpoint.frequency,
                                  save_on_train_epoch_end=True, enable_version_counter=False)
    trainer_args = cfgmod.trainer_kwargs(cfg)
    loggers = [CSVLogger(run, name="", version=""), TensorBoardLogger(run, name="tensorboard", version="")]
    if cfg.wandb.enabled:
        loggers.append(_wandb_logger(cfg, run))
    trainer = pl.Trainer(**trainer_args, default_root_dir=str(run), logger=loggers,
                         callbacks=[checkpoints, NonFiniteLossGuard()],
                         enable_progress_bar=progress_bar, limit_val_batches=0,
                         enable_model_summary=False, log_every_n_steps=min(10, len(loader)))
    last = run / CHECKPOINTS / LAST
    trainer.fit(model, train_dataloaders=loader, ckpt_path=str(last) if last.exists() else None,
                weights_only=True)
    (run / "done.json").write_text(json.dumps({"global_step": trainer.global_step,
                                               "epochs": trainer.current_epoch}) + "\n")
    return run


def _wandb_logger(cfg: "cfgmod.PretrainConfig", run: Path) -> Any:
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ValueError("wandb.enabled=true but wandb is not installed: pip install wandb, or set "
                         "wandb.enabled=false.") from None
    from pytorch_lightning.loggers import WandbLogger

    return WandbLogger(name=cfg.run_name, project=cfg.wandb.project, entity=cfg.wandb.entity,
                       offline=cfg.wandb.offline, save_dir=str(run))


# --------------------------------------------------------------------------------------------
# Offline evaluation
# --------------------------------------------------------------------------------------------
def load_backbone(checkpoint: Union[str, Path], backbone: "cfgmod.BackboneConfig", dataset: str,
                  crop_size: int) -> torch.nn.Module:
    """The pre-trained encoder of a checkpoint (``encoder.*`` weights), frozen, in eval mode."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained_feature_extractor={str(path)!r} does not exist: give the "
                                f"checkpoint of a pre-training run (runs/<name>/checkpoints/last.ckpt).")
    spec = cfgmod.backbone_spec(backbone, dataset, crop_size)
    model = create_backbone(spec.pop("name"), **spec)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if not encoder:
        raise ValueError(f"{path} holds no encoder.* weights: is it a pre-training checkpoint?")
    model.load_state_dict(encoder)
    return model.eval().requires_grad_(False)


def evaluation_sets(data: "cfgmod.EvalDataConfig", seed: int = 0) -> Tuple[Any, Dict[str, Any]]:
    """(train set, {name: test set}); the built-in dataset is tested on its full, foreground-only
    and decorrelated-background versions."""
    common = dict(image_size=data.crop_size, seed=seed, download=data.download)
    if data.dataset == "builtin":
        spec = builtin_spec(data.kwargs)
        train = build_dataset("builtin", data.train_path, "train", builtin=spec,
                              variant=builtin_train_variant(data.kwargs),
                              fraction=_fraction(data.fraction), **common)
        tests = {variant: build_dataset("builtin", data.val_path, "test", variant=variant,
                                        builtin=spec, **common)
                 for variant in ("full", "fg", "decorrelated")}
        return train, tests
    train = build_dataset(data.dataset, data.train_path, "train", fraction=_fraction(data.fraction),
                          **common)
    return train, {"val": build_dataset(data.dataset, data.val_path or data.train_path, "val", **common)}


def _features(cfg: Any) -> Tuple[Tuple[Any, Any], Dict[str, Tuple[Any, Any]]]:
    if cfg.pretrained_feature_extractor is None:
        raise ValueError("pretrained_feature_extractor is not set: pass "
                         "pretrained_feature_extractor=runs/<name>/checkpoints/last.ckpt.")
    data = cfg.data
    backbone = load_backbone(cfg.pretrained_feature_extractor, cfg.backbone, data.dataset, data.crop_size)
    mean, std = cfgmod.dataset_mean_std(data.dataset, data.augmentations.mean, data.augmentations.std)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    backbone.to(device)
    train, tests = evaluation_sets(data, cfg.seed)
    extract = lambda ds: extract_features(backbone, ds, mean, std, data.crop_size, device=device)  # noqa: E731
    return extract(train), {name: extract(ds) for name, ds in tests.items()}


def knn(cfg: "cfgmod.KnnConfig") -> Dict[str, Dict[str, TopK]]:
    """{test set: {"k=5,T=0.07,cosine": TopK, ...}} for every combination of the ``knn`` grid."""
    (train, train_labels), tests = _features(cfg)
    results: Dict[str, Dict[str, TopK]] = {}
    for name, (feats, labels) in tests.items():
        results[name] = {}
        for k in cfg.knn.k:
            for distance in cfg.knn.distance_function:
                temps = cfg.knn.temperature if distance == "cosine" else (None,)
                for t in temps:
                    key = f"k={k},{distance}" + (f",T={t:g}" if t is not None else "")
                    results[name][key] = knn_accuracy(train, train_labels, feats, labels, k,
                                                      t or 0.07, distance)
    return results


def linear(cfg: "cfgmod.LinearConfig") -> Dict[str, TopK]:
    """Linear probe on frozen features: {test set: TopK}."""
    (train, train_labels), tests = _features(cfg)
    return linear_probe(train, train_labels, tests, epochs=cfg.trainer.max_epochs or 100,
                        lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay,
                        batch_size=cfg.optimizer.batch_size, seed=cfg.seed)
