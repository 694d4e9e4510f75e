"""Config -> data -> cached features -> word table -> model -> fit -> evaluation."""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from devise.config import ExperimentConfig, config_to_dict, save_config
from devise.datasets.from_config import load_records, split_records
from devise.datasets.records import CaptionRecord, unique_images
from devise.datasets.report import DataReport
from devise.datasets.text import tokenize
from devise.embeddings.glove import WordVectors, load_offline_glove_50d
from devise.embeddings.vector_cache import load_word_vectors_cached
from devise.embeddings.word_table import WordTable, build_word_table
from devise.encoders.feature_cache import FeatureCache, default_cache_path
from devise.encoders.feature_extractor import FeatureExtractor
from devise.encoders.feature_shards import FeatureShards
from devise.encoders.registry import feature_extractor_from_config
from devise.errors import DeviseError
from devise.losses.hinge_rank import HingeRankLoss
from devise.model import DeViSEJointModel, DeViSEModel, build_devise_model
from devise.runs import CONFIG_FILE
from devise.training.distribution import (
    chief_first,
    clip_after_summing,
    describe_devices,
    gather_from_workers,
    is_chief,
    is_multi_worker,
    make_strategy,
    replica_batches,
    worker_name,
)
from devise.training.evaluation import (
    BestValidationRecall,
    caption_key,
    evaluate_retrieval,
    format_metrics_table,
    validation_rsum,
)
from devise.training.precision import precision_policy
from devise.training.resources import check_resources
from devise.training.resume import (
    CHECKPOINT_FILE,
    TrainingCheckpoint,
    config_digest,
    constant_variables,
    mutable_variables,
    read_checkpoint,
    restore,
)
from devise.training.run_directory import (
    check_directory_writable,
    check_run_dir_reusable,
    create_run_directory,
    mark_run_complete,
    write_json,
)


@dataclasses.dataclass
class TrainResult:
    """What a finished run produced.

    Attributes:
        run_dir: the run directory.
        model: the trained model (also saved in ``run_dir``).
        metrics: evaluation metrics on the eval split (also in ``metrics.json``).
        history: per-epoch training logs.
    """

    run_dir: str
    model: DeViSEModel
    metrics: dict
    history: dict


def make_feature_extractor(config: ExperimentConfig) -> FeatureExtractor:
    """The image backbone named by ``config.image_encoder``.

    Kept for existing callers: the registry of backbones is
    :func:`devise.encoders.make_feature_extractor` (by name and options) and
    :func:`devise.encoders.feature_extractor_from_config` (by config section).
    """
    return feature_extractor_from_config(config.image_encoder)


class Trainer:
    """Runs one experiment end to end and leaves a run directory.

    Args:
        config: the experiment config (see :func:`devise.load_config`).
        run_dir: where to write; default ``<output_dir>/<name>-<timestamp>``.
        verbose: print progress bars and the final table.
        callbacks: more Keras callbacks for ``fit``, called after the trainer's own
            (whose epoch-end work, validation and checkpoint included, is then done).

    Example:
    ```python
    config = devise.load_config("configs/demo.yaml", ["trainer.epochs=5"])
    result = devise.Trainer(config).run()
    print(result.metrics["text_to_image"]["R@10"], result.run_dir)
    ```
    """

    def __init__(
        self,
        config: ExperimentConfig,
        *,
        run_dir: str | None = None,
        verbose: bool = True,
        callbacks: Sequence[keras.callbacks.Callback] = (),
    ):
        self.config = config
        self.callbacks = list(callbacks)
        self.run_dir = run_dir
        self._config_hash = config_digest(config_to_dict(config))
        self._resume_state = None  # an interrupted run's checkpoint, read by run()
        self.verbose = verbose
        self._strategy = None  # made first thing in run()

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    # -- data ---------------------------------------------------------------
    def load_records(self, report: DataReport) -> list[CaptionRecord]:
        """The records of the configured dataset (see :func:`devise.datasets.load_records`)."""
        return load_records(self.config.data, report)

    def split(self, records: list[CaptionRecord]) -> dict[str, list[CaptionRecord]]:
        """``records`` split as ``data.split`` says (see :func:`devise.datasets.split_records`)."""
        return split_records(records, self.config.data.split)

    def image_features(self, records: list[CaptionRecord], report: DataReport) -> dict[str, np.ndarray]:
        extractor = feature_extractor_from_config(self.config.image_encoder)
        cache = FeatureCache(
            default_cache_path(self.config.image_encoder.cache_dir, extractor), extractor.fingerprint()
        )
        images = unique_images(records)
        start = time.monotonic()
        from_shards: dict[str, np.ndarray] = {}
        if self.config.image_encoder.features:
            # Written by devise-beam-extract, every shard verified; the cache computes what it lacks.
            shards = FeatureShards.open(
                self.config.image_encoder.features, extractor_fingerprint=extractor.fingerprint()
            )
            found = shards.lookup([r.image_path for r in images])
            from_shards = {images[i].image_id: vector for i, vector in zip(found.positions, found.vectors)}
            images = [images[i] for i in found.missing]
            self.log(f"image features: {len(from_shards)} images from {shards.path}")
        table = cache.get_or_compute(
            extractor, [r.image_id for r in images], [r.image_path for r in images], progress=self.verbose
        )
        for path, reason in table.failures:
            report.add(path, reason)
        computed = table.computed - len(table.failures)
        self.log(
            f"image features: {len(table.ids)} images ({computed} computed, {len(table.ids) - computed} from "
            f"cache {cache.path}, {len(table.failures)} skipped) in {time.monotonic() - start:.1f}s"
        )
        return {**from_shards, **table.as_dict()}

    def word_vectors(self) -> WordVectors:
        """Every vector of the configured source (the table keeps ``max_words`` of them)."""
        wv = self.config.word_vectors
        if wv.source == "file":
            result = load_word_vectors_cached(
                wv.path,
                vocabulary=None,
                dim=wv.dim,
                fmt=wv.format,
                cache_dir=wv.cache_dir,
                strict=self.config.data.strict,
            )
            if result.issue_count:
                self.log(f"word vectors: {result.summary()}")
            return result.vectors
        return load_offline_glove_50d()

    def word_table(self, train_captions: Sequence[str], splits: dict[str, list[CaptionRecord]], run_dir: str):
        """The model's word table: the source's words plus the training-caption words; writes ``text_stats.json``."""
        config = self.config
        wv = config.word_vectors
        table, counts = self.build_word_table(self.word_vectors(), train_captions)
        in_table = set(table.words)
        write_json(
            os.path.join(run_dir, "text_stats.json"),
            {
                "word_table": table.report,
                "captions": {
                    name: caption_word_stats([r.caption for r in recs], in_table, set(counts), lowercase=wv.lowercase)
                    for name, recs in splits.items()
                },
            },
        )
        self.log(
            f"word table: {len(table.words)} words ({table.report['source_words']} from the word vectors, "
            f"{table.report['caption_words_added']} more training words with vectors, "
            f"{table.report['caption_words_without_vector']} training words without one)"
        )
        return table

    def build_word_table(self, source: WordVectors, texts: Sequence[str]) -> tuple[WordTable, dict[str, int]]:
        """The word table of ``source`` plus the words of ``texts``, and those words' counts.

        Words of ``texts`` without a vector join only if seen ``data.min_word_count`` times.
        """
        config = self.config
        wv = config.word_vectors
        known = source.index
        counts = collections.Counter(token for text in texts for token in tokenize(text, known, lowercase=wv.lowercase))
        # Words without a vector join the table only if seen often enough to learn.
        counts = {w: c for w, c in counts.items() if w in known or c >= config.data.min_word_count}
        table = build_word_table(
            source, caption_counts=counts, max_words=wv.max_words, oov=wv.oov, seed=config.trainer.seed
        )
        return table, counts

    # -- the run ------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train and evaluate; the run directory is marked complete only when everything is written.

        Rerun with the same config and ``run_dir`` after an interruption, it
        resumes from the last completed epoch (see :mod:`devise.training.resume`).
        """
        # First, before any TensorFlow operation: a multi-worker strategy configures the runtime.
        self._strategy = strategy = make_strategy(self.config.trainer.strategy)
        if self.run_dir is not None:
            check_run_dir_reusable(self.run_dir)
        elif is_chief(strategy):
            check_directory_writable(self.config.output_dir)  # before any download or extraction
        if not is_chief(strategy):
            # Keras' multi-worker pattern: every worker trains the same model; only the chief keeps its files.
            scratch = tempfile.mkdtemp(prefix=f"devise-{worker_name(strategy).replace(' ', '')}-")
            self.log(
                f"{worker_name(strategy)}: the chief writes the run directory; this worker's copy goes to {scratch} "
                "and is removed at the end"
            )
            try:
                return self._run(scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        if is_multi_worker(strategy):
            self.log(
                f"{worker_name(strategy)}: the chief, writes the run directory ({strategy.num_replicas_in_sync} replicas)"
            )
        run_dir = self.run_dir or create_run_directory(self.config.output_dir, self.config.name)
        try:
            result = self._run(run_dir)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) and os.path.isfile(os.path.join(run_dir, CHECKPOINT_FILE)):
                self.log(
                    f"interrupted; resume with: devise-train --config {os.path.join(run_dir, CONFIG_FILE)} "
                    f"--run-dir {run_dir}"
                )
            if self.run_dir is None and os.path.isdir(run_dir) and not os.listdir(run_dir):
                os.rmdir(run_dir)  # a start that failed (a missing resource) leaves no empty run folder behind
            raise
        # The model is saved: the checkpoint is no longer needed.
        shutil.rmtree(os.path.dirname(os.path.join(result.run_dir, CHECKPOINT_FILE)), ignore_errors=True)
        mark_run_complete(result.run_dir, sorted(os.listdir(result.run_dir)))
        return result

    def _run(self, run_dir: str) -> TrainResult:
        config = self.config
        # Under a multi-worker strategy the chief downloads, generates data and fills the feature cache
        # first; the other workers follow and read what it wrote (or, on their own disks, compute their own).
        with chief_first(self._strategy):
            prepared = self._prepare(run_dir)
        if isinstance(prepared, TrainResult):
            return prepared  # a zero-shot run
        records, splits, features, report = prepared
        splits = {name: [r for r in recs if r.image_id in features] for name, recs in splits.items()}
        write_json(os.path.join(run_dir, "data_report.json"), report.to_dict())
        if len(report):
            self.log(report.summary())
        # Without images to train on or to evaluate, fit() and evaluation would
        # fail with a bare StopIteration/ValueError; say why instead.
        for needed in dict.fromkeys(("train", config.trainer.eval_split)):
            if not splits.get(needed):
                raise DeviseError(
                    f"the {needed} split has no usable images ({len(records)} captions loaded, "
                    f"{len(report)} data problem(s) reported in {os.path.join(run_dir, 'data_report.json')}); "
                    "check data.annotations / data.images / data.root and the split settings"
                )
        self.log(
            "splits: " + ", ".join(f"{n} {len(unique_images(r))} images / {len(r)} captions" for n, r in splits.items())
        )

        table = self.word_table([r.caption for r in splits["train"]], splits, run_dir)
        if config.loss.kind == "regression":
            model, history = self.fit_regression(splits, features, table)
        else:
            model, history = self.fit(splits, features, table, run_dir)
        eval_split = config.trainer.eval_split
        metrics = evaluate_retrieval(model, splits[eval_split], features)
        metrics["split"] = eval_split
        metrics["epochs"] = len(history.get("loss", []))
        write_json(os.path.join(run_dir, "metrics.json"), metrics)
        write_json(os.path.join(run_dir, "history.json"), history)
        model.save(run_dir)
        if self.verbose:
            print(format_metrics_table(metrics, title=f"Retrieval on the {eval_split} split"))
            print(f"run directory: {run_dir}")
        return TrainResult(run_dir, model, metrics, history)

    def _prepare(self, run_dir: str):
        """Resources, the run directory's first files, records, splits and features (or a whole zero-shot run)."""
        config = self.config
        check_resources(config, download=True, progress=self.verbose)
        keras.utils.set_random_seed(config.trainer.seed)
        os.makedirs(run_dir, exist_ok=True)
        # Read (and check) an interrupted run's checkpoint before config.yaml is rewritten. Every worker
        # resumes from the chief's checkpoint (--run-dir on a folder all workers see, as Keras' BackupAndRestore).
        checkpoint_dir = run_dir if is_chief(self._strategy) else self.run_dir
        self._resume_state = (
            read_checkpoint(os.path.join(checkpoint_dir, CHECKPOINT_FILE), self._config_hash)
            if checkpoint_dir is not None
            else None
        )
        save_config(config, os.path.join(run_dir, CONFIG_FILE))
        self.log(f"run directory: {run_dir}")
        self.log(f"devices: {describe_devices(self._strategy)}")
        from devise.training.zeroshot_run import is_zeroshot, run_zeroshot

        if is_zeroshot(config):
            return run_zeroshot(self, run_dir)

        report = DataReport(strict=config.data.strict)
        records = self.load_records(report)
        try:
            splits = self.split(records)
        except DeviseError:
            # The error may say "see the data report": save it before stopping.
            write_json(os.path.join(run_dir, "data_report.json"), report.to_dict())
            if len(report):
                self.log(report.summary())
            raise
        features = self.image_features([r for split in splits.values() for r in split], report)
        return records, splits, features, report

    def build_model(
        self, table: WordTable, image_dim: int, *, regression: bool = False, standardize: bool | None = None
    ) -> DeViSEJointModel:
        """The joint model the config describes.

        ``regression=True``: the text side is the unit mean word vector (no
        map), as in the regression baseline and zero-shot runs.
        ``standardize`` overrides ``model.standardize_features``.
        """
        config = self.config
        return build_devise_model(
            words=table.words,
            embedding_matrix=table.matrix,
            image_dim=image_dim,
            joint_dim=table.dim if regression else config.model.joint_dim,
            text_encoder="mean" if regression else config.model.text_encoder,
            units=config.model.lstm_units,
            max_caption_length=config.data.max_caption_length,
            train_word_vectors=config.word_vectors.train and not regression,
            word_vectors_dtype=config.word_vectors.dtype,
            lowercase=config.word_vectors.lowercase,
            text_dropout=config.model.text_dropout,
            project_text=not regression,
            image_dropout=config.model.image_dropout,
            standardize_features=config.model.standardize_features if standardize is None else standardize,
            projector_bias=config.model.projector_bias or regression,
            image_fingerprint=feature_extractor_from_config(config.image_encoder).fingerprint(),
        )

    def fit(self, splits, features, table: WordTable, run_dir: str):
        config = self.config
        tc = config.trainer
        strategy = self._strategy if self._strategy is not None else make_strategy(tc.strategy)
        multi_worker = is_multi_worker(strategy)
        image_dim = len(next(iter(features.values())))
        # Seeded here again: extracting features (or not, from the cache) must not change the initial weights.
        keras.utils.set_random_seed(tc.seed)
        with strategy.scope(), precision_policy(tc.mixed_precision):
            keras_model = self.build_model(table, image_dim)
            if config.model.standardize_features:
                keras_model.image_projector.set_feature_statistics(
                    np.stack([features[r.image_id] for r in unique_images(splits["train"])])
                )
            optimizer = {
                "adam": keras.optimizers.Adam,
                "adagrad": keras.optimizers.Adagrad,
                "sgd": keras.optimizers.SGD,
            }[tc.optimizer](learning_rate=tc.learning_rate, clipnorm=tc.clip_norm, weight_decay=tc.weight_decay or None)
            clip_after_summing(optimizer, strategy)  # Keras would clip each replica's share
            if tc.weight_decay:
                # Weight decay regularises the image side only: the text side's table and recurrent weights keep theirs.
                optimizer.exclude_from_weight_decay(var_list=keras_model.text_encoder.trainable_variables)
            loss = HingeRankLoss(
                config.loss.margin, negatives=config.loss.negatives, directions=config.loss.directions, seed=tc.seed
            )
            keras_model.compile(optimizer=optimizer, loss=loss)
            # Built now (not lazily in fit) so that a checkpoint can restore its moments.
            # keras_model.optimizer: under float16, compile wrapped the optimizer in loss scaling.
            keras_model.optimizer.build(keras_model.trainable_variables)
        model = DeViSEModel(keras_model)

        def training_batches(records, first_epoch):
            ids = sorted({r.image_id for r in records})
            group = {image_id: i for i, image_id in enumerate(ids)}
            # Identical captions (after tokenising) are never each other's negatives.
            caption_group: dict[str, int] = {}
            # Each image's features once (not once per caption: 5x less memory), gathered by y's image column.
            images = tf.constant(np.stack([features[image_id] for image_id in ids]).astype(np.float32))
            tokens = tf.constant(keras_model.text_encoder.encode_texts([r.caption for r in records])[0].astype(str))
            y = np.array(
                [
                    [group[r.image_id], caption_group.setdefault(caption_key(r.caption), len(caption_group))]
                    for r in records
                ],
                np.int32,
            )
            y_t = tf.constant(y)

            # Epoch e's order depends only on (seed, e), so a run resumed at epoch e sees the batches
            # an uninterrupted run sees there. One pass of batches per epoch, epochs back to back.
            def epoch_batches(epoch):
                seed = tf.stack([tf.constant(tc.seed, tf.int64), epoch])
                order = tf.random.experimental.stateless_shuffle(tf.range(len(records)), seed=seed)
                return tf.data.Dataset.from_tensor_slices(order).batch(tc.batch_size)

            rows = tf.data.Dataset.range(first_epoch, tc.epochs).flat_map(epoch_batches)

            def batch(rows):
                y_rows = tf.gather(y_t, rows)
                return {"image_features": tf.gather(images, y_rows[:, 0]), "tokens": tf.gather(tokens, rows)}, y_rows

            def pipeline(rows):
                return rows.map(batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
                    tf.data.AUTOTUNE
                )

            if multi_worker:
                # Every worker builds the same global batches and keeps its replicas' shares of each.
                return strategy.distribute_datasets_from_function(
                    lambda context: pipeline(replica_batches(rows, context))
                )
            return pipeline(rows)

        callbacks = [keras.callbacks.TerminateOnNaN()]
        if importlib.util.find_spec("tensorboard") is not None:
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False))
        else:
            self.log("note: tensorboard is not installed, so no TensorBoard logs (pip install 'devise[tensorboard]')")
        selector = None
        if splits.get("val"):
            # Also the validation loss, from the embeddings its R-sum needs (no second pass over the split).
            selector = BestValidationRecall(
                model, splits["val"], features, log=self.log, loss=loss, batch_size=tc.batch_size
            )
            callbacks.insert(1, selector)  # before TensorBoard, which then logs val_rsum
        checkpoint_path = os.path.join(run_dir, CHECKPOINT_FILE)
        variables, constants = mutable_variables(keras_model, loss), constant_variables(keras_model)
        state, first_epoch = self._resume_state, 0
        if state is not None:
            restore(state, variables, constants, checkpoint_path)
            if selector is not None and state.best_weights is not None:
                selector.best, selector.best_epoch, selector.best_weights = (
                    state.best_rsum,
                    state.best_epoch,
                    state.best_weights,
                )
            first_epoch = min(state.epoch, tc.epochs)
            self.log(f"resuming from the checkpoint written after epoch {state.epoch} ({checkpoint_path})")
        if multi_worker:
            resumed = gather_from_workers(strategy, first_epoch)
            if resumed.min() != resumed.max():
                raise DeviseError(
                    f"{worker_name(strategy)}: the workers found different checkpoints to resume from (epochs "
                    f"{sorted(set(resumed.astype(int).tolist()))}); a multi-worker run resumes from the chief's "
                    "--run-dir, which must be a folder every worker sees (a shared filesystem)"
                )
        checkpoint = TrainingCheckpoint(
            checkpoint_path if is_chief(strategy) else None,  # only the chief writes it
            variables,
            constants,
            self._config_hash,
            selector=selector,
            history=state.history if state is not None else None,
        )
        callbacks.insert(2 if selector is not None else 1, checkpoint)  # after the selector, whose state it saves
        if first_epoch < tc.epochs:
            try:
                keras_model.fit(
                    training_batches(splits["train"], first_epoch),
                    epochs=tc.epochs,
                    initial_epoch=first_epoch,
                    steps_per_epoch=math.ceil(len(splits["train"]) / tc.batch_size),
                    shuffle=False,  # the dataset shuffles itself, epoch by epoch
                    callbacks=callbacks + self.callbacks,
                    # Keras prints to stdout: a live progress bar on a terminal, one line per epoch elsewhere.
                    verbose=0 if not self.verbose else 1 if sys.stdout.isatty() else 2,
                )
            except BaseException:
                checkpoint.wait(raise_error=False)  # Ctrl-C or an error: the finished epoch's checkpoint is on disk
                raise
        history = checkpoint.history
        losses = history.get("loss", [])
        if losses and not np.isfinite(losses[-1]):
            raise DeviseError(
                f"training diverged: the loss became {losses[-1]} in epoch {len(losses)}; "
                "lower trainer.learning_rate or set trainer.clip_norm, and check the features for NaN"
            )
        if selector is not None:
            selector.restore_best()
        return model, history

    def fit_regression(self, splits, features, table: WordTable):
        """The paper's baseline: ridge regression from image features to the mean word vector of their captions.

        Closed form (one SVD of the training features), the penalty chosen
        from a grid by validation R-sum (without a validation split, the
        middle of the grid). The model's text side is the unit mean word
        vector and its image side the fitted linear map, so it is evaluated,
        saved and searched like any other model.
        """
        image_dim = len(next(iter(features.values())))
        keras_model = self.build_model(table, image_dim, regression=True)
        model = DeViSEModel(keras_model)
        images = unique_images(splits["train"])
        x = np.stack([features[r.image_id] for r in images]).astype(np.float64)
        if self.config.model.standardize_features:
            keras_model.image_projector.set_feature_statistics(x)
            projector = keras_model.image_projector
            x = (x - projector.feature_mean.numpy()) / projector.feature_scale.numpy()
        # Least squares over (image, caption) rows equals least squares over images against
        # the mean target of their captions, each row weighted by its caption count.
        targets = model.embed_texts([r.caption for r in splits["train"]]).astype(np.float64)
        row = {r.image_id: i for i, r in enumerate(images)}
        t = np.zeros((len(images), targets.shape[1]))
        n = np.zeros(len(images))
        for record, target in zip(splits["train"], targets):
            t[row[record.image_id]] += target
            n[row[record.image_id]] += 1
        t /= n[:, None]
        w = np.sqrt(n)[:, None]
        x_mean, t_mean = (x * n[:, None]).sum(0) / n.sum(), (t * n[:, None]).sum(0) / n.sum()
        u, s, vt = np.linalg.svd((x - x_mean) * w, full_matrices=False)
        ut_t = u.T @ ((t - t_mean) * w)
        scale = float(np.mean(s**2))
        history: dict[str, list[float]] = {"ridge_penalty": [], "val_rsum": []}
        best = None
        grid = [scale * f for f in (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)]
        if not splits.get("val"):
            grid = [grid[len(grid) // 2]]
        for penalty in grid:
            kernel = vt.T @ ((s / (s**2 + penalty))[:, None] * ut_t)
            bias = t_mean - x_mean @ kernel
            keras_model.image_projector.dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
            rsum = validation_rsum(evaluate_retrieval(model, splits["val"], features)) if splits.get("val") else 0.0
            history["ridge_penalty"].append(penalty)
            history["val_rsum"].append(rsum)
            if best is None or rsum > best[0]:
                best = (rsum, kernel, bias, penalty)
        rsum, kernel, bias, penalty = best
        keras_model.image_projector.dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
        self.log(f"ridge regression: penalty {penalty:.3g} chosen (validation R-sum {rsum:.1f})")
        return model, history


def caption_word_stats(
    captions: Sequence[str], table: set[str], train_words: set[str], *, lowercase: bool = True
) -> dict:
    """How many caption tokens the word table lacks, and how many never occur in training captions."""
    tokens = [t for caption in captions for t in tokenize(caption, table, lowercase=lowercase)]
    unknown = collections.Counter(t for t in tokens if t not in table)
    unseen = collections.Counter(t for t in tokens if t not in train_words)
    return {
        "tokens": len(tokens),
        "not_in_table_tokens": sum(unknown.values()),
        "not_in_table_rate": sum(unknown.values()) / len(tokens) if tokens else 0.0,
        "unseen_in_training_tokens": sum(unseen.values()),
        "unseen_in_training_rate": sum(unseen.values()) / len(tokens) if tokens else 0.0,
        "most_common_not_in_table": unknown.most_common(20),
    }
