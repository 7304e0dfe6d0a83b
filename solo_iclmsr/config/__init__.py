"""Configs in solo-learn's schema: Hydra composition (``compose``), the keys the project adds as
structured configs with one validator (``schema``), the checks that read solo's and timm's names
and call solo's config functions (``checks``), and one "did you mean" helper (``names``).
Nothing here imports the plugin: a pretraining config is put together for solo by
``solo_iclmsr.plugin.prepare_pretrain``."""

from solo_iclmsr.config.compose import compose
from solo_iclmsr.config.names import nearest, unknown_name
from solo_iclmsr.config.checks import check_backbone, check_schedule, solo_checked
from solo_iclmsr.config.schema import (PROJECT_BLOCKS, BuiltinDataConfig, DiagnosticsConfig,
                                       validate_block, validate_project_keys,
                                       with_iclmsr_defaults)

__all__ = [
    "compose",
    "nearest",
    "unknown_name",
    "check_schedule",
    "check_backbone",
    "solo_checked",
    "PROJECT_BLOCKS",
    "BuiltinDataConfig",
    "DiagnosticsConfig",
    "validate_block",
    "validate_project_keys",
    "with_iclmsr_defaults",
]
