"""The one place that knows configs: load, validate, and translate them for solo-learn 1.0.2.

Configs follow the YAML schema of solo-learn's newer releases (``name``, ``method``, ``backbone``,
``method_kwargs``, ``momentum``, ``data``, ``optimizer``, ``scheduler``, ``augmentations``,
``checkpoint``, ``auto_resume``, ``knn_eval``, ``wandb``, Lightning Trainer keys at the top level)
plus this project's ``iclmsr:`` block (:class:`~solo_iclmsr.core.options.ICLMSROptions`).
The installed solo-learn 1.0.2 takes keyword arguments instead, so :func:`to_method_kwargs`
translates a validated config into them.

Loading (:func:`compose`) understands a Hydra-style ``defaults:`` list (``_self_``,
``group: option`` read from ``<config dir>/<group>/<option>.yaml``, plain names merged at the
root; ``override hydra/...`` entries are ignored) and ``key=value`` overrides (``+key=value`` is
accepted, ``~key`` deletes, ``group=option`` selects another option of a defaults group).

Every error is a one-line ``ValueError`` that names the key (``optimizer.lr``,
``augmentations[1].crop_size``, ``iclmsr.n_strata``) and, for unknown keys, the nearest valid one.

Nothing here imports solo-learn: the per-method argument table below was read from the 1.0.2
sources (each method's ``__init__`` and ``add_model_specific_args`` defaults), and
:func:`solo_method_signatures` re-reads the installed sources with ``ast`` (no import) so a test
can check the table.

Example:
    >>> cfg = load_pretrain_config("configs/pretrain/cifar10/simclr.yaml", ["optimizer.lr=0.3"])
    >>> kwargs = to_method_kwargs(cfg)
    >>> kwargs["optimizer"], kwargs["lars"], kwargs["num_large_crops"]
    ('sgd', True, 2)
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from solo_iclmsr.core.options import ICLMSROptions
from solo_iclmsr.normalization import dataset_mean_std

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

METHODS = ("barlow_twins", "byol", "deepclusterv2", "dino", "mocov2plus", "nnbyol", "nnclr",
           "nnsiam", "ressl", "simclr", "simsiam", "swav", "vicreg", "wmse")
MOMENTUM_METHODS = ("byol", "dino", "mocov2plus", "nnbyol", "ressl")
DATASETS = ("builtin", "cifar10", "cifar100", "stl10", "tinyimagenet", "imagenet100", "imagenet",
            "custom")
NUM_CLASSES = {"builtin": 10, "cifar10": 10, "cifar100": 100, "stl10": 10, "tinyimagenet": 200,
               "imagenet100": 100, "imagenet": 1000}
CROP_SIZES = {"builtin": 32, "cifar10": 32, "cifar100": 32, "stl10": 96, "tinyimagenet": 64,
              "imagenet100": 224, "imagenet": 224, "custom": 224}
CIFAR_DATASETS = ("cifar10", "cifar100")
DATA_FORMATS = ("image_folder", "dali", "h5")
DALI_DATASETS = ("imagenet100", "imagenet", "custom")
PRETRAIN_OPTIMIZERS = ("sgd", "lars", "adam", "adamw")
LINEAR_OPTIMIZERS = ("sgd", "lars", "adam")
PRETRAIN_SCHEDULERS = ("warmup_cosine", "cosine", "step", "none")
LINEAR_SCHEDULERS = ("reduce", "warmup_cosine", "cosine", "step", "exponential", "none")
# optimizer.kwargs accepted per optimizer, with the defaults of solo-learn's parse_cfg.
OPTIMIZER_KWARGS: Dict[str, Dict[str, Any]] = {
    "sgd": {"momentum": 0.9, "nesterov": False, "dampening": 0.0},
    "lars": {"momentum": 0.9, "eta": 1e-3, "clip_lr": False, "exclude_bias_n_norm": False,
             "nesterov": False},
    "adam": {"betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False},
    "adamw": {"betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False},
}
# Arguments of lightning's Trainer.__init__ (2.x) that may appear at a config's top level.
TRAINER_KEYS = (
    "accelerator", "strategy", "devices", "num_nodes", "precision", "logger", "callbacks",
    "fast_dev_run", "max_epochs", "min_epochs", "max_steps", "min_steps", "max_time",
    "limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
    "overfit_batches", "val_check_interval", "check_val_every_n_epoch", "num_sanity_val_steps",
    "log_every_n_steps", "enable_checkpointing", "enable_progress_bar", "enable_model_summary",
    "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm", "deterministic",
    "benchmark", "inference_mode", "use_distributed_sampler", "profiler", "detect_anomaly",
    "barebones", "plugins", "sync_batchnorm", "reload_dataloaders_every_n_epochs",
    "default_root_dir", "enable_autolog_hparams", "model_registry",
)
PRECISIONS = (16, 32, 64, "16", "32", "64", "bf16", "16-mixed", "bf16-mixed", "16-true",
              "bf16-true", "32-true", "64-true", "transformer-engine",
              "transformer-engine-float16")
# Top-level keys that belong to Hydra itself; they are read by nobody here.
_IGNORED_TOP_LEVEL = ("hydra",)
# Keys added to the method kwargs beyond the 1.0.2 signature (BaseMethod keeps them in
# ``extra_args``); see to_method_kwargs.
EXTRA_METHOD_KWARGS = ("timm_backbone", "dataset", "scheduler_interval", "exclude_bias_n_norm_wd",
                       "iclmsr")


# --------------------------------------------------------------------------------------------
# Per-method arguments of solo-learn 1.0.2
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodArg:
    """One constructor argument of a solo-learn 1.0.2 method.

    Attributes:
        default: the default of the method's ``add_model_specific_args``.
        kind: ``int``, ``float``, ``bool`` or ``int_list``.
        low: smallest allowed value (``None``: no bound).
        open_low: ``low`` itself is not allowed.
    """

    default: Any
    kind: str
    low: Optional[float] = None
    open_low: bool = False


def _dim(default: int) -> MethodArg:
    return MethodArg(default, "int", 1)


def _temp(default: float) -> MethodArg:
    return MethodArg(default, "float", 0.0, open_low=True)


def _count(default: int, low: int = 0) -> MethodArg:
    return MethodArg(default, "int", low)


def _weight(default: float) -> MethodArg:
    return MethodArg(default, "float", 0.0)


# Read from solo-learn 1.0.2 (solo/methods/<method>.py): __init__ arguments, defaults from
# add_model_specific_args. DINO's freeze_last_layer is annotated bool but parsed as an int
# (the number of epochs the last layer stays frozen); it is an int here.
METHOD_ARGS: Dict[str, Dict[str, MethodArg]] = {
    "barlow_twins": {"proj_hidden_dim": _dim(2048), "proj_output_dim": _dim(2048),
                     "lamb": _weight(0.0051), "scale_loss": _weight(0.024)},
    "byol": {"proj_output_dim": _dim(256), "proj_hidden_dim": _dim(2048),
             "pred_hidden_dim": _dim(512)},
    "deepclusterv2": {"proj_output_dim": _dim(128), "proj_hidden_dim": _dim(2048),
                      "num_prototypes": MethodArg((3000, 3000, 3000), "int_list", 1),
                      "temperature": _temp(0.1), "kmeans_iters": _count(10, 1)},
    "dino": {"proj_hidden_dim": _dim(2048), "proj_output_dim": _dim(256),
             "num_prototypes": _dim(4096), "use_bn_in_head": MethodArg(False, "bool"),
             "norm_last_layer": MethodArg(True, "bool"), "clip_grad": _weight(0.0),
             "freeze_last_layer": _count(1), "student_temperature": _temp(0.1),
             "teacher_temperature": _temp(0.07), "warmup_teacher_temperature": _temp(0.04),
             "warmup_teacher_temperature_epochs": _count(50)},
    "mocov2plus": {"proj_output_dim": _dim(128), "proj_hidden_dim": _dim(2048),
                   "temperature": _temp(0.1), "queue_size": _count(65536, 1)},
    "nnbyol": {"proj_output_dim": _dim(256), "proj_hidden_dim": _dim(2048),
               "pred_hidden_dim": _dim(512), "queue_size": _count(65536, 1)},
    "nnclr": {"proj_output_dim": _dim(256), "proj_hidden_dim": _dim(2048),
              "pred_hidden_dim": _dim(4096), "temperature": _temp(0.2),
              "queue_size": _count(65536, 1)},
    "nnsiam": {"proj_output_dim": _dim(128), "proj_hidden_dim": _dim(2048),
               "pred_hidden_dim": _dim(512), "queue_size": _count(65536, 1)},
    "ressl": {"proj_output_dim": _dim(256), "proj_hidden_dim": _dim(2048),
              "temperature_q": _temp(0.1), "temperature_k": _temp(0.04),
              "queue_size": _count(65536, 1)},
    "simclr": {"proj_output_dim": _dim(128), "proj_hidden_dim": _dim(2048),
               "temperature": _temp(0.1), "supervised": MethodArg(False, "bool")},
    "simsiam": {"proj_output_dim": _dim(128), "proj_hidden_dim": _dim(2048),
                "pred_hidden_dim": _dim(512)},
    "swav": {"proj_output_dim": _dim(128), "proj_hidden_dim": _dim(2048),
             "num_prototypes": _dim(3000), "sk_iters": _count(3, 1), "sk_epsilon": _temp(0.05),
             "temperature": _temp(0.1), "queue_size": _count(3840), "epoch_queue_starts": _count(15),
             "freeze_prototypes_epochs": _count(1)},
    "vicreg": {"proj_output_dim": _dim(2048), "proj_hidden_dim": _dim(2048),
               "sim_loss_weight": _weight(25.0), "var_loss_weight": _weight(25.0),
               "cov_loss_weight": _weight(1.0)},
    "wmse": {"proj_output_dim": _dim(128), "proj_hidden_dim": _dim(1024),
             "whitening_iters": _count(1, 1), "whitening_size": _count(256, 2),
             "whitening_eps": _weight(0.0)},
}
# 1.0.2 methods whose queue must hold a whole number of (gathered) batches.
_QUEUE_DIVISIBLE = ("mocov2plus", "nnbyol", "nnclr", "nnsiam", "ressl")


# --------------------------------------------------------------------------------------------
# Schema helpers
# --------------------------------------------------------------------------------------------


def _opt(default: Any = MISSING, *, choices: Optional[Sequence[Any]] = None,
         low: Optional[float] = None, high: Optional[float] = None, open_low: bool = False,
         factory: Any = MISSING) -> Any:
    """A dataclass field whose metadata carries the checks of :func:`_convert`."""
    meta = {"choices": choices, "low": low, "high": high, "open_low": open_low}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _fail(key: str, value: Any, expected: str) -> None:
    raise ValueError(f"{key}={value!r} is invalid: expected {expected}.")


def _unknown(prefix: str, key: Any, names: Sequence[str], extra: str = "") -> None:
    full = f"{prefix}.{key}" if prefix else str(key)
    near = difflib.get_close_matches(str(key), list(names), n=1, cutoff=0.5)
    if near:
        hint = f" Did you mean {prefix + '.' if prefix else ''}{near[0]}?"
    else:
        hint = f" Valid keys: {', '.join(names)}."
    raise ValueError(f"Unknown config key {full}.{hint}{extra}")


def _check_number(key: str, value: Any, integer: bool, low: Optional[float],
                  high: Optional[float], open_low: bool) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        _fail(key, value, "an integer" if integer else "a number")
    if low is not None and (value <= low if open_low else value < low):
        _fail(key, value, f"a value {'>' if open_low else '>='} {low}"
              + ("" if high is None else f" and <= {high}"))
    if high is not None and value > high:
        _fail(key, value, f"a value <= {high}")
    return value if integer else float(value)


def _convert(tp: Any, value: Any, key: str, meta: Mapping[str, Any]) -> Any:
    """Check ``value`` against the annotation ``tp`` and the field metadata; return it converted."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union and type(None) in args:
        # Published solo-learn configs write ``None`` (a string in YAML) for "unset".
        if value is None or value == "None":
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0] if len(inner) == 1 else Union[tuple(inner)], value, key, meta)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            _fail(key, value, "a list")
        return tuple(_convert(args[0], item, f"{key}[{i}]", meta) for i, item in enumerate(value))
    choices = meta.get("choices")
    if choices is not None:
        if isinstance(value, bool) or value not in choices:
            _fail(key, value, "one of " + ", ".join(str(c) for c in choices))
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            _fail(key, value, "true or false")
        return value
    if tp in (int, float):
        return _check_number(key, value, tp is int, meta.get("low"), meta.get("high"),
                             meta.get("open_low", False))
    if tp is str:
        if not isinstance(value, str):
            _fail(key, value, "a string")
        return value
    if origin in (dict, Dict) or tp is dict:
        if not isinstance(value, Mapping):
            _fail(key, value, "a mapping")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug of this module


def _build(cls: type, data: Any, prefix: str, skip: Sequence[str] = ()) -> Any:
    """Build dataclass ``cls`` from a mapping, checking every key (nested keys under ``prefix``)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        _fail(prefix, data, "a mapping")
    names = [f.name for f in fields(cls) if f.name not in skip]
    for key in data:
        if key not in names:
            _unknown(prefix, key, names)
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data and data[f.name] != "???":
            values[f.name] = _convert(hints[f.name], data[f.name], key, f.metadata)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ValueError(f"{key} is required but missing.")
    return cls(**values)


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    """``backbone:``: a timm model (see :func:`solo_iclmsr.backbones.create_backbone`).

    Attributes:
        name: timm model name.
        cifar: build the CIFAR variant (3x3 stride-1 stem); ``None`` means "yes on CIFAR-10/100
            when the model has one", as solo-learn does for ResNets.
        kwargs: passed to ``timm.create_model`` (``drop_path_rate``, ``img_size``, ...).
    """

    name: str = "resnet18"
    cifar: Optional[bool] = None
    kwargs: Dict[str, Any] = _opt(factory=dict)


@dataclass(frozen=True, kw_only=True)
class MomentumConfig:
    """``momentum:`` of momentum methods (BYOL, DINO, MoCo v2+, NNBYOL, ReSSL)."""

    base_tau: float = _opt(0.99, low=0.0, high=1.0)
    final_tau: float = _opt(1.0, low=0.0, high=1.0)
    classifier: bool = False


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """``data:`` of pre-training.

    Attributes:
        dataset: one of :data:`DATASETS`; ``builtin`` is generated by this project (no path).
        train_path: folder of training images (required except for ``builtin``).
        val_path: folder of validation images; ``None`` skips validation.
        format: ``image_folder``, ``dali`` or ``h5``.
        num_workers: data-loader workers per process.
        fraction: fraction of the training set used, -1 for all of it.
        no_labels: the training folder has no class sub-folders.
        num_classes: number of classes; ``None`` takes the dataset's (custom: sub-folders).
        kwargs: free-form options of the dataset (for ``builtin``: its generator's settings).
        download: let torchvision download CIFAR-10/100 or STL-10 into ``train_path``.
        image_size: side of the images loaded on the CPU before the device augmentation;
            ``None`` takes the dataset's default.
    """

    dataset: str = _opt(choices=DATASETS)
    train_path: Optional[str] = None
    val_path: Optional[str] = None
    format: str = _opt("image_folder", choices=DATA_FORMATS)
    num_workers: int = _opt(4, low=0)
    fraction: float = -1.0
    no_labels: bool = False
    num_classes: Optional[int] = _opt(None, low=1)
    kwargs: Dict[str, Any] = _opt(factory=dict)
    download: bool = False
    image_size: Optional[int] = _opt(None, low=1)


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """``optimizer:``. ``lr`` and ``classifier_lr`` are per 256 images, scaled linearly by the
    global batch (``batch_size * devices * num_nodes / 256``) as solo-learn does."""

    name: str = _opt(choices=PRETRAIN_OPTIMIZERS)
    batch_size: int = _opt(256, low=1)
    lr: float = _opt(low=0.0, open_low=True)
    classifier_lr: float = _opt(0.1, low=0.0, open_low=True)
    weight_decay: float = _opt(0.0, low=0.0)
    kwargs: Dict[str, Any] = _opt(factory=dict)
    exclude_bias_n_norm_wd: bool = False


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """``scheduler:`` (defaults of solo-learn's newer releases)."""

    name: str = _opt("warmup_cosine", choices=PRETRAIN_SCHEDULERS)
    warmup_epochs: float = _opt(10, low=0.0)
    warmup_start_lr: float = _opt(3e-5, low=0.0)
    min_lr: float = _opt(0.0, low=0.0)
    lr_decay_steps: Optional[Tuple[int, ...]] = _opt(None, low=0)
    interval: str = _opt("step", choices=("step", "epoch"))


@dataclass(frozen=True, kw_only=True)
class RRCConfig:
    """Random resized crop; disabled, the image is resized to ``crop_size``."""

    enabled: bool = True
    crop_min_scale: float = _opt(0.08, low=0.0, high=1.0, open_low=True)
    crop_max_scale: float = _opt(1.0, low=0.0, high=1.0, open_low=True)


@dataclass(frozen=True, kw_only=True)
class ColorJitterConfig:
    """Colour jitter applied with probability ``prob``."""

    enabled: bool = True
    prob: float = _opt(0.0, low=0.0, high=1.0)
    brightness: float = _opt(0.0, low=0.0)
    contrast: float = _opt(0.0, low=0.0)
    saturation: float = _opt(0.0, low=0.0)
    hue: float = _opt(0.0, low=0.0, high=0.5)

    @property
    def p(self) -> float:
        """The probability in effect (0 when disabled)."""
        return self.prob if self.enabled else 0.0


@dataclass(frozen=True, kw_only=True)
class ProbConfig:
    """An augmentation with only a probability (grayscale, blur, solarization, ...)."""

    enabled: bool = True
    prob: float = _opt(0.0, low=0.0, high=1.0)

    @property
    def p(self) -> float:
        """The probability in effect (0 when disabled)."""
        return self.prob if self.enabled else 0.0


@dataclass(frozen=True, kw_only=True)
class AugmentationConfig:
    """One entry of ``augmentations:``: a pipeline and how many crops it makes per image.

    Crops whose ``crop_size`` equals the first pipeline's are large crops, the others small
    (multi-crop), as in solo-learn. ``mean``/``std`` override the dataset's normalisation.
    """

    crop_size: int = _opt(low=1)
    num_crops: int = _opt(low=1)
    rrc: RRCConfig = _opt(factory=RRCConfig)
    color_jitter: ColorJitterConfig = _opt(factory=ColorJitterConfig)
    grayscale: ProbConfig = _opt(factory=ProbConfig)
    gaussian_blur: ProbConfig = _opt(factory=ProbConfig)
    solarization: ProbConfig = _opt(factory=ProbConfig)
    equalization: ProbConfig = _opt(factory=ProbConfig)
    horizontal_flip: ProbConfig = _opt(factory=ProbConfig)
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = _opt(None, low=0.0, open_low=True)


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """``checkpoint:``: save every ``frequency`` epochs under ``dir``."""

    enabled: bool = False
    dir: str = "trained_models"
    frequency: int = _opt(1, low=1)
    keep_prev: bool = False


@dataclass(frozen=True, kw_only=True)
class AutoResumeConfig:
    """``auto_resume:``: resume the newest matching run younger than ``max_hours``."""

    enabled: bool = False
    max_hours: float = _opt(36, low=0.0)


@dataclass(frozen=True, kw_only=True)
class WandbConfig:
    """``wandb:`` logging."""

    enabled: bool = False
    entity: Optional[str] = None
    project: str = "solo-iclmsr"
    offline: bool = False


@dataclass(frozen=True, kw_only=True)
class KnnEvalConfig:
    """``knn_eval:``: online k-NN during pre-training (1.0.2 supports euclidean distance only)."""

    enabled: bool = False
    k: int = _opt(20, low=1)
    distance_func: str = _opt("euclidean", choices=("euclidean",))


@dataclass(frozen=True, kw_only=True)
class PerformanceConfig:
    """``performance:`` (read by the training glue; 1.0.2 has no channels-last conversion)."""

    disable_channel_last: bool = False


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """Lightning Trainer keys found at the top level of a config.

    Attributes:
        max_epochs: number of epochs (required for pre-training and linear evaluation).
        devices: ``int``, list of device ids, or ``"auto"``.
        accelerator: ``cpu``, ``gpu``, ``auto``, ...
        strategy: ``auto``, ``ddp``, ...
        precision: any Lightning precision (``32``, ``16-mixed``, ``bf16-mixed``, ...).
        num_nodes: number of machines.
        sync_batchnorm: convert BatchNorm to SyncBatchNorm under DDP.
        accumulate_grad_batches: gradient accumulation (solo-learn multiplies the lr by it).
        other: the remaining Trainer keys given in the config, unchecked.
    """

    max_epochs: Optional[int] = _opt(None, low=1)
    devices: Any = 1
    accelerator: str = "auto"
    strategy: str = "auto"
    precision: Any = _opt("32-true", choices=PRECISIONS)
    num_nodes: int = _opt(1, low=1)
    sync_batchnorm: bool = False
    accumulate_grad_batches: int = _opt(1, low=1)
    other: Dict[str, Any] = _opt(factory=dict)

    @property
    def num_devices(self) -> int:
        """Devices per node; ``"auto"`` and ``-1`` count as 1 (pass ``world_size`` to be exact)."""
        devices = self.devices
        if isinstance(devices, (list, tuple)):
            return len(devices)
        if isinstance(devices, str):
            if devices in ("auto", "-1"):
                return 1
            return len([d for d in devices.split(",") if d.strip()]) if "," in devices \
                else int(devices)
        return 1 if devices == -1 else int(devices)


def _check_devices(value: Any) -> Any:
    ok = (isinstance(value, int) and not isinstance(value, bool) and (value >= 1 or value == -1)) \
        or (isinstance(value, (list, tuple)) and value
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)) \
        or (isinstance(value, str) and (value in ("auto", "-1") or all(
            p.strip().isdigit() for p in value.split(",") if p.strip())))
    if not ok:
        _fail("devices", value, "a positive int, -1, a list of device ids or 'auto'")
    return list(value) if isinstance(value, (list, tuple)) else value


def _build_trainer(top: Mapping[str, Any]) -> TrainerConfig:
    typed = {f.name for f in fields(TrainerConfig)} - {"other"}
    given = {k: v for k, v in top.items() if k in typed}
    if "devices" in given:
        given["devices"] = _check_devices(given["devices"])
    if "accelerator" in given and not isinstance(given["accelerator"], str):
        _fail("accelerator", given["accelerator"], "a string")
    if "strategy" in given and given["strategy"] in (None, "None"):
        given["strategy"] = "auto"
    hints = typing.get_type_hints(TrainerConfig)
    values: Dict[str, Any] = {}
    for f in fields(TrainerConfig):
        if f.name in given and f.name not in ("devices", "accelerator"):
            values[f.name] = _convert(hints[f.name], given[f.name], f.name, f.metadata)
        elif f.name in given:
            values[f.name] = given[f.name]
    values["other"] = {k: v for k, v in top.items() if k in TRAINER_KEYS and k not in typed}
    return TrainerConfig(**values)


def _split_top(raw: Mapping[str, Any], cls: type) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Split a config's top level into (own keys of ``cls``, Trainer keys); unknown keys fail."""
    own_names = [f.name for f in fields(cls) if f.name != "trainer"]
    own, trainer = {}, {}
    for key, value in raw.items():
        if key in _IGNORED_TOP_LEVEL:
            continue
        if key in own_names:
            own[key] = value
        elif key in TRAINER_KEYS:
            trainer[key] = value
        else:
            _unknown("", key, own_names + list(TRAINER_KEYS))
    return own, trainer


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """A validated pre-training config (frozen; attribute access like the YAML).

    Derived values: :attr:`num_large_crops`, :attr:`num_small_crops`, :attr:`cifar`,
    :attr:`world_size`.
    """

    method: str = _opt(choices=METHODS)
    name: Optional[str] = None
    seed: int = 5
    resume_from_checkpoint: Optional[str] = None
    debug_augmentations: bool = False
    backbone: BackboneConfig = _opt(factory=BackboneConfig)
    method_kwargs: Dict[str, Any] = _opt(factory=dict)
    momentum: Optional[MomentumConfig] = None
    data: DataConfig = _opt()
    optimizer: OptimizerConfig = _opt()
    scheduler: SchedulerConfig = _opt(factory=SchedulerConfig)
    augmentations: Tuple[AugmentationConfig, ...] = _opt()
    checkpoint: CheckpointConfig = _opt(factory=CheckpointConfig)
    auto_resume: AutoResumeConfig = _opt(factory=AutoResumeConfig)
    wandb: WandbConfig = _opt(factory=WandbConfig)
    knn_eval: KnnEvalConfig = _opt(factory=KnnEvalConfig)
    performance: PerformanceConfig = _opt(factory=PerformanceConfig)
    iclmsr: ICLMSROptions = _opt(factory=ICLMSROptions)
    trainer: TrainerConfig = _opt(factory=TrainerConfig)

    @property
    def num_large_crops(self) -> int:
        """Crops of the first pipeline's size (solo-learn's rule)."""
        big = self.augmentations[0].crop_size
        return sum(a.num_crops for a in self.augmentations if a.crop_size == big)

    @property
    def num_small_crops(self) -> int:
        """Crops of any other size (multi-crop)."""
        return sum(a.num_crops for a in self.augmentations) - self.num_large_crops

    @property
    def cifar(self) -> bool:
        """Whether the backbone's CIFAR variant is built (``backbone.cifar`` resolved)."""
        return _resolve_cifar(self.backbone, self.data.dataset)

    @property
    def world_size(self) -> int:
        """Processes of a run: devices per node times nodes."""
        return self.trainer.num_devices * self.trainer.num_nodes

    @property
    def run_name(self) -> str:
        """``name``, or ``<method>-<dataset>`` when unset."""
        return self.name or f"{self.method}-{self.data.dataset}"


# --------------------------------------------------------------------------------------------
# Validation of pre-training configs
# --------------------------------------------------------------------------------------------


def _plain(cfg: Any) -> Any:
    """A plain (dict/list) copy of a mapping or DictConfig, interpolations resolved."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True) if cfg is not None else {}


def _resolve_cifar(backbone: BackboneConfig, dataset: str) -> bool:
    if backbone.cifar is not None:
        return backbone.cifar
    if dataset not in CIFAR_DATASETS:
        return False
    from solo_iclmsr.backbones import supports_cifar_stem

    return supports_cifar_stem(backbone.name)


def _check_backbone(backbone: BackboneConfig, dataset: str) -> None:
    from solo_iclmsr.backbones import supports_cifar_stem

    if not isinstance(backbone.name, str) or not backbone.name:
        _fail("backbone.name", backbone.name, "a timm model name")
    supported = supports_cifar_stem(backbone.name)  # unknown names fail here, with suggestions
    if backbone.cifar and not supported:
        raise ValueError(f"backbone.cifar=true is not defined for backbone.name="
                         f"{backbone.name!r}: only timm ResNets and plain ViTs have a CIFAR variant.")
    if "num_classes" in backbone.kwargs:
        raise ValueError("backbone.kwargs.num_classes is not allowed: backbones are built "
                         "without classifier (num_classes=0).")


def _check_data(data: DataConfig) -> None:
    if data.dataset != "builtin" and not data.train_path:
        raise ValueError(f"data.train_path is required for data.dataset={data.dataset!r}.")
    if not (data.fraction == -1 or 0.0 < data.fraction <= 1.0):
        _fail("data.fraction", data.fraction, "-1 (all data) or a value in (0, 1]")
    if data.format == "dali" and data.dataset not in DALI_DATASETS:
        _fail("data.format", data.format, f"image_folder or h5 for {data.dataset} "
              f"(dali supports {', '.join(DALI_DATASETS)})")


def _resolve_optimizer_kwargs(name: str, given: Mapping[str, Any], prefix: str,
                              allowed: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    allowed = dict(OPTIMIZER_KWARGS[name] if allowed is None else allowed)
    out = dict(allowed)
    for key, value in given.items():
        if key not in allowed:
            _unknown(f"{prefix}.kwargs", key, list(allowed), f" ({prefix}.name={name})")
        default = allowed[key]
        full = f"{prefix}.kwargs.{key}"
        if isinstance(default, bool):
            out[key] = _convert(bool, value, full, {})
        elif isinstance(default, tuple):
            out[key] = tuple(_convert(Tuple[float, ...], value, full, {"low": 0.0, "high": 1.0}))
        else:
            out[key] = _check_number(full, value, False, 0.0, None, False)
    return out


def _check_scheduler(scheduler: SchedulerConfig, max_epochs: Optional[int]) -> None:
    if scheduler.name == "step" and not scheduler.lr_decay_steps:
        raise ValueError("scheduler.lr_decay_steps is required when scheduler.name=step.")
    if (scheduler.name == "warmup_cosine" and max_epochs is not None
            and scheduler.warmup_epochs >= max_epochs):
        _fail("scheduler.warmup_epochs", scheduler.warmup_epochs,
              f"fewer warm-up epochs than max_epochs={max_epochs}")


def _check_augmentations(augs: Tuple[AugmentationConfig, ...]) -> None:
    if not augs:
        raise ValueError("augmentations must list at least one pipeline.")
    for i, aug in enumerate(augs):
        if aug.rrc.crop_min_scale > aug.rrc.crop_max_scale:
            _fail(f"augmentations[{i}].rrc.crop_min_scale", aug.rrc.crop_min_scale,
                  f"a value <= crop_max_scale={aug.rrc.crop_max_scale}")
        for key in ("mean", "std"):
            value = getattr(aug, key)
            if value is not None and len(value) != 3:
                _fail(f"augmentations[{i}].{key}", value, "three values (R, G, B)")
    if sum(a.num_crops for a in augs) < 2:
        raise ValueError("augmentations make fewer than 2 crops per image: every method needs "
                         "at least two views (raise augmentations[0].num_crops).")


def method_arguments(method: str) -> Dict[str, MethodArg]:
    """The constructor arguments of a solo-learn 1.0.2 method (see :data:`METHOD_ARGS`).

    Raises:
        ValueError: unknown method, listing the valid names.
    """
    if method not in METHOD_ARGS:
        near = difflib.get_close_matches(str(method), METHODS, n=1)
        hint = f" Did you mean {near[0]}?" if near else ""
        raise ValueError(f"method={method!r} is invalid: expected one of {', '.join(METHODS)}."
                         + hint)
    return METHOD_ARGS[method]


def _resolve_method_kwargs(method: str, given: Mapping[str, Any]) -> Dict[str, Any]:
    spec = method_arguments(method)
    out = {name: (list(arg.default) if arg.kind == "int_list" else arg.default)
           for name, arg in spec.items()}
    for key, value in given.items():
        full = f"method_kwargs.{key}"
        if key not in spec:
            users = [m for m in METHODS if key in METHOD_ARGS[m]]
            extra = f" ({key} is an argument of {', '.join(users)}, not of {method})" if users \
                else ""
            _unknown("method_kwargs", key, list(spec), extra)
        arg = spec[key]
        if arg.kind == "bool":
            out[key] = _convert(bool, value, full, {})
        elif arg.kind == "int_list":
            out[key] = list(_convert(Tuple[int, ...], value, full, {"low": arg.low}))
            if not out[key]:
                _fail(full, value, "a non-empty list of integers")
        else:
            out[key] = _check_number(full, value, arg.kind == "int", arg.low, None, arg.open_low)
    return out


def validate_pretrain(raw: Union[Mapping[str, Any], DictConfig]) -> PretrainConfig:
    """Validate a composed pre-training config and fill in every default.

    Args:
        raw: the composed mapping (see :func:`compose`).

    Returns:
        The frozen :class:`PretrainConfig`; ``method_kwargs`` holds every argument of the method
        (defaults filled), ``optimizer.kwargs`` every optimizer option.

    Raises:
        ValueError: one line naming the offending key.
    """
    raw = _plain(raw)
    if not isinstance(raw, Mapping):
        _fail("<config>", raw, "a mapping at the top level")
    own, top_trainer = _split_top(raw, PretrainConfig)
    method = own.get("method", "???")
    if method == "???":
        raise ValueError(f"method is required but missing: one of {', '.join(METHODS)}.")
    method_arguments(method)  # unknown methods fail with the list of valid names
    momentum = own.pop("momentum", None)
    iclmsr = own.pop("iclmsr", None)
    method_kwargs = own.pop("method_kwargs", None) or {}
    if not isinstance(method_kwargs, Mapping):
        _fail("method_kwargs", method_kwargs, "a mapping")
    cfg = _build(PretrainConfig, own, "", skip=("momentum", "iclmsr", "method_kwargs", "trainer"))
    trainer = _build_trainer(top_trainer)
    if trainer.max_epochs is None:
        raise ValueError("max_epochs is required but missing.")
    if method in MOMENTUM_METHODS:
        momentum_cfg: Optional[MomentumConfig] = _build(MomentumConfig, momentum, "momentum")
        if momentum_cfg.base_tau > momentum_cfg.final_tau:
            _fail("momentum.base_tau", momentum_cfg.base_tau,
                  f"a value <= momentum.final_tau={momentum_cfg.final_tau}")
    elif momentum:
        raise ValueError(f"momentum is set but method={method} has no momentum encoder; remove "
                         f"it (momentum methods: {', '.join(MOMENTUM_METHODS)}).")
    else:
        momentum_cfg = None
    _check_backbone(cfg.backbone, cfg.data.dataset)
    _check_data(cfg.data)
    _check_scheduler(cfg.scheduler, trainer.max_epochs)
    _check_augmentations(cfg.augmentations)
    opt_kwargs = _resolve_optimizer_kwargs(cfg.optimizer.name, cfg.optimizer.kwargs, "optimizer")
    resolved_mk = _resolve_method_kwargs(method, method_kwargs)
    cfg = dataclasses.replace(
        cfg,
        method_kwargs=resolved_mk,
        momentum=momentum_cfg,
        optimizer=dataclasses.replace(cfg.optimizer, kwargs=opt_kwargs),
        iclmsr=ICLMSROptions.from_mapping(iclmsr, prefix="iclmsr"),
        trainer=trainer,
    )
    _check_method_constraints(cfg)
    return cfg


def _check_method_constraints(cfg: PretrainConfig) -> None:
    """Cross-checks of 1.0.2 methods that would otherwise fail as bare asserts mid-training."""
    mk = cfg.method_kwargs
    global_batch = cfg.optimizer.batch_size * cfg.world_size
    if cfg.method in _QUEUE_DIVISIBLE and mk["queue_size"] % global_batch:
        _fail("method_kwargs.queue_size", mk["queue_size"],
              f"a multiple of the global batch {global_batch} (optimizer.batch_size x devices x "
              "num_nodes); solo-learn 1.0.2 asserts it when filling the queue")
    if cfg.method == "wmse" and mk["whitening_size"] > cfg.optimizer.batch_size:
        _fail("method_kwargs.whitening_size", mk["whitening_size"],
              f"a value <= optimizer.batch_size={cfg.optimizer.batch_size}")
    if cfg.method == "dino" and mk["warmup_teacher_temperature_epochs"] > cfg.trainer.max_epochs:
        _fail("method_kwargs.warmup_teacher_temperature_epochs",
              mk["warmup_teacher_temperature_epochs"],
              f"a value <= max_epochs={cfg.trainer.max_epochs} (1.0.2 builds its temperature "
              "schedule with max_epochs - warm-up epochs entries)")
    if cfg.method == "swav" and mk["queue_size"] and \
            mk["queue_size"] // cfg.world_size < cfg.optimizer.batch_size:
        _fail("method_kwargs.queue_size", mk["queue_size"],
              f"0 or at least optimizer.batch_size x processes = {global_batch} (each process "
              "holds queue_size / processes features and shifts it by one batch)")


# --------------------------------------------------------------------------------------------
# Translation to solo-learn 1.0.2
# --------------------------------------------------------------------------------------------


def resolve_num_classes(dataset: str, num_classes: Optional[int], train_path: Optional[str],
                        no_labels: bool = False) -> int:
    """Number of classes: explicit, from the dataset table, or counted as solo-learn does.

    Raises:
        ValueError: a custom dataset without ``data.num_classes`` whose ``train_path`` is absent.
    """
    if num_classes is not None:
        return num_classes
    if dataset in NUM_CLASSES:
        return NUM_CLASSES[dataset]
    if no_labels:
        return 1
    if not train_path or not os.path.isdir(train_path):
        raise ValueError(f"data.num_classes is required: data.train_path={train_path!r} is not a "
                         "folder whose sub-folders could be counted.")
    return max(1, sum(entry.is_dir() for entry in os.scandir(train_path)))


def backbone_spec(backbone: BackboneConfig, dataset: str, crop_size: Optional[int] = None
                  ) -> Dict[str, Any]:
    """Arguments of :func:`solo_iclmsr.backbones.create_backbone` for a config's backbone.

    Plain ViTs get ``img_size=crop_size`` unless ``backbone.kwargs`` sets it (solo-learn does the
    same); on CIFAR their CIFAR variant already sets 32.

    Returns:
        ``{"name": str, "cifar": bool, **kwargs}``.
    """
    from solo_iclmsr.backbones import is_vit_like

    cifar = _resolve_cifar(backbone, dataset)
    kwargs = dict(backbone.kwargs)
    if crop_size is not None and not cifar and "img_size" not in kwargs \
            and is_vit_like(backbone.name):
        kwargs["img_size"] = crop_size
    return {"name": backbone.name, "cifar": cifar, **kwargs}


def _lr_scale(batch_size: int, world_size: int) -> float:
    return batch_size * world_size / 256


def _optimizer_kwargs(name: str, kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """1.0.2's optimizer/lars/eta_lars/grad_clip_lars/exclude_bias_n_norm/extra_optimizer_args."""
    if name == "lars":
        extra = {"momentum": kwargs["momentum"]}
        if kwargs.get("nesterov"):
            extra["nesterov"] = True
        return {"optimizer": "sgd", "lars": True, "eta_lars": kwargs.get("eta", 1e-3),
                "grad_clip_lars": kwargs.get("clip_lr", False),
                "exclude_bias_n_norm": kwargs.get("exclude_bias_n_norm", False),
                "extra_optimizer_args": extra}
    extra = {key: (list(v) if isinstance(v, tuple) else v) for key, v in kwargs.items()}
    if name == "sgd":
        extra = {k: v for k, v in extra.items() if not (k in ("nesterov", "dampening") and not v)}
    return {"optimizer": name, "lars": False, "eta_lars": 1e-3, "grad_clip_lars": False,
            "exclude_bias_n_norm": False, "extra_optimizer_args": extra}


def to_method_kwargs(cfg: PretrainConfig, world_size: Optional[int] = None) -> Dict[str, Any]:
    """Keyword arguments of the solo-learn 1.0.2 constructor ``METHODS[cfg.method](**kwargs)``.

    Args:
        cfg: a validated config.
        world_size: number of processes, if known better than ``devices x num_nodes`` (e.g. with
            ``devices: auto``); it scales the learning rates.

    The backbone is a timm model: ``encoder`` is its timm name and ``backbone_args`` is
    ``{"cifar": bool, **timm_kwargs}``, i.e. the arguments of
    :func:`solo_iclmsr.backbones.create_backbone` besides the name. Unpatched 1.0.2 builds only
    its own ``resnet18``/``resnet50``/ViT/Swin names; the project's method variants build the
    encoder from these two values (``TimmBackboneMixin``).

    Returns:
        Every BaseMethod argument (``encoder``, ``num_classes``, ``backbone_args``, ``max_epochs``,
        ``batch_size``, ``optimizer``, ``lars``, ``lr``, ``weight_decay``, ``classifier_lr``,
        ``exclude_bias_n_norm``, ``accumulate_grad_batches``, ``extra_optimizer_args``,
        ``scheduler``, ``min_lr``, ``warmup_start_lr``, ``warmup_epochs``, ``num_large_crops``,
        ``num_small_crops``, ``eta_lars``, ``grad_clip_lars``, ``lr_decay_steps``, ``knn_eval``,
        ``knn_k``), the momentum arguments (``base_tau_momentum``, ``final_tau_momentum``,
        ``momentum_classifier``) for momentum methods, every argument of the method itself, and
        :data:`EXTRA_METHOD_KWARGS` (kept by BaseMethod in ``extra_args``): ``timm_backbone``
        (the :func:`create_backbone` arguments of the real backbone), ``dataset``,
        ``scheduler_interval``, ``exclude_bias_n_norm_wd`` and ``iclmsr`` (the options object).

    Note:
        ``lr`` and ``classifier_lr`` are scaled by ``batch_size * world_size / 256`` (solo-learn
        scales ``classifier_lr`` only when a validation set is given; the online classifier is
        only read then). 1.0.2's BaseMethod further multiplies all rates by
        ``accumulate_grad_batches``. ``min_lr`` and ``warmup_start_lr`` are not batch-scaled.
    """
    world = cfg.world_size if world_size is None else world_size
    scale = _lr_scale(cfg.optimizer.batch_size, world)
    spec = backbone_spec(cfg.backbone, cfg.data.dataset, cfg.augmentations[0].crop_size)
    kwargs: Dict[str, Any] = {
        "encoder": cfg.backbone.name,
        "num_classes": resolve_num_classes(cfg.data.dataset, cfg.data.num_classes,
                                           cfg.data.train_path, cfg.data.no_labels),
        "backbone_args": {k: v for k, v in spec.items() if k != "name"},
        "max_epochs": cfg.trainer.max_epochs,
        "batch_size": cfg.optimizer.batch_size,
        "lr": cfg.optimizer.lr * scale,
        "weight_decay": cfg.optimizer.weight_decay,
        "classifier_lr": cfg.optimizer.classifier_lr * scale,
        "accumulate_grad_batches": cfg.trainer.accumulate_grad_batches,
        "scheduler": cfg.scheduler.name,
        "min_lr": cfg.scheduler.min_lr,
        "warmup_start_lr": cfg.scheduler.warmup_start_lr,
        "warmup_epochs": cfg.scheduler.warmup_epochs,
        "lr_decay_steps": list(cfg.scheduler.lr_decay_steps) if cfg.scheduler.lr_decay_steps
        else None,
        "num_large_crops": cfg.num_large_crops,
        "num_small_crops": cfg.num_small_crops,
        "knn_eval": cfg.knn_eval.enabled,
        "knn_k": cfg.knn_eval.k,
    }
    kwargs.update(_optimizer_kwargs(cfg.optimizer.name, cfg.optimizer.kwargs))
    if cfg.momentum is not None:
        kwargs.update(base_tau_momentum=cfg.momentum.base_tau,
                      final_tau_momentum=cfg.momentum.final_tau,
                      momentum_classifier=cfg.momentum.classifier)
    kwargs.update(cfg.method_kwargs)
    kwargs.update(timm_backbone=spec, dataset=cfg.data.dataset,
                  scheduler_interval=cfg.scheduler.interval,
                  exclude_bias_n_norm_wd=cfg.optimizer.exclude_bias_n_norm_wd,
                  iclmsr=cfg.iclmsr)
    return kwargs


def trainer_kwargs(cfg: Union[PretrainConfig, "LinearConfig", "KnnConfig"]) -> Dict[str, Any]:
    """Lightning ``Trainer`` keyword arguments from the config's top-level Trainer keys.

    Returns every typed key (``max_epochs`` when set, ``devices``, ``accelerator``, ``strategy``,
    ``precision``, ``num_nodes``, ``sync_batchnorm``, ``accumulate_grad_batches``) plus any other
    Trainer key the config gives. The glue adds ``logger``, ``callbacks`` and
    ``enable_checkpointing`` (solo-learn passes False and checkpoints with its own callback).
    """
    t = cfg.trainer
    out: Dict[str, Any] = {"devices": t.devices, "accelerator": t.accelerator,
                           "strategy": t.strategy, "precision": t.precision,
                           "num_nodes": t.num_nodes, "sync_batchnorm": t.sync_batchnorm,
                           "accumulate_grad_batches": t.accumulate_grad_batches}
    if t.max_epochs is not None:
        out["max_epochs"] = t.max_epochs
    out.update(t.other)
    return out


def solo_transform_kwargs(cfg: PretrainConfig) -> Tuple[List[Dict[str, Any]], List[int]]:
    """The augmentations as solo-learn 1.0.2's ``prepare_transform`` kwargs and crop counts.

    Returns:
        (one kwargs dict per pipeline for ``prepare_transform(dataset, **kwargs)``,
        ``num_crops_per_aug``). For ``custom`` each dict also has ``mean``/``std``.

    Raises:
        ValueError: an option 1.0.2's transforms lack (equalization, disabled random crop).
    """
    out = []
    for i, aug in enumerate(cfg.augmentations):
        if aug.equalization.p:
            _fail(f"augmentations[{i}].equalization.prob", aug.equalization.prob,
                  "0 (solo-learn 1.0.2's transforms have no equalization)")
        if not aug.rrc.enabled:
            _fail(f"augmentations[{i}].rrc.enabled", False,
                  "true (solo-learn 1.0.2's transforms always crop)")
        kw = dict(brightness=aug.color_jitter.brightness, contrast=aug.color_jitter.contrast,
                  saturation=aug.color_jitter.saturation, hue=aug.color_jitter.hue,
                  color_jitter_prob=aug.color_jitter.p, gray_scale_prob=aug.grayscale.p,
                  horizontal_flip_prob=aug.horizontal_flip.p, gaussian_prob=aug.gaussian_blur.p,
                  solarization_prob=aug.solarization.p, min_scale=aug.rrc.crop_min_scale,
                  max_scale=aug.rrc.crop_max_scale, crop_size=aug.crop_size)
        if cfg.data.dataset == "custom":
            mean, std = dataset_mean_std("custom", aug.mean, aug.std)
            kw.update(mean=list(mean), std=list(std))
        out.append(kw)
    return out, [aug.num_crops for aug in cfg.augmentations]


# --------------------------------------------------------------------------------------------
# Linear evaluation and k-NN configs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EvalAugmentationConfig:
    """``data.augmentations:`` of evaluation: resize/crop size and normalisation."""

    crop_size: Optional[int] = _opt(None, low=1)
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = _opt(None, low=0.0, open_low=True)


@dataclass(frozen=True, kw_only=True)
class EvalDataConfig:
    """``data:`` of linear evaluation and k-NN (train and validation folders)."""

    dataset: str = _opt(choices=DATASETS)
    train_path: Optional[str] = None
    val_path: Optional[str] = None
    format: str = _opt("image_folder", choices=DATA_FORMATS)
    num_workers: int = _opt(4, low=0)
    fraction: float = -1.0
    num_classes: Optional[int] = _opt(None, low=1)
    augmentations: EvalAugmentationConfig = _opt(factory=EvalAugmentationConfig)
    kwargs: Dict[str, Any] = _opt(factory=dict)
    download: bool = False

    @property
    def crop_size(self) -> int:
        """``augmentations.crop_size`` or the dataset's native size."""
        return self.augmentations.crop_size or CROP_SIZES[self.dataset]


@dataclass(frozen=True, kw_only=True)
class LinearOptimizerConfig:
    """``optimizer:`` of linear evaluation (lr per 256 images, scaled like pre-training)."""

    name: str = _opt(choices=LINEAR_OPTIMIZERS)
    batch_size: int = _opt(256, low=1)
    lr: float = _opt(low=0.0, open_low=True)
    weight_decay: float = _opt(0.0, low=0.0)
    kwargs: Dict[str, Any] = _opt(factory=dict)
    exclude_bias_n_norm_wd: bool = False


@dataclass(frozen=True, kw_only=True)
class LinearSchedulerConfig:
    """``scheduler:`` of linear evaluation."""

    name: str = _opt("step", choices=LINEAR_SCHEDULERS)
    lr_decay_steps: Optional[Tuple[int, ...]] = _opt(None, low=0)
    warmup_epochs: float = _opt(10, low=0.0)
    warmup_start_lr: float = _opt(3e-5, low=0.0)
    min_lr: float = _opt(0.0, low=0.0)
    interval: str = _opt("step", choices=("step", "epoch"))


@dataclass(frozen=True, kw_only=True)
class LinearConfig:
    """A validated linear-evaluation config: a frozen backbone and a linear classifier.

    Attributes:
        pretrained_feature_extractor: checkpoint of the pre-trained run (required to run, may be
            left ``null`` in a file and given as an override).
        pretrain_method: method of that run (informative).
    """

    name: Optional[str] = None
    pretrained_feature_extractor: Optional[str] = None
    pretrain_method: Optional[str] = _opt(None, choices=METHODS)
    seed: int = 5
    resume_from_checkpoint: Optional[str] = None
    backbone: BackboneConfig = _opt(factory=BackboneConfig)
    data: EvalDataConfig = _opt()
    optimizer: LinearOptimizerConfig = _opt()
    scheduler: LinearSchedulerConfig = _opt(factory=LinearSchedulerConfig)
    checkpoint: CheckpointConfig = _opt(factory=CheckpointConfig)
    auto_resume: AutoResumeConfig = _opt(factory=AutoResumeConfig)
    wandb: WandbConfig = _opt(factory=WandbConfig)
    performance: PerformanceConfig = _opt(factory=PerformanceConfig)
    trainer: TrainerConfig = _opt(factory=TrainerConfig)

    @property
    def world_size(self) -> int:
        """Processes of a run: devices per node times nodes."""
        return self.trainer.num_devices * self.trainer.num_nodes


def _check_eval_data(data: EvalDataConfig, need_val: bool = True) -> None:
    if data.dataset != "builtin":
        for key in ("train_path", "val_path") if need_val else ("train_path",):
            if not getattr(data, key):
                raise ValueError(f"data.{key} is required for data.dataset={data.dataset!r}.")
    if not (data.fraction == -1 or 0.0 < data.fraction <= 1.0):
        _fail("data.fraction", data.fraction, "-1 (all data) or a value in (0, 1]")
    if data.format == "dali" and data.dataset not in DALI_DATASETS:
        _fail("data.format", data.format, f"image_folder or h5 for {data.dataset}")


def validate_linear(raw: Union[Mapping[str, Any], DictConfig]) -> LinearConfig:
    """Validate a composed linear-evaluation config (see :func:`validate_pretrain`)."""
    raw = _plain(raw)
    own, top_trainer = _split_top(raw, LinearConfig)
    cfg = _build(LinearConfig, own, "", skip=("trainer",))
    trainer = _build_trainer(top_trainer)
    if trainer.max_epochs is None:
        raise ValueError("max_epochs is required but missing.")
    _check_backbone(cfg.backbone, cfg.data.dataset)
    _check_eval_data(cfg.data)
    _check_scheduler(cfg.scheduler, trainer.max_epochs)  # type: ignore[arg-type]
    allowed = {"momentum": 0.9, "exclude_bias_n_norm": False} if cfg.optimizer.name == "lars" \
        else None
    opt_kwargs = _resolve_optimizer_kwargs(cfg.optimizer.name, cfg.optimizer.kwargs, "optimizer",
                                           allowed)
    return dataclasses.replace(cfg, optimizer=dataclasses.replace(cfg.optimizer, kwargs=opt_kwargs),
                               trainer=trainer)


def to_linear_kwargs(cfg: LinearConfig, world_size: Optional[int] = None) -> Dict[str, Any]:
    """Keyword arguments of solo-learn 1.0.2's ``LinearModel`` except ``backbone``.

    The glue builds ``backbone`` with ``create_backbone(**kwargs["timm_backbone"])`` and loads
    ``cfg.pretrained_feature_extractor`` into it. Returns ``num_classes``, ``max_epochs``,
    ``batch_size``, ``optimizer``, ``lars``, ``lr`` (batch-scaled), ``weight_decay``,
    ``exclude_bias_n_norm``, ``extra_optimizer_args``, ``scheduler``, ``lr_decay_steps``, and the
    extras ``timm_backbone``, ``dataset``, ``crop_size``, ``mean``, ``std``, ``min_lr``,
    ``warmup_start_lr``, ``warmup_epochs``, ``scheduler_interval`` (1.0.2 keeps extras in
    ``extra_args``; its warmup_cosine uses a fixed 10-epoch warm-up).
    """
    world = cfg.world_size if world_size is None else world_size
    opt = _optimizer_kwargs(cfg.optimizer.name, cfg.optimizer.kwargs)
    mean, std = dataset_mean_std(cfg.data.dataset, cfg.data.augmentations.mean,
                                 cfg.data.augmentations.std)
    return {
        "num_classes": resolve_num_classes(cfg.data.dataset, cfg.data.num_classes,
                                           cfg.data.train_path),
        "max_epochs": cfg.trainer.max_epochs,
        "batch_size": cfg.optimizer.batch_size,
        "optimizer": opt["optimizer"],
        "lars": opt["lars"],
        "lr": cfg.optimizer.lr * _lr_scale(cfg.optimizer.batch_size, world),
        "weight_decay": cfg.optimizer.weight_decay,
        "exclude_bias_n_norm": opt["exclude_bias_n_norm"],
        "extra_optimizer_args": opt["extra_optimizer_args"],
        "scheduler": cfg.scheduler.name,
        "lr_decay_steps": list(cfg.scheduler.lr_decay_steps) if cfg.scheduler.lr_decay_steps
        else None,
        "timm_backbone": backbone_spec(cfg.backbone, cfg.data.dataset, cfg.data.crop_size),
        "dataset": cfg.data.dataset,
        "crop_size": cfg.data.crop_size,
        "mean": list(mean),
        "std": list(std),
        "min_lr": cfg.scheduler.min_lr,
        "warmup_start_lr": cfg.scheduler.warmup_start_lr,
        "warmup_epochs": cfg.scheduler.warmup_epochs,
        "scheduler_interval": cfg.scheduler.interval,
    }


@dataclass(frozen=True, kw_only=True)
class KnnOptionsConfig:
    """``knn:``: the grid of offline k-NN evaluations (solo-learn's ``main_knn`` options)."""

    k: Tuple[int, ...] = _opt((5, 20, 200), low=1)
    temperature: Tuple[float, ...] = _opt((0.07,), low=0.0, open_low=True)
    distance_function: Tuple[str, ...] = _opt(("cosine", "euclidean"),
                                              choices=("cosine", "euclidean"))
    feature_type: Tuple[str, ...] = _opt(("backbone",), choices=("backbone", "projector"))
    batch_size: int = _opt(256, low=1)


@dataclass(frozen=True, kw_only=True)
class KnnConfig:
    """A validated offline k-NN config (features of a frozen pre-trained backbone)."""

    name: Optional[str] = None
    pretrained_feature_extractor: Optional[str] = None
    seed: int = 5
    backbone: BackboneConfig = _opt(factory=BackboneConfig)
    data: EvalDataConfig = _opt()
    knn: KnnOptionsConfig = _opt(factory=KnnOptionsConfig)
    trainer: TrainerConfig = _opt(factory=TrainerConfig)


def validate_knn(raw: Union[Mapping[str, Any], DictConfig]) -> KnnConfig:
    """Validate a composed k-NN config (see :func:`validate_pretrain`)."""
    raw = _plain(raw)
    own, top_trainer = _split_top(raw, KnnConfig)
    cfg = _build(KnnConfig, own, "", skip=("trainer",))
    _check_backbone(cfg.backbone, cfg.data.dataset)
    _check_eval_data(cfg.data)
    return dataclasses.replace(cfg, trainer=_build_trainer(top_trainer))


# --------------------------------------------------------------------------------------------
# Loading: YAML + defaults list + overrides
# --------------------------------------------------------------------------------------------


def _yaml_name(option: str) -> str:
    return option if option.endswith((".yaml", ".yml")) else f"{option}.yaml"


def _defaults_entries(defaults: Any, path: Path) -> List[Tuple[Optional[str], Optional[str]]]:
    """(group, option) pairs of a defaults list; (None, name) merges a file at the root."""
    if not isinstance(defaults, (list, tuple)):
        _fail(f"defaults (in {path.name})", defaults, "a list")
    entries: List[Tuple[Optional[str], Optional[str]]] = []
    for entry in defaults:
        if entry == "_self_":
            entries.append(("_self_", None))
        elif isinstance(entry, str):
            entries.append((None, entry))
        elif isinstance(entry, Mapping) and len(entry) == 1:
            (group, option), = entry.items()
            group = str(group)
            for prefix in ("override ", "optional "):
                if group.startswith(prefix):
                    group = group[len(prefix):]
            if group.startswith("hydra/") or option is None:
                continue
            entries.append((group, str(option)))
        else:
            _fail(f"defaults (in {path.name})", entry, "'_self_', a name or a {group: option}")
    return entries


def _compose_file(path: Path, choices: Mapping[str, str]) -> Any:
    if not path.is_file():
        raise ValueError(f"Config file not found: {path}")
    loaded = OmegaConf.load(path)
    if not isinstance(loaded, DictConfig) or "defaults" not in loaded:
        return loaded
    entries = _defaults_entries(OmegaConf.to_container(loaded.defaults), path)
    body = OmegaConf.create({k: v for k, v in loaded.items_ex(resolve=False) if k != "defaults"})
    parts: List[Any] = []
    if ("_self_", None) not in entries:
        entries.append(("_self_", None))  # Hydra >= 1.1: the file itself overrides its defaults
    for group, option in entries:
        if group == "_self_":
            parts.append(body)
        elif group is None:
            parts.append(_compose_file(path.parent / _yaml_name(option), {}))
        else:
            option = choices.get(group, option)
            sub = _compose_file(path.parent / group / _yaml_name(option), {})
            node: Any = sub
            for key in reversed(group.split("/")):
                node = {key: node}
            parts.append(OmegaConf.create(node))
    return OmegaConf.merge(*parts)


def _parse_value(text: str) -> Any:
    return OmegaConf.from_dotlist([f"v={text}"])["v"]


def compose(path: Union[str, os.PathLike], overrides: Sequence[str] = ()) -> DictConfig:
    """Read a YAML config, resolve its ``defaults:`` list, apply ``key=value`` overrides.

    Args:
        path: the config file.
        overrides: ``key=value`` (``+key=value`` too), ``~key`` to delete, or ``group=option``
            to pick another option of a defaults group (e.g. ``augmentations=asymmetric``).

    Returns:
        The composed, unvalidated DictConfig.

    Raises:
        ValueError: a malformed override or a missing file.
    """
    path = Path(path)
    groups: Dict[str, str] = {}
    if path.is_file():
        head = OmegaConf.load(path)
        if isinstance(head, DictConfig) and "defaults" in head:
            groups = {g: o for g, o in _defaults_entries(OmegaConf.to_container(head.defaults), path)
                      if g not in (None, "_self_")}
    choices: Dict[str, str] = {}
    edits: List[Tuple[str, str, Any]] = []
    for text in overrides:
        if text.startswith("~"):
            edits.append(("delete", text[1:].split("=", 1)[0], None))
            continue
        if "=" not in text:
            raise ValueError(f"Override {text!r} is invalid: expected key=value.")
        key, value = text.split("=", 1)
        key = key.lstrip("+").strip()
        if key in groups and (path.parent / key / _yaml_name(value)).is_file():
            choices[key] = value
        else:
            edits.append(("set", key, _parse_value(value)))
    cfg = _compose_file(path, choices)
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{path} must hold a mapping at its top level.")
    for action, key, value in edits:
        if action == "delete":
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if isinstance(node, DictConfig) and leaf in node:
                del node[leaf]
        else:
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    return cfg


def load_pretrain_config(path: Union[str, os.PathLike], overrides: Sequence[str] = ()
                         ) -> PretrainConfig:
    """:func:`compose` then :func:`validate_pretrain`."""
    return validate_pretrain(compose(path, overrides))


def load_linear_config(path: Union[str, os.PathLike], overrides: Sequence[str] = ()
                       ) -> LinearConfig:
    """:func:`compose` then :func:`validate_linear`."""
    return validate_linear(compose(path, overrides))


def load_knn_config(path: Union[str, os.PathLike], overrides: Sequence[str] = ()) -> KnnConfig:
    """:func:`compose` then :func:`validate_knn`."""
    return validate_knn(compose(path, overrides))


def load_config(path: Union[str, os.PathLike], overrides: Sequence[str] = ()
                ) -> Union[PretrainConfig, LinearConfig, KnnConfig]:
    """Load any config, choosing the kind by content: ``knn:`` -> k-NN,
    ``pretrained_feature_extractor`` without ``method`` -> linear, else pre-training."""
    raw = compose(path, overrides)
    if "knn" in raw:
        return validate_knn(raw)
    if "method" not in raw and "pretrained_feature_extractor" in raw:
        return validate_linear(raw)
    return validate_pretrain(raw)


# --------------------------------------------------------------------------------------------
# Checking the method table against the installed sources (no import of solo)
# --------------------------------------------------------------------------------------------


def solo_method_signatures(solo_dir: Optional[Union[str, os.PathLike]] = None
                           ) -> Dict[str, Dict[str, Any]]:
    """Constructor arguments of each solo-learn method, read from its source with ``ast``.

    Args:
        solo_dir: the ``solo`` package folder; default: found with ``importlib.util.find_spec``
            (which does not run ``solo/__init__.py``).

    Returns:
        ``{method: {argument: argparse default or None}}`` for the methods of :data:`METHODS`
        whose file exists.
    """
    if solo_dir is None:
        import importlib.util

        spec = importlib.util.find_spec("solo")
        if spec is None or not spec.submodule_search_locations:
            return {}
        solo_dir = list(spec.submodule_search_locations)[0]
    out: Dict[str, Dict[str, Any]] = {}
    for method in METHODS:
        source = Path(solo_dir) / "methods" / f"{method}.py"
        if not source.is_file():
            continue
        tree = ast.parse(source.read_text())
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
            if not bases & {"BaseMethod", "BaseMomentumMethod"}:
                continue
            args: List[str] = []
            defaults: Dict[str, Any] = {}
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = [a.arg for a in item.args.args[1:]]
                elif isinstance(item, ast.FunctionDef) and item.name == "add_model_specific_args":
                    for call in ast.walk(item):
                        if (isinstance(call, ast.Call) and getattr(call.func, "attr", "")
                                == "add_argument" and call.args
                                and isinstance(call.args[0], ast.Constant)):
                            name = str(call.args[0].value).lstrip("-")
                            for kw in call.keywords:
                                if (kw.arg == "action" and isinstance(kw.value, ast.Constant)
                                        and kw.value.value == "store_true"):
                                    defaults.setdefault(name, False)
                                if kw.arg == "default":
                                    try:
                                        defaults[name] = ast.literal_eval(kw.value)
                                    except ValueError:
                                        pass
            out[method] = {name: defaults.get(name) for name in args}
    return out
