"""params.yaml -> typed, validated configuration.

Every knob of foldstack lives in params.yaml and is validated here, in full, before any work starts
(`load_config`, `config_from_dict`; the module `loading`). The sections are in `sections`, `models`
(base models), `meta` and `runtime`; `base` holds what they share. This package re-exports the public
names, so callers import from `foldstack.config`.
"""

from __future__ import annotations

from foldstack.config.base import Section
from foldstack.config.distill import AugmentConfig, DistillConfig, StudentSpec
from foldstack.config.loading import (
    DEFAULT_PARAMS_FILE, Config, apply_overrides, config_from_dict, load_config,
)
from foldstack.config.meta import (
    META_CONFIGS, AutoMetaConfig, EnsembleSelectionMetaConfig, EnsembleSelectionParams, LogregMetaConfig,
    LogregParams, MetaConfig, MetaKind, MetaSection, VoteMetaConfig, VoteParams, WeightedMeanMetaConfig,
    WeightedMeanParams,
)
from foldstack.config.models import BaseModelSpec
from foldstack.config.monitoring import DriftChecksConfig, MonitoringConfig
from foldstack.config.runtime import RuntimeConfig
from foldstack.config.sections import (
    VALIDATION_RULES, DataConfig, EvaluateConfig, FoldsConfig, GroupingConfig, RegistryConfig, SplitConfig,
    TrackingConfig, ValidationConfig, ValidationRule,
)
from foldstack.errors import ConfigError

__all__ = [
    "DEFAULT_PARAMS_FILE", "META_CONFIGS", "VALIDATION_RULES", "AutoMetaConfig", "BaseModelSpec", "Config",
    "ConfigError", "DataConfig", "DriftChecksConfig", "MonitoringConfig", "DistillConfig", "EnsembleSelectionMetaConfig", "EnsembleSelectionParams", "EvaluateConfig",
    "FoldsConfig", "GroupingConfig", "LogregMetaConfig", "LogregParams", "MetaConfig", "MetaKind", "MetaSection",
    "RegistryConfig", "RuntimeConfig", "Section", "SplitConfig", "TrackingConfig", "ValidationConfig",
    "ValidationRule", "VoteMetaConfig", "VoteParams", "WeightedMeanMetaConfig", "WeightedMeanParams",
    "AugmentConfig", "StudentSpec", "apply_overrides", "config_from_dict", "load_config",
]
