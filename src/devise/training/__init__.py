"""Experiment configs, the Trainer and run directories."""

from devise.training.config import (
    DataConfig,
    ExperimentConfig,
    ImageEncoderConfig,
    LossConfig,
    ModelConfig,
    ShapesConfig,
    SplitConfig,
    TrainerConfig,
    WordVectorsConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from devise.training.evaluate_run import evaluate_run
from devise.training.evaluation import evaluate_retrieval, format_markdown_report, format_metrics_table
from devise.training.resources import check_resources, find_missing_resources
from devise.training.trainer import Trainer, TrainResult, make_feature_extractor

__all__ = [
    "DataConfig",
    "ExperimentConfig",
    "ImageEncoderConfig",
    "LossConfig",
    "ModelConfig",
    "ShapesConfig",
    "SplitConfig",
    "TrainResult",
    "Trainer",
    "TrainerConfig",
    "WordVectorsConfig",
    "apply_overrides",
    "check_resources",
    "config_from_dict",
    "config_to_dict",
    "evaluate_retrieval",
    "evaluate_run",
    "format_markdown_report",
    "find_missing_resources",
    "format_metrics_table",
    "load_config",
    "make_feature_extractor",
    "save_config",
]
