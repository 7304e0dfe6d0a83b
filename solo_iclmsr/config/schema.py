"""What the project adds to solo-learn's config schema, as structured configs, and the one
validator of those keys.

solo's own keys are solo's: its ``parse_cfg`` and each method's ``add_and_assert_specific_cfg``
fill their defaults and check them (``prepare.py`` calls them). The project adds:

* ``iclmsr``: the options of ICL-MSR (``solo_iclmsr.core.ICLMSROptions``, ICLMSR.md);
* ``data.builtin``: the generator of the built-in dataset (``data.dataset: builtin``);
* ``data.image_size``: the side of the raw images the loader gives the device augmentation;
* ``data.augment_on_device``: make the views on the training device (default) or with solo's
  own per-image pipeline in the loader workers;
* ``diagnostics``: the per-epoch probe of the strata on held-out images (``plugin/callbacks.py``).

Unknown keys inside these blocks and values of the wrong type are rejected in one line naming
the key and the nearest valid key; ranges and choices are checked by the dataclasses themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from solo_iclmsr.config.names import unknown_name
from solo_iclmsr.core.options import ICLMSROptions

__all__ = ["BuiltinDataConfig", "DiagnosticsConfig", "PROJECT_BLOCKS", "validate_block",
           "validate_project_keys", "with_iclmsr_defaults", "SUFFIX"]

SUFFIX = "_iclmsr"
BUILTIN_VARIANTS = ("full", "fg")
MASK_SOURCES = ("coco", "folder")


@dataclass
class BuiltinDataConfig:
    """``data.builtin``: the built-in dataset (``solo_iclmsr.data.builtin``).

    Attributes:
        rho: probability that an image's background type is its class's own type.
        n_train: training images; n_test: test images (balanced over classes).
        num_classes: number of shape classes and background types.
        image_size: side of the generated images.
        seed: seed of the generator.
        variant: images the model trains on: ``full`` or ``fg`` (foreground on gray).
        root: cache folder; ``None`` for ``$SOLO_ICLMSR_CACHE/builtin`` or ``~/.cache``.
    """

    rho: float = 0.9
    n_train: int = 50000
    n_test: int = 10000
    num_classes: int = 10
    image_size: int = 32
    seed: int = 0
    variant: str = "full"
    root: Optional[str] = None

    def __post_init__(self) -> None:
        if self.variant not in BUILTIN_VARIANTS:
            raise ValueError(f"data.builtin.variant={self.variant!r} is invalid: expected one of "
                             f"{', '.join(BUILTIN_VARIANTS)}.")


@dataclass
class DiagnosticsConfig:
    """``diagnostics``: the strata probe, run on held-out images at the end of every
    ``every_n_epochs`` epochs (``plugin/callbacks.py``), and the gradient diagnostics of the
    training step every ``every_n_steps`` steps (``plugin/mixin.py``).

    Attributes:
        enabled: run the probe (only with ``iclmsr.enabled``).
        every_n_epochs: period of the probe in epochs.
        images: number of probe images.
        every_n_steps: period in optimizer steps of the gradient diagnostics (0: off): the
            cosine between grad L_msr and grad L_ct on the batch and, on steps with a meta step,
            the first-order (alignment) term of the meta-gradient against the rest (ICLMSR.md
            section 8). Costs two backward passes of the stage-1 graph and one directional
            derivative on those steps.
        masks: where foreground masks come from for the foreground share: ``null`` (the built-in
            dataset has its own; other datasets then get no foreground share), ``coco`` (a COCO
            instances JSON) or ``folder`` (mask PNGs beside the images, or in ``masks_root``).
        annotations: the COCO instances JSON (``masks: coco``).
        image_root: the images of the masked set.
        masks_root: a tree of mask PNGs parallel to ``image_root`` (``masks: folder``).
        mask_suffix: suffix of the mask PNGs beside the images (``masks: folder``).
    """

    enabled: bool = True
    every_n_epochs: int = 1
    images: int = 256
    every_n_steps: int = 50
    masks: Optional[str] = None
    annotations: Optional[str] = None
    image_root: Optional[str] = None
    masks_root: Optional[str] = None
    mask_suffix: str = "_mask"

    def __post_init__(self) -> None:
        for key in ("every_n_epochs", "images"):
            if getattr(self, key) < 1:
                raise ValueError(f"diagnostics.{key}={getattr(self, key)!r} is invalid: expected "
                                 f"an integer >= 1.")
        if self.every_n_steps < 0:
            raise ValueError(f"diagnostics.every_n_steps={self.every_n_steps!r} is invalid: "
                             f"expected an integer >= 0 (0: off).")
        if self.masks is not None and self.masks not in MASK_SOURCES:
            raise ValueError(f"diagnostics.masks={self.masks!r} is invalid: expected null or one "
                             f"of {', '.join(MASK_SOURCES)}.")
        if self.masks is not None and self.image_root is None:
            raise ValueError("diagnostics.image_root is missing: the masked images' folder.")
        if self.masks == "coco" and self.annotations is None:
            raise ValueError("diagnostics.annotations is missing: the COCO instances JSON.")


#: The project's blocks: config key -> schema.
PROJECT_BLOCKS = {"iclmsr": ICLMSROptions, "data.builtin": BuiltinDataConfig,
                  "diagnostics": DiagnosticsConfig}


def validate_block(cfg: DictConfig, key: str, schema: type) -> DictConfig:
    """``cfg.<key>`` merged over the defaults of ``schema`` (written back into ``cfg``).

    Raises:
        ValueError: one line naming the key at fault: an unknown key (with the nearest valid
            one), a value of the wrong type, or one out of range.
    """
    node = OmegaConf.select(cfg, key, default=None)
    if node is not None and not isinstance(node, DictConfig):
        raise ValueError(f"{key}={node!r} is invalid: expected a mapping of "
                         f"{', '.join(f.name for f in fields(schema))}.")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node or {})
    except ConfigKeyError as error:
        raise ValueError(unknown_name(f"{key}.{error.key}", None,
                                      [f.name for f in fields(schema)])) from None
    except OmegaConfBaseException as error:
        raise ValueError(f"{key}.{error.full_key}={error.value!r} is invalid: "
                         f"{str(error).splitlines()[0]}.") from None
    schema(**OmegaConf.to_container(merged, resolve=True))  # ranges and choices
    plain = OmegaConf.create(OmegaConf.to_container(merged, resolve=True))
    OmegaConf.update(cfg, key, plain, merge=False, force_add=True)
    return plain


def with_iclmsr_defaults(cfg: DictConfig) -> DictConfig:
    """The ``iclmsr`` block validated and complete, ``enabled`` resolved from the method name,
    and ``method`` brought back to solo's name (``simclr_iclmsr`` -> ``simclr``, with ICL-MSR on)."""
    block = validate_block(cfg, "iclmsr", ICLMSROptions)
    method = str(cfg.method)
    suffixed = method.endswith(SUFFIX)
    if block.enabled is None:
        block.enabled = suffixed
    elif suffixed and not block.enabled:
        raise ValueError(f"iclmsr.enabled=false contradicts method={method!r}: use "
                         f"method={method[: -len(SUFFIX)]!r} for the method without ICL-MSR.")
    if suffixed:
        cfg.method = method[: -len(SUFFIX)]
    cfg.iclmsr = block
    return cfg


def _check_type(cfg: DictConfig, key: str, kind: type, optional: bool, expected: str) -> None:
    value = OmegaConf.select(cfg, key, default=None)
    if value is None and optional:
        return
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise ValueError(f"{key}={value!r} is invalid: expected {expected}.")


def validate_project_keys(cfg: DictConfig) -> DictConfig:
    """Validate (and complete with defaults) every key the project adds; see the module docstring."""
    with_iclmsr_defaults(cfg)
    if OmegaConf.select(cfg, "data.dataset") == "builtin" or OmegaConf.select(cfg, "data.builtin"):
        validate_block(cfg, "data.builtin", BuiltinDataConfig)
    validate_block(cfg, "diagnostics", DiagnosticsConfig)
    _check_type(cfg, "data.image_size", int, True, "an integer >= 1 (the raw images' side)")
    if (OmegaConf.select(cfg, "data.image_size") or 1) < 1:
        raise ValueError(f"data.image_size={cfg.data.image_size!r} is invalid: expected an "
                         f"integer >= 1.")
    _check_type(cfg, "data.augment_on_device", bool, True, "true or false")
    return cfg


def is_enabled(cfg: DictConfig) -> bool:
    """Whether ICL-MSR is on for this (validated) config."""
    return bool(OmegaConf.select(cfg, "iclmsr.enabled", default=False))
