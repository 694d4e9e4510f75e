"""Zero-shot classifiers over cached image features.

Every method here works on image features ``(N, D)`` (e.g. cached VGG16
fc7) and integer class ids, and scores images against any set of candidate
classes, so one trained method can be evaluated among unseen labels only,
among all labels, or among seen labels. Class ids index one shared list of
classes, seen and unseen together (``label_vectors`` has a row for each).

* :class:`DeViSEClassifier`: a linear map ``M`` from features into the
  word-vector space, trained with the hinge rank loss against the training
  labels' vectors; scores are cosines to the candidates' vectors.
* :class:`SoftmaxClassifier`: a linear softmax over the training classes;
  it cannot score a class it never saw (``-inf``).
* :class:`ConSE`: the softmax's top-T probabilities mix the training
  labels' vectors into an embedding; no map is trained.
* :func:`random_vectors_control`: DeViSE trained against random label
  vectors, the control that shows the word vectors carry the information.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from devise.zeroshot.label_hinge import LabelHingeRankLoss
from devise.zeroshot.labels import random_label_vectors

_OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adagrad": keras.optimizers.Adagrad,
    "sgd": keras.optimizers.SGD,
}


class _LinearTrainer:
    """Training options every Keras-trained method shares."""

    def __init__(
        self,
        *,
        epochs: int,
        batch_size: int,
        learning_rate: float,
        optimizer: str,
        standardize: bool,
        seed: int,
    ):
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(_OPTIMIZERS)}, got {optimizer!r}")
        if epochs < 1 or batch_size < 1 or not learning_rate > 0:
            raise ValueError(
                f"epochs and batch_size must be >= 1 and learning_rate > 0, got {epochs}, {batch_size}, {learning_rate}"
            )
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.learning_rate = float(learning_rate)
        self.optimizer = optimizer
        self.standardize = bool(standardize)
        self.seed = int(seed)
        self.history: dict[str, list[float]] = {}

    def _inputs(self, features: np.ndarray):
        """The model input and the (optionally standardised) tensor after it."""
        inputs = keras.Input((features.shape[1],), name="image_features")
        if not self.standardize:
            return inputs, inputs
        # Training statistics only: the test set must not shape the model.
        mean = features.mean(axis=0, dtype=np.float64)
        variance = features.var(axis=0, dtype=np.float64)
        standardized = keras.layers.Normalization(mean=mean, variance=variance, name="standardize")(inputs)
        return inputs, standardized

    def _fit(self, model: keras.Model, loss: keras.losses.Loss, features: np.ndarray, targets: np.ndarray) -> None:
        model.compile(optimizer=_OPTIMIZERS[self.optimizer](learning_rate=self.learning_rate), loss=loss)
        batch_size = min(self.batch_size, len(features))
        # One repeated tf.data pipeline instead of NumPy arrays: fit() then
        # keeps one iterator for every epoch, which on small feature sets
        # is several times faster than rebuilding it each epoch. Batching
        # before repeat() keeps each epoch exactly one pass over the data;
        # the shuffle is seeded and differs between epochs.
        dataset = (
            tf.data.Dataset.from_tensor_slices((features, targets))
            .shuffle(len(features), seed=self.seed, reshuffle_each_iteration=True)
            .batch(batch_size)
            .repeat()
        )
        history = model.fit(
            dataset,
            epochs=self.epochs,
            steps_per_epoch=math.ceil(len(features) / batch_size),
            shuffle=False,  # the dataset shuffles itself
            verbose=0,
        )
        self.history = {name: [float(v) for v in values] for name, values in history.history.items()}


class DeViSEClassifier(_LinearTrainer):
    """DeViSE on cached features: a linear map into the word-vector space.

    ``fit`` learns ``M`` (no bias) so that, for each training image ``v``
    with label ``y``, ``t_y . M v`` beats every other training label's
    ``t_j . M v`` by the margin (:class:`LabelHingeRankLoss`; ``t`` are the
    unit-norm label vectors). Only the training classes' vectors are used
    in training. ``scores`` is the cosine between ``M v`` and each
    candidate's label vector, so any class with a label vector, seen or
    not, can be scored. ``M`` starts at zero; the shuffling is seeded, and
    no global random state is touched.

    Args:
        label_vectors: ``(C, dim)`` label vectors of every class (seen and
            unseen), row ``i`` for class id ``i``; rows are scaled to unit
            norm here.
        margin: hinge margin (0.1 in the paper).
        epochs: passes over the training features.
        batch_size: images per step.
        learning_rate: optimizer step size.
        optimizer: ``"adam"``, ``"adagrad"`` (the paper's) or ``"sgd"``.
        standardize: standardise features with the training mean and
            variance first (kept inside the Keras model).
        seed: seed of the shuffling (``M`` starts at zero).

    Example:
    ```python
    labels = devise.zeroshot.label_vectors(class_names, word_vectors)
    devise_clf = devise.zeroshot.DeViSEClassifier(labels.vectors, epochs=100).fit(train_x, train_y)
    scores = devise_clf.scores(test_x, candidates=unseen_ids)   # (N, len(unseen_ids))
    ```

    Reference:
        Frome et al., "DeViSE: A Deep Visual-Semantic Embedding Model",
        NIPS 2013.
    """

    def __init__(
        self,
        label_vectors: np.ndarray,
        *,
        margin: float = 0.1,
        epochs: int = 100,
        batch_size: int = 128,
        learning_rate: float = 0.01,
        optimizer: str = "adam",
        standardize: bool = True,
        seed: int = 0,
    ):
        super().__init__(
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            optimizer=optimizer,
            standardize=standardize,
            seed=seed,
        )
        self.label_vectors = _unit_rows(label_vectors)
        self.margin = float(margin)
        self.train_classes: np.ndarray | None = None
        self.model: keras.Model | None = None
        self.embedding_model: keras.Model | None = None

    @property
    def num_classes(self) -> int:
        return int(self.label_vectors.shape[0])

    def fit(
        self, features: np.ndarray, labels: np.ndarray, *, classes: Sequence[int] | None = None
    ) -> DeViSEClassifier:
        """Learn the map from training features and class ids.

        Args:
            features: ``(N, D)`` training image features.
            labels: ``(N,)`` class ids.
            classes: the training label set the hinge ranks against (default:
                the distinct ``labels``); must include every label.

        Returns:
            ``self``.

        Raises:
            ValueError: shapes disagree, a label is out of range or not in
                ``classes``, or a training class's label vector is all zero.
        """
        features, labels = _check_xy(features, labels, self.num_classes)
        train_classes = _training_classes(labels, classes, self.num_classes)
        targets = _label_vectors_of(self.label_vectors, train_classes)
        inputs, x = self._inputs(features)
        # M starts at zero, so it only ever holds directions the hinge asks
        # for: a random start would keep random components that no training
        # label constrains, and they blur the cosines with unseen labels.
        projection = keras.layers.Dense(
            self.label_vectors.shape[1], use_bias=False, kernel_initializer="zeros", name="projection"
        )
        embedded = projection(x)
        label_scores = keras.layers.Dense(len(train_classes), use_bias=False, trainable=False, name="label_scores")
        model = keras.Model(inputs, label_scores(embedded), name="devise_zeroshot")
        label_scores.set_weights([targets.T])
        position = {int(c): i for i, c in enumerate(train_classes)}
        self._fit(model, LabelHingeRankLoss(self.margin), features, np.array([position[int(y)] for y in labels]))
        self.train_classes = train_classes
        self.model = model
        self.embedding_model = keras.Model(inputs, embedded, name="devise_embedding")
        return self

    def embed(self, features: np.ndarray) -> np.ndarray:
        """``M v`` of each image, scaled to unit norm: ``(N, dim)`` float32."""
        if self.embedding_model is None:
            raise RuntimeError("call fit() before embed() or scores()")
        features = _check_features(features)
        embedded = _apply(self.embedding_model, features)
        return _unit_rows(embedded)

    def scores(self, features: np.ndarray, candidates: Sequence[int] | None = None) -> np.ndarray:
        """Cosine of each image's embedding with each candidate's label vector.

        Args:
            features: ``(N, D)`` image features.
            candidates: class ids to score (default: every class).

        Returns:
            float32 ``(N, len(candidates))``.
        """
        candidates = _candidates(candidates, self.num_classes)
        return self.embed(features) @ self.label_vectors[candidates].T


def random_vectors_control(
    num_classes: int,
    dim: int,
    *,
    seed: int = 0,
    **kwargs,
) -> DeViSEClassifier:
    """DeViSE trained and scored against random label vectors (the paper's control).

    Every class, seen or unseen, gets a random unit vector
    (:func:`~devise.zeroshot.random_label_vectors`); the classifier learns
    the training classes as well as DeViSE does, but its zero-shot accuracy
    is at chance, because an unseen class's random vector says nothing about
    its images.

    Args:
        num_classes: number of classes (seen and unseen).
        dim: dimension of the label vectors (use the word vectors').
        seed: seed of the random vectors and of training.
        **kwargs: the other arguments of :class:`DeViSEClassifier`.

    Returns:
        An unfitted :class:`DeViSEClassifier`.
    """
    vectors = random_label_vectors(num_classes, dim, seed=seed)
    return DeViSEClassifier(vectors, seed=seed, **kwargs)


class SoftmaxClassifier(_LinearTrainer):
    """A linear softmax classifier over the training classes.

    It can only score classes it was trained on: ``scores`` gives the log
    probability for those and ``-inf`` for any other candidate, so every
    unseen candidate ties at the bottom. Under the evaluation's rule that a
    tie counts against the true class, it scores 0 on unseen-only
    candidates, which is the point: it is the upper baseline for seen
    classes, not a zero-shot method. :class:`ConSE` builds on it.

    Args:
        num_classes: number of classes (seen and unseen); class ids run
            from 0 to ``num_classes - 1``.
        epochs: passes over the training features.
        batch_size: images per step.
        learning_rate: optimizer step size.
        optimizer: ``"adam"``, ``"adagrad"`` or ``"sgd"``.
        standardize: standardise features with the training mean and
            variance first.
        seed: seed of the weights and the shuffling.

    Example:
    ```python
    softmax = devise.zeroshot.SoftmaxClassifier(num_classes=len(class_names)).fit(train_x, train_y)
    probabilities = softmax.predict_proba(test_x)      # (N, len(softmax.train_classes))
    ```
    """

    def __init__(
        self,
        num_classes: int,
        *,
        epochs: int = 100,
        batch_size: int = 128,
        learning_rate: float = 0.01,
        optimizer: str = "adam",
        standardize: bool = True,
        seed: int = 0,
    ):
        super().__init__(
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            optimizer=optimizer,
            standardize=standardize,
            seed=seed,
        )
        self.num_classes = int(num_classes)
        self.train_classes: np.ndarray | None = None
        self.model: keras.Model | None = None

    def fit(
        self, features: np.ndarray, labels: np.ndarray, *, classes: Sequence[int] | None = None
    ) -> SoftmaxClassifier:
        """Train the softmax on training features and class ids.

        Args:
            features: ``(N, D)`` training image features.
            labels: ``(N,)`` class ids.
            classes: the classes the softmax ranges over (default: the
                distinct ``labels``); must include every label.

        Returns:
            ``self``.
        """
        features, labels = _check_xy(features, labels, self.num_classes)
        train_classes = _training_classes(labels, classes, self.num_classes)
        inputs, x = self._inputs(features)
        initializer = keras.initializers.GlorotUniform(seed=self.seed)
        logits = keras.layers.Dense(len(train_classes), kernel_initializer=initializer, name="logits")(x)
        model = keras.Model(inputs, logits, name="softmax_classifier")
        position = {int(c): i for i, c in enumerate(train_classes)}
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self._fit(model, loss, features, np.array([position[int(y)] for y in labels]))
        self.train_classes = train_classes
        self.model = model
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Probabilities over :attr:`train_classes`: float32 ``(N, len(train_classes))``."""
        return np.exp(self._log_proba(features))

    def _log_proba(self, features: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("call fit() before predict_proba() or scores()")
        logits = _apply(self.model, _check_features(features)).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        return (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)

    def scores(self, features: np.ndarray, candidates: Sequence[int] | None = None) -> np.ndarray:
        """Log probability of each candidate; ``-inf`` for classes not trained on.

        Args:
            features: ``(N, D)`` image features.
            candidates: class ids to score (default: every class).

        Returns:
            float32 ``(N, len(candidates))``.
        """
        candidates = _candidates(candidates, self.num_classes)
        log_proba = self._log_proba(features)
        column = {int(c): i for i, c in enumerate(self.train_classes)}
        out = np.full((log_proba.shape[0], len(candidates)), -np.inf, dtype=np.float32)
        for j, class_id in enumerate(candidates):
            if int(class_id) in column:
                out[:, j] = log_proba[:, column[int(class_id)]]
        return out


class ConSE:
    """Convex combination of semantic embeddings (ConSE).

    An image is embedded as the probability-weighted mean of the label
    vectors of its ``T`` most probable training classes under a softmax
    classifier, ``f(x) = sum_t p_t s_t / sum_t p_t``, scaled to unit norm;
    its score for a candidate is the cosine with the candidate's label
    vector. No map into the word space is trained.

    Args:
        softmax: the :class:`SoftmaxClassifier` (fitted, or fitted by
            :meth:`fit`); class ids are shared with ``label_vectors``.
        label_vectors: ``(C, dim)`` label vectors of every class; rows are
            scaled to unit norm here.
        top_t: ``T``, how many of the most probable training classes to mix
            (10 in the paper; fewer when there are fewer training classes).

    Example:
    ```python
    softmax = devise.zeroshot.SoftmaxClassifier(len(class_names)).fit(train_x, train_y)
    conse = devise.zeroshot.ConSE(softmax, labels.vectors, top_t=10)
    scores = conse.scores(test_x, candidates=unseen_ids)
    ```

    Reference:
        Norouzi et al., "Zero-Shot Learning by Convex Combination of
        Semantic Embeddings", ICLR 2014.
    """

    def __init__(self, softmax: SoftmaxClassifier, label_vectors: np.ndarray, *, top_t: int = 10):
        if top_t < 1:
            raise ValueError(f"top_t must be >= 1, got {top_t}")
        self.softmax = softmax
        self.label_vectors = _unit_rows(label_vectors)
        if self.label_vectors.shape[0] != softmax.num_classes:
            raise ValueError(
                f"{self.label_vectors.shape[0]} label vectors for a softmax over {softmax.num_classes} classes"
            )
        self.top_t = int(top_t)

    def fit(self, features: np.ndarray, labels: np.ndarray, *, classes: Sequence[int] | None = None) -> ConSE:
        """Fit the underlying softmax (see :meth:`SoftmaxClassifier.fit`); returns ``self``."""
        self.softmax.fit(features, labels, classes=classes)
        return self

    def embed(self, features: np.ndarray) -> np.ndarray:
        """The unit-norm ConSE embedding of each image: float32 ``(N, dim)``."""
        probabilities = self.softmax.predict_proba(features)
        train_classes = self.softmax.train_classes
        _label_vectors_of(self.label_vectors, train_classes)  # a zero training vector would mix in nothing
        t = min(self.top_t, len(train_classes))
        # Stable sort: equal probabilities keep class order, so results are reproducible.
        top = np.argsort(-probabilities, axis=1, kind="stable")[:, :t]
        weights = np.take_along_axis(probabilities, top, axis=1).astype(np.float64)
        weights /= np.maximum(weights.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
        mixed = np.einsum("nt,ntd->nd", weights, self.label_vectors[train_classes[top]].astype(np.float64))
        return _unit_rows(mixed)

    def scores(self, features: np.ndarray, candidates: Sequence[int] | None = None) -> np.ndarray:
        """Cosine of each image's ConSE embedding with each candidate's label vector.

        Args:
            features: ``(N, D)`` image features.
            candidates: class ids to score (default: every class).

        Returns:
            float32 ``(N, len(candidates))``.
        """
        candidates = _candidates(candidates, self.softmax.num_classes)
        return self.embed(features) @ self.label_vectors[candidates].T


def _apply(model: keras.Model, features: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``model`` on ``features`` in chunks, called directly.

    ``predict()`` builds a data pipeline and traces a function on every new
    input size, which costs far more than these small linear models do.
    """
    outputs = [
        keras.ops.convert_to_numpy(model(features[start : start + chunk], training=False))
        for start in range(0, len(features), chunk)
    ]
    if not outputs:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    return np.concatenate(outputs).astype(np.float32)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _check_features(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (images, D), got shape {features.shape}")
    return features


def _check_xy(features: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    features = _check_features(features)
    labels = np.asarray(labels)
    if labels.shape != (len(features),):
        raise ValueError(f"labels must have shape ({len(features)},), got {labels.shape}")
    if len(labels) == 0:
        raise ValueError("no training examples")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be class ids in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return features, labels.astype(np.int64)


def _training_classes(labels: np.ndarray, classes: Sequence[int] | None, num_classes: int) -> np.ndarray:
    present = np.unique(labels)
    if classes is None:
        train_classes = present
    else:
        train_classes = np.asarray(sorted(set(int(c) for c in classes)), dtype=np.int64)
        outside = np.setdiff1d(present, train_classes)
        if len(outside):
            raise ValueError(f"labels {outside.tolist()} are not in the training classes")
        if len(train_classes) and (train_classes[0] < 0 or train_classes[-1] >= num_classes):
            raise ValueError(f"training classes must be ids in [0, {num_classes})")
    if len(train_classes) < 2:
        raise ValueError(f"need at least 2 training classes, got {len(train_classes)}")
    return train_classes


def _label_vectors_of(label_vectors: np.ndarray, classes: np.ndarray) -> np.ndarray:
    targets = label_vectors[classes]
    zero = classes[np.linalg.norm(targets, axis=1) == 0]
    if len(zero):
        raise ValueError(f"training classes {zero.tolist()} have an all-zero label vector (no word vector)")
    return targets


def _candidates(candidates: Sequence[int] | None, num_classes: int) -> np.ndarray:
    if candidates is None:
        return np.arange(num_classes)
    candidates = np.asarray(candidates, dtype=np.int64).reshape(-1)
    if len(candidates) and (candidates.min() < 0 or candidates.max() >= num_classes):
        raise ValueError(f"candidates must be class ids in [0, {num_classes})")
    return candidates
