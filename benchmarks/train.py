"""Per-epoch training time on cached features: devise's Trainer against a minimal Keras model trained with ``fit``.

Usage::

    python benchmarks/train.py                 # Pascal size, then 10x the data (about 15 min on 2 busy cores)
    python benchmarks/train.py --no-10x        # Pascal size only

The data are synthetic (no Pascal Sentences or GloVe here), of Pascal
Sentences' size and shape: 1,000 images with 4096-d features (VGG16 fc7's
size; non-negative, like ReLU outputs), five captions each (5,000 captions
of 8 to 16 words drawn with a Zipf-like law from the 5,000 most frequent of
the word table's words), and a word table of GloVe 6B 50-d's default size in
devise (100,000 words x 50, random vectors). ``--scale 10`` repeats it with
10,000 images (50,000 captions). Images are split 80/10/10 into train, val
and test, as the Trainer uses them.

Both sides train the same layers on the same training captions, with the
same batch size and optimizer: frozen word vectors -> LSTM -> linear map ->
unit vector for the text, linear map -> unit vector for the 4096-d features,
and devise's ``HingeRankLoss`` (all in-batch negatives, both directions).

* **Trainer**: :meth:`devise.training.Trainer.fit` itself, everything it
  does every epoch included: the seeded per-epoch reshuffle, the validation
  loss, the validation R-sum that picks the best epoch, the resumable
  checkpoint and TensorBoard logs.
* **minimal Keras**: a functional model with the same layers (a
  ``StringLookup`` over the same word table, a frozen ``Embedding``, an
  ``LSTM``, two ``Dense`` maps, L2 normalisation), trained with plain
  ``model.fit`` on a ``tf.data`` pipeline (shuffle, batch, prefetch), no
  validation and no callbacks but the timer.

An epoch is timed from ``on_epoch_begin`` to the end of the last callback's
``on_epoch_end``, in wall time and in this process's CPU time (all threads;
less disturbed by other jobs on a shared machine); the first epoch (tracing)
is left out and the fastest of the others reported. The Trainer's epoch is broken into its training pass,
validation pass and epoch-end callbacks. Everything is measured in one run.
Targets (issue 10): Trainer <= 1.1x the minimal model; 10x data <= 11x time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from devise.datasets.records import CaptionRecord
from devise.embeddings.word_vectors import WordVectors
from devise.losses import HingeRankLoss
from devise.training import Trainer, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EpochTimer(keras.callbacks.Callback):
    """Wall and CPU time of each epoch, and the wall time of its training pass and validation pass."""

    def __init__(self):
        super().__init__()
        self.epochs: list[dict[str, float]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._begin, self._cpu = time.perf_counter(), time.process_time()
        self._train_end = self._test_begin = self._test_end = None

    def on_train_batch_end(self, batch, logs=None):
        self._train_end = time.perf_counter()

    def on_test_begin(self, logs=None):
        self._test_begin = time.perf_counter()

    def on_test_end(self, logs=None):
        self._test_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end, cpu = time.perf_counter(), time.process_time()
        train = self._train_end - self._begin
        validation = self._test_end - self._test_begin if self._test_begin is not None else 0.0
        self.epochs.append(
            {
                "epoch": end - self._begin,
                "cpu": cpu - self._cpu,
                "train": train,
                "validation": validation,
                "callbacks": end - self._begin - train - validation,
            }
        )

    def best(self, key: str = "epoch") -> float:
        """The least disturbed of the epochs after the first (the machine is shared): their minimum."""
        return min(e[key] for e in self.epochs[1:])


def synthetic_data(images: int, *, feature_dim: int, words: int, word_dim: int, seed: int = 0):
    """Records split 80/10/10 by image, features by image id, and a word table (all random, see the docstring)."""
    rng = np.random.default_rng(seed)
    vocabulary = [f"w{i:06d}" for i in range(words)]
    vectors = WordVectors(vocabulary, rng.normal(scale=0.4, size=(words, word_dim)).astype(np.float32))
    features = {f"img{i:06d}": v for i, v in enumerate(np.maximum(rng.normal(size=(images, feature_dim)), 0))}
    features = {k: v.astype(np.float32) for k, v in features.items()}
    common = min(5000, words)
    p = 1.0 / np.arange(1, common + 1)
    p /= p.sum()
    records = [
        CaptionRecord(
            image_id,
            f"/synthetic/{image_id}.jpg",
            " ".join(vocabulary[w] for w in rng.choice(common, size=rng.integers(8, 17), p=p)),
        )
        for image_id in features
        for _ in range(5)
    ]
    cut = {"train": 0.8, "val": 0.9, "test": 1.0}
    order = rng.permutation(images)
    part = {
        f"img{i:06d}": next(name for name, end in cut.items() if rank < end * images) for rank, i in enumerate(order)
    }
    splits = {name: [r for r in records if part[r.image_id] == name] for name in cut}
    return splits, features, vectors


def config_for(args, run_root: str):
    overrides = [
        f"output_dir={run_root}",
        f"trainer.epochs={args.epochs}",
        f"trainer.batch_size={args.batch_size}",
        f"model.joint_dim={args.joint_dim}",
        f"model.lstm_units={args.units}",
        "trainer.eval_split=test",
    ]
    return load_config(os.path.join(REPO, "configs", "demo.yaml"), overrides)


def trainer_epochs(args, splits, features, vectors, run_root: str) -> EpochTimer:
    timer = EpochTimer()
    trainer = Trainer(config_for(args, run_root), verbose=False, callbacks=[timer])
    table, _ = trainer.build_word_table(vectors, [r.caption for r in splits["train"]])
    run_dir = tempfile.mkdtemp(dir=run_root)
    trainer.fit(splits, features, table, run_dir)
    return timer


class _JointHingeLoss(keras.losses.Loss):
    """devise's hinge rank loss on a model whose one output is ``[image | text]``."""

    def __init__(self, joint_dim: int):
        super().__init__()
        self.joint_dim = joint_dim
        self.inner = HingeRankLoss(0.1)

    def call(self, y_true, y_pred):
        d = self.joint_dim
        return self.inner.call(y_true, {"image": y_pred[:, :d], "text": y_pred[:, d:]})


def minimal_epochs(args, splits, features, vectors, max_length: int = 24) -> EpochTimer:
    """The same layers and loss in a plain functional Keras model, trained with ``model.fit``."""
    keras.utils.set_random_seed(0)
    records = splits["train"]
    image_in = keras.Input((args.feature_dim,), name="image_features")
    tokens_in = keras.Input((max_length,), dtype="string", name="tokens")
    image = keras.layers.Dense(args.joint_dim, use_bias=False)(image_in)
    image = keras.layers.UnitNormalization()(image)
    ids = keras.layers.StringLookup(vocabulary=vectors.words, mask_token="")(tokens_in)
    table = np.concatenate([np.zeros((2, vectors.dim), np.float32), vectors.vectors])  # padding, unknown
    words = keras.layers.Embedding(len(table), vectors.dim, mask_zero=True, trainable=False)
    x = keras.layers.LSTM(args.units)(words(ids))
    text = keras.layers.UnitNormalization()(keras.layers.Dense(args.joint_dim)(x))
    model = keras.Model([image_in, tokens_in], keras.layers.Concatenate()([image, text]))
    words.set_weights([table])
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate, clipnorm=2.0), loss=_JointHingeLoss(args.joint_dim)
    )

    def padded(caption):
        t = caption.split()[:max_length]
        return t + [""] * (max_length - len(t))

    image_ids = {image_id: i for i, image_id in enumerate(sorted({r.image_id for r in records}))}
    x = {
        "image_features": np.stack([features[r.image_id] for r in records]),
        "tokens": np.array([padded(r.caption) for r in records]),
    }
    y = np.array([[image_ids[r.image_id], i] for i, r in enumerate(records)], np.int32)
    data = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(records), seed=0)
        .batch(args.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    timer = EpochTimer()
    model.fit(data, epochs=args.epochs, callbacks=[timer], verbose=0)
    return timer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="images at 1x (5 captions each)")
    parser.add_argument("--scale", type=int, default=10, help="the larger run's multiple of --images")
    parser.add_argument("--no-10x", dest="large", action="store_false", help="only the 1x size")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not counted")
    parser.add_argument("--feature-dim", type=int, default=4096)
    parser.add_argument("--words", type=int, default=100_000)
    parser.add_argument("--word-dim", type=int, default=50)
    parser.add_argument("--joint-dim", type=int, default=256, help="configs/demo.yaml's (configs/pascal.yaml: 1000)")
    parser.add_argument("--units", type=int, default=256, help="LSTM units, as --joint-dim")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.001)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is not counted)")

    print(
        f"machine: {os.cpu_count()} CPU(s), TensorFlow {tf.__version__}, Keras {keras.__version__}; "
        f"{args.feature_dim}-d features, {args.words:,} x {args.word_dim} word table (synthetic), "
        f"joint {args.joint_dim}, LSTM {args.units}, batch {args.batch_size}, {args.epochs} epochs per run",
        flush=True,
    )
    sizes = [1] + ([args.scale] if args.large else [])
    rows = {}
    with tempfile.TemporaryDirectory() as run_root:
        for scale in sizes:
            splits, features, vectors = synthetic_data(
                args.images * scale, feature_dim=args.feature_dim, words=args.words, word_dim=args.word_dim
            )
            train = len(splits["train"])
            for name in ("minimal Keras", "Trainer"):
                start = time.perf_counter()
                if name == "Trainer":
                    timer = trainer_epochs(args, splits, features, vectors, run_root)
                else:
                    timer = minimal_epochs(args, splits, features, vectors)
                rows[name, scale] = timer
                print(
                    f"  {name} at {scale}x ({train:,} training captions, {len(splits['val']):,} validation): "
                    f"best epoch {timer.best():.2f} s (wall, epochs: "
                    + ", ".join(f"{e['epoch']:.2f}" for e in timer.epochs)
                    + "; CPU: "
                    + ", ".join(f"{e['cpu']:.2f}" for e in timer.epochs)
                    + f"; {time.perf_counter() - start:.0f} s with set-up)",
                    flush=True,
                )
    print()
    print(f"{'run':<20}{'wall s':>8}{'CPU s':>8}{'train s':>9}{'val s':>7}{'cb s':>6}   ratio to minimal (wall, CPU)")
    for scale in sizes:
        for name in ("minimal Keras", "Trainer"):
            t, base = rows[name, scale], rows["minimal Keras", scale]
            ratio = ""
            if name == "Trainer":
                ratio = f"{t.best() / base.best():.2f}x, {t.best('cpu') / base.best('cpu'):.2f}x (target <= 1.10)"
            print(
                f"{name + f' {scale}x':<20}{t.best():>8.2f}{t.best('cpu'):>8.2f}{t.best('train'):>9.2f}"
                f"{t.best('validation'):>7.2f}{t.best('callbacks'):>6.2f}   {ratio}"
            )
    if args.large:
        for name in ("minimal Keras", "Trainer"):
            small, large = rows[name, 1], rows[name, args.scale]
            print(
                f"{name}: {args.scale}x the data took {large.best() / small.best():.2f}x the wall time per epoch, "
                f"{large.best('cpu') / small.best('cpu'):.2f}x the CPU time (target <= {1.1 * args.scale:.0f}x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
