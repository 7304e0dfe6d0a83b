"""Configs in solo-learn's schema: Hydra composition (``compose``), the keys the project adds as
structured configs with one validator (``schema``), solo's own ``parse_cfg`` for solo's keys
(``prepare``), and one "did you mean" helper (``names``)."""

from solo_iclmsr.config.compose import compose
from solo_iclmsr.config.names import nearest, unknown_name
from solo_iclmsr.config.prepare import (check_backbone, check_schedule, prepare_pretrain,
                                        solo_checked)
from solo_iclmsr.config.schema import (PROJECT_BLOCKS, BuiltinDataConfig, DiagnosticsConfig,
                                       validate_block, validate_project_keys,
                                       with_iclmsr_defaults)

__all__ = [
    "compose",
    "nearest",
    "unknown_name",
    "prepare_pretrain",
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
