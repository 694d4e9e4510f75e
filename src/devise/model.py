"""The joint image-text model: a Keras model with named outputs, and a trained DeViSE ready to embed and search.

:class:`DeViSEJointModel` is the Keras model (in the keras-hub style: layers,
functional graph, config), with inputs ``{"image_features", "tokens"}`` and
outputs ``{"image", "text"}``; its word table and tokenisation settings live
in its text encoder, so ``model.keras`` alone embeds raw strings.
:class:`DeViSEModel` wraps it with numpy-in, numpy-out methods.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from devise.atomicfile import atomic_path
from devise.encoders.projector import LinearProjector
from devise.encoders.text_encoder import TextEncoder
from devise.errors import DataFormatError
from devise.numpy_model import TextQueryMethods, model_fingerprint

MODEL_FILE = "model.keras"
META_FILE = "model.json"


@keras.saving.register_keras_serializable(package="devise")
class DeViSEJointModel(keras.Model):
    """``{image_features, tokens} -> {"image": unit vectors, "text": unit vectors}``.

    Row ``k`` of both outputs embeds pair ``k`` in the joint space. The
    ranking loss given to :meth:`compile` receives the outputs as they are
    (a dict), so no caller splits a tensor by convention.

    Args:
        image_projector: the image side (a :class:`LinearProjector`).
        text_encoder: the text side (a :class:`TextEncoder`).
        image_dim: size of the CNN features.
        image_fingerprint: fingerprint of the feature extractor whose
            features the image side expects.
        **kwargs: passed to ``keras.Model`` (e.g. ``name``).

    Example:
    ```python
    model = DeViSEJointModel(LinearProjector(256), TextEncoder(words, 50, 256), image_dim=1280)
    model.compile(optimizer="adam", loss=devise.losses.HingeRankLoss(0.1))
    tokens, _ = model.text_encoder.encode_texts(captions)
    # String tokens go through tf.data: Keras' numpy adapter rejects string arrays.
    data = tf.data.Dataset.from_tensor_slices(({"image_features": x, "tokens": tokens.astype(str)}, image_ids))
    model.fit(data.batch(32), epochs=5)
    ```
    """

    def __init__(
        self,
        image_projector: LinearProjector,
        text_encoder: TextEncoder,
        image_dim: int,
        image_fingerprint: str = "",
        **kwargs,
    ):
        # === Functional graph ===
        image_features = keras.Input((image_dim,), name="image_features")
        tokens = keras.Input((text_encoder.max_length,), dtype="string", name="tokens")
        outputs = {"image": image_projector(image_features), "text": text_encoder(tokens)}
        super().__init__(inputs={"image_features": image_features, "tokens": tokens}, outputs=outputs, **kwargs)
        # === Config ===
        self.image_projector = image_projector
        self.text_encoder = text_encoder
        self.image_dim = image_dim
        self.image_fingerprint = image_fingerprint
        self.ranking_loss = None

    def compile(self, optimizer="adam", loss=None, **kwargs):
        """Like ``keras.Model.compile``; ``loss`` is called as ``loss(y_true, {"image", "text"})``."""
        self.ranking_loss = loss
        super().compile(optimizer=optimizer, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if self.ranking_loss is None:
            raise ValueError("compile the model with a ranking loss first")
        # Under a distribution strategy this runs once per replica, and the loss gathers the
        # other replicas' embeddings itself (its negatives span the global batch). Keras scales
        # each replica's share by 1 / replicas; layer losses must be scaled the same way.
        loss = self.ranking_loss(y, y_pred, sample_weight)
        if self.losses:
            loss = loss + self._aggregate_additional_loss(ops.sum(self.losses))
        return loss

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3's TensorFlow trainer builds a model under a distribution strategy from a first
        # batch averaged across replicas, which fails on the string tokens (no mean of strings).
        # This model is built when constructed and its loss holds nothing to build, so the
        # optimizer is all that is left; Keras' path is kept for compiled metrics.
        metrics, optimizer = getattr(self, "_compile_metrics", None), getattr(self, "optimizer", None)
        if metrics is not None and not metrics.built:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if optimizer is not None and not optimizer.built:
            with self.distribute_strategy.scope():
                optimizer.build(self.trainable_variables)

    def train_step(self, data):
        return _reducible_across_workers(super().train_step(data))

    def test_step(self, data):
        return _reducible_across_workers(super().test_step(data))

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_projector": keras.saving.serialize_keras_object(self.image_projector),
            "text_encoder": keras.saving.serialize_keras_object(self.text_encoder),
            "image_dim": self.image_dim,
            "image_fingerprint": self.image_fingerprint,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("image_projector", "text_encoder"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _reducible_across_workers(logs: dict) -> dict:
    """A step's logs as Keras 3 can average them across workers.

    Under ``MultiWorkerMirroredStrategy`` Keras' TensorFlow trainer averages
    each log with ``strategy.reduce("MEAN", value, axis=0)``, which fails on
    the scalars every step returns (tensorflow/tensorflow#72388: ``fit`` fails
    with "Invalid reduction dimension 0"); shape ``(1,)`` averages to the
    same scalar.
    """
    strategy = tf.distribute.get_strategy()
    multi_worker = getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or not multi_worker:
        return logs
    return {key: ops.reshape(value, (1,)) for key, value in logs.items()}


def build_devise_model(
    *,
    words: Sequence[str],
    embedding_matrix: np.ndarray,
    image_dim: int,
    joint_dim: int,
    text_encoder: str = "lstm",
    units: int = 256,
    max_caption_length: int = 32,
    train_word_vectors: bool = False,
    word_vectors_dtype: str = "float32",
    lowercase: bool = True,
    text_dropout: float = 0.0,
    project_text: bool = True,
    image_dropout: float = 0.0,
    standardize_features: bool = False,
    projector_bias: bool = False,
    image_fingerprint: str = "",
) -> DeViSEJointModel:
    """A :class:`DeViSEJointModel` from a word table (see :func:`devise.embeddings.build_word_table`).

    Args:
        words: the table's words; ``embedding_matrix`` has two more rows
            (padding, unknown) before them.
        embedding_matrix: ``(len(words) + 2, word_dim)`` initial word vectors.
        image_dim: size of the CNN features.
        joint_dim: size of the joint space.
        text_encoder: ``"lstm"``, ``"gru"``, ``"bilstm"`` or ``"mean"``.
        units: state size of the recurrent text encoders.
        max_caption_length: tokens kept per caption.
        train_word_vectors: fine-tune the word vectors.
        word_vectors_dtype: ``"float32"`` or ``"float16"`` storage of the table.
        lowercase: lowercase text before lookup.
        text_dropout: dropout on word vectors during training.
        project_text: map the text encoder's output linearly to the joint
            space (``False``: the output itself, e.g. the mean word vector).
        image_dropout: dropout on image features during training.
        standardize_features: standardise image features with statistics
            stored in the model (set them with
            ``model.image_projector.set_feature_statistics(train_features)``).
        projector_bias: bias in the image projection.
        image_fingerprint: the feature extractor's fingerprint.
    """
    # === Layers ===
    projector = LinearProjector(
        joint_dim,
        use_bias=projector_bias,
        dropout=image_dropout,
        standardize=standardize_features,
        name="image_projector",
    )
    encoder = TextEncoder(
        words,
        int(embedding_matrix.shape[1]),
        joint_dim,
        kind=text_encoder,
        units=units,
        train_word_vectors=train_word_vectors,
        dropout=text_dropout,
        word_vectors_dtype=word_vectors_dtype,
        lowercase=lowercase,
        max_length=max_caption_length,
        project=project_text,
        embedding_matrix=embedding_matrix,
        name="text_encoder",
    )
    # === Model ===
    return DeViSEJointModel(projector, encoder, image_dim=image_dim, image_fingerprint=image_fingerprint, name="devise")


class DeViSEModel(TextQueryMethods):
    """A trained joint embedding: image features and raw text to unit vectors.

    Args:
        keras_model: a :class:`DeViSEJointModel`.

    Example:
    ```python
    model = devise.DeViSEModel.load("runs/demo-20261127-101500")   # or .../model.keras
    text = model.embed_texts(["two crimson kites"])          # (1, joint_dim)
    images = model.embed_image_features(features)            # (N, joint_dim)
    best = np.argsort(-(images @ text[0]))[:10]
    model.unknown_words("a zxqv dog")                        # ["zxqv"]
    ```
    """

    def __init__(self, keras_model: DeViSEJointModel):
        if not isinstance(keras_model, DeViSEJointModel):
            raise TypeError(f"DeViSEModel wraps a DeViSEJointModel, got {type(keras_model).__name__}")
        self.keras_model = keras_model
        self._encode_tokens = None  # the text encoder as one compiled graph, made on first use

    @property
    def image_projector(self) -> LinearProjector:
        return self.keras_model.image_projector

    @property
    def text_encoder(self) -> TextEncoder:
        return self.keras_model.text_encoder

    @property
    def image_fingerprint(self) -> str:
        return self.keras_model.image_fingerprint

    @property
    def joint_dim(self) -> int:
        return self.image_projector.output_dim

    @property
    def image_dim(self) -> int:
        return self.keras_model.image_dim

    def fingerprint(self) -> str:
        """A hash of every weight, the word table and the image extractor's fingerprint.

        Anything built from this model's embeddings (an image index) stores
        it, and readers refuse a mismatch instead of mixing two models'
        vector spaces. Computed afresh each call (weights may have changed).
        """
        return model_fingerprint(self.image_fingerprint, self.words, self.keras_model.get_weights())

    # -- text (tokenize, unknown_words, check_query: TextQueryMethods) ---------
    def embed_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        """Joint-space unit vectors ``(N, joint_dim)`` of captions or queries.

        Words missing from the table embed as the unknown word; see
        :meth:`check_query` to refuse queries with no known word.
        """
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a list of strings; wrap a single query in a list")
        texts = list(texts)
        if self._encode_tokens is None:
            # Compiled once for any batch size: run eagerly, the LSTM steps through Python (4x slower,
            # 1.1 s instead of 0.26 s for 500 captions on 2 CPU cores: most of a validation pass).
            encoder = self.text_encoder
            self._encode_tokens = tf.function(
                lambda tokens: encoder(tokens, training=False),
                input_signature=[tf.TensorSpec([None, None], tf.string)],
                autograph=False,
            )
        out = np.empty((len(texts), self.joint_dim), np.float32)
        for start in range(0, len(texts), batch_size):
            tokens, _ = self.text_encoder.encode_texts(texts[start : start + batch_size])
            out[start : start + len(tokens)] = self._encode_tokens(tf.constant(tokens.astype(str))).numpy()
        return out

    def embed_image_features(self, features: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
        """Joint-space unit vectors ``(N, joint_dim)`` of CNN features ``(N, image_dim)``."""
        features = np.asarray(features, np.float32)
        out = np.empty((len(features), self.joint_dim), np.float32)
        for start in range(0, len(features), batch_size):
            out[start : start + batch_size] = keras.ops.convert_to_numpy(
                self.image_projector(features[start : start + batch_size], training=False)
            )
        return out

    # -- files ------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """Write ``model.keras`` (everything needed) and ``model.json`` (a readable summary) into ``directory``.

        Each file is written under a temporary name and renamed into place,
        so an interrupted save never leaves a half-written model.
        """
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        with atomic_path(os.path.join(directory, MODEL_FILE)) as tmp:
            self.keras_model.save(tmp)
        encoder = self.text_encoder
        meta = {
            "joint_dim": self.joint_dim,
            "image_dim": self.image_dim,
            "image_fingerprint": self.image_fingerprint,
            "text_encoder": encoder.kind,
            "words": len(encoder.vocabulary),
            "word_dim": encoder.word_dim,
            "word_vectors_dtype": encoder.word_vectors_dtype,
            "max_caption_length": self.max_caption_length,
            "lowercase": encoder.lowercase,
        }
        with atomic_path(os.path.join(directory, META_FILE)) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DeViSEModel:
        """Load a model from a ``model.keras`` file or a directory holding one (e.g. a run directory)."""
        path = os.fspath(path)
        file = os.path.join(path, MODEL_FILE) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise DataFormatError(f"{path}: not a devise model (no {MODEL_FILE})")
        try:
            keras_model = keras.saving.load_model(file, compile=False)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataFormatError(f"{file}: cannot load model ({type(exc).__name__}: {exc})") from None
        if not isinstance(keras_model, DeViSEJointModel):
            raise DataFormatError(
                f"{file}: a Keras model but not a devise joint model ({type(keras_model).__name__}); "
                "retrain it with this version of devise"
            )
        return cls(keras_model)
