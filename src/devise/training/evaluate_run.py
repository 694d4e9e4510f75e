"""Re-evaluate a finished run directory on one of its splits.

:func:`evaluate_run` rebuilds the run's data split from its saved
``config.yaml``, embeds it with the saved model, and leaves
``eval-<split>.json`` and ``eval-<split>.md`` in the run directory.
"""

from __future__ import annotations

import os
import sys

from devise.datasets.from_config import load_records, split_records
from devise.datasets.records import unique_images
from devise.datasets.report import DataReport
from devise.encoders.registry import feature_extractor_from_config
from devise.errors import DeviseError
from devise.model import DeViSEModel
from devise.runs import RESUME_CHECKPOINT, check_run_complete, read_run_config
from devise.training.evaluation import evaluate_retrieval, format_markdown_report
from devise.training.run_directory import write_json, write_text
from devise.training.trainer import Trainer
from devise.training.zeroshot_run import ZEROSHOT_FILE, is_zeroshot

#: Files every devise run directory holds (the config and the saved model).
RUN_FILES = ("config.yaml", "model.keras", "model.json")
SPLITS = ("train", "val", "test")


def check_run_directory(run_dir: str | os.PathLike) -> str:
    """``run_dir`` as a string, or a :class:`DeviseError` saying what is missing."""
    run_dir = os.fspath(run_dir)
    if not os.path.exists(run_dir):
        raise DeviseError(f"{run_dir}: run directory does not exist")
    if not os.path.isdir(run_dir):
        raise DeviseError(f"{run_dir}: not a directory (expected a devise run directory)")
    missing = [name for name in RUN_FILES if not os.path.isfile(os.path.join(run_dir, name))]
    if missing and os.path.isfile(os.path.join(run_dir, RESUME_CHECKPOINT)):
        check_run_complete(run_dir)  # an interrupted run: say so, and how to resume it
    if missing:
        raise DeviseError(f"{run_dir}: not a devise run directory (missing {', '.join(missing)})")
    check_run_complete(run_dir)
    return run_dir


def evaluate_run(run_dir: str | os.PathLike, split: str = "test", *, verbose: bool = True) -> dict:
    """Evaluate the model of ``run_dir`` on ``split`` and write the report files.

    The split is rebuilt from the run's ``config.yaml`` exactly as training
    built it; image features come from the feature cache (missing ones are
    computed). Identical captions count as correct for every image that has
    them. Writes ``eval-<split>.json`` (the returned metrics) and
    ``eval-<split>.md`` (:func:`format_markdown_report`) into ``run_dir``,
    each through a temporary file and a rename.

    Args:
        run_dir: a run directory written by :class:`devise.Trainer`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        verbose: report progress on stderr.

    Returns:
        The metrics of :func:`evaluate_retrieval` with ``per_category``,
        plus ``"split"``.

    Raises:
        DeviseError: the directory is missing or not a devise run, the split
            is empty, or the model does not fit the image features.
    """
    if split not in SPLITS:
        raise DeviseError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    run_dir = check_run_directory(run_dir)
    config = read_run_config(run_dir)
    if is_zeroshot(config):
        raise DeviseError(
            f"{run_dir}: a zero-shot run has no caption split to evaluate; its hit@k results are in "
            f"{os.path.join(run_dir, ZEROSHOT_FILE)} (classify photos with devise-classify --run {run_dir})"
        )
    model = DeViSEModel.load(run_dir)

    # Refuse a model/extractor mismatch before any (possibly long) feature extraction.
    extractor = feature_extractor_from_config(config.image_encoder)
    if model.image_dim != extractor.output_dim:
        raise DeviseError(
            f"{run_dir}: the model expects {model.image_dim}-d image features but "
            f"{config.image_encoder.backbone} gives {extractor.output_dim}-d ones; was the config changed after training?"
        )
    fingerprint = extractor.fingerprint()
    if model.image_fingerprint and model.image_fingerprint != fingerprint:
        raise DeviseError(
            f"{run_dir}: the model was trained on features of '{model.image_fingerprint}', "
            f"but the config now gives '{fingerprint}'"
        )

    trainer = Trainer(config, run_dir=run_dir, verbose=verbose)
    report = DataReport(strict=config.data.strict)
    records = split_records(load_records(config.data, report), config.data.split)[split]
    if not records:
        raise DeviseError(f"{run_dir}: the {split} split of this run's data is empty")
    features = trainer.image_features(records, report)
    records = [r for r in records if r.image_id in features]
    if not records:
        raise DeviseError(f"{run_dir}: no image of the {split} split has features ({len(report)} unreadable)")
    if verbose:
        print(f"{split} split: {len(unique_images(records))} images / {len(records)} captions", file=sys.stderr)

    metrics = evaluate_retrieval(model, records, features, per_category=True)
    metrics["split"] = split
    write_json(os.path.join(run_dir, f"eval-{split}.json"), metrics)
    write_text(os.path.join(run_dir, f"eval-{split}.md"), format_markdown_report(metrics, run_dir=run_dir, split=split))
    return metrics
