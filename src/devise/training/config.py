"""The experiment config, under the name training has always used.

The config itself lives in :mod:`devise.config`, below training and search
alike (both read a run's ``config.yaml``); this module re-exports it so that
``devise.training.config`` and ``devise.training.load_config`` keep working.
"""

from devise.config import (
    MAX_CONFIG_BYTES,
    DataConfig,
    ExperimentConfig,
    ImageEncoderConfig,
    LossConfig,
    ModelConfig,
    ShapesConfig,
    SplitConfig,
    TrainerConfig,
    WordVectorsConfig,
    ZeroShotConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)

__all__ = [
    "MAX_CONFIG_BYTES",
    "DataConfig",
    "ExperimentConfig",
    "ImageEncoderConfig",
    "LossConfig",
    "ModelConfig",
    "ShapesConfig",
    "SplitConfig",
    "TrainerConfig",
    "WordVectorsConfig",
    "ZeroShotConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
]
