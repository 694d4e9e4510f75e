"""The joint image-text model: a trained DeViSE ready to embed and search."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import keras
import numpy as np

from devise.datasets.text import Vocabulary
from devise.encoders.projector import LinearProjector
from devise.encoders.text_encoder import LSTMTextEncoder
from devise.errors import DataFormatError

MODEL_FILE = "model.keras"
VOCABULARY_FILE = "vocabulary.json"
META_FILE = "model.json"


def build_joint_keras_model(
    *,
    image_dim: int,
    vocabulary_size: int,
    word_dim: int,
    joint_dim: int,
    lstm_units: int,
    max_caption_length: int,
    embedding_matrix: np.ndarray | None = None,
    train_word_vectors: bool = False,
    projector_bias: bool = False,
    text_dropout: float = 0.0,
) -> keras.Model:
    """Functional model ``{image_features, token_ids} -> concat(image_emb, text_emb)``.

    The concatenated output is what :class:`devise.losses.HingeRankLoss`
    expects; the two halves are unit vectors in the joint space.
    """
    # === Layers ===
    projector = LinearProjector(joint_dim, use_bias=projector_bias, name="image_projector")
    text_encoder = LSTMTextEncoder(
        vocabulary_size,
        word_dim,
        joint_dim,
        lstm_units=lstm_units,
        train_word_vectors=train_word_vectors,
        dropout=text_dropout,
        embedding_matrix=embedding_matrix,
        name="text_encoder",
    )
    # === Functional graph ===
    image_features = keras.Input((image_dim,), name="image_features")
    token_ids = keras.Input((max_caption_length,), dtype="int32", name="token_ids")
    joint = keras.layers.Concatenate(name="joint")([projector(image_features), text_encoder(token_ids)])
    return keras.Model({"image_features": image_features, "token_ids": token_ids}, joint, name="devise")


class DeViSEModel:
    """A trained joint embedding: image features and captions to unit vectors.

    Args:
        keras_model: the model from :func:`build_joint_keras_model`.
        vocabulary: the training vocabulary.
        max_caption_length: token ids per caption.
        image_fingerprint: fingerprint of the feature extractor whose
            features the image side expects.

    Example:
    ```python
    model = devise.DeViSEModel.load("runs/demo-20261127-101500")
    text = model.embed_texts(["two red circles"])           # (1, joint_dim)
    images = model.embed_image_features(features)           # (N, joint_dim)
    best = np.argsort(-(images @ text[0]))[:10]
    ```
    """

    def __init__(
        self,
        keras_model: keras.Model,
        vocabulary: Vocabulary,
        max_caption_length: int,
        image_fingerprint: str = "",
    ):
        self.keras_model = keras_model
        self.vocabulary = vocabulary
        self.max_caption_length = max_caption_length
        self.image_fingerprint = image_fingerprint

    @property
    def image_projector(self) -> LinearProjector:
        return self.keras_model.get_layer("image_projector")

    @property
    def text_encoder(self) -> LSTMTextEncoder:
        return self.keras_model.get_layer("text_encoder")

    @property
    def joint_dim(self) -> int:
        return self.image_projector.output_dim

    @property
    def image_dim(self) -> int:
        return int(self.image_projector.dense.kernel.shape[0])

    def fingerprint(self) -> str:
        """A hash of every weight, the vocabulary and the image extractor's fingerprint.

        Anything built from this model's embeddings (an image index) stores
        it, and readers refuse a mismatch instead of mixing two models'
        vector spaces.
        """
        digest = hashlib.sha256()
        digest.update(self.image_fingerprint.encode())
        digest.update("\n".join(self.vocabulary.words).encode())
        for weight in self.keras_model.get_weights():
            array = np.ascontiguousarray(weight)
            digest.update(str(array.shape).encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def embed_image_features(self, features: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
        """Joint-space unit vectors ``(N, joint_dim)`` of CNN features ``(N, image_dim)``."""
        features = np.asarray(features, np.float32)
        out = np.empty((len(features), self.joint_dim), np.float32)
        for start in range(0, len(features), batch_size):
            out[start : start + batch_size] = keras.ops.convert_to_numpy(
                self.image_projector(features[start : start + batch_size])
            )
        return out

    def embed_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        """Joint-space unit vectors ``(N, joint_dim)`` of captions or queries."""
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a list of strings; wrap a single query in a list")
        out = np.empty((len(texts), self.joint_dim), np.float32)
        for start in range(0, len(texts), batch_size):
            ids = self.vocabulary.encode(list(texts[start : start + batch_size]), self.max_caption_length)
            out[start : start + len(ids)] = keras.ops.convert_to_numpy(self.text_encoder(ids, training=False))
        return out

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``model.keras``, ``vocabulary.json`` and ``model.json`` into ``directory``.

        Each file is written under a temporary name and renamed into place,
        so an interrupted save never leaves a half-written model.
        """
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        tmp_model = os.path.join(directory, f".tmp-{os.getpid()}-{MODEL_FILE}")
        self.keras_model.save(tmp_model)
        os.replace(tmp_model, os.path.join(directory, MODEL_FILE))
        tmp_vocab = os.path.join(directory, f".tmp-{os.getpid()}-{VOCABULARY_FILE}")
        self.vocabulary.save(tmp_vocab)
        os.replace(tmp_vocab, os.path.join(directory, VOCABULARY_FILE))
        meta = {
            "max_caption_length": self.max_caption_length,
            "image_fingerprint": self.image_fingerprint,
            "joint_dim": self.joint_dim,
        }
        tmp_meta = os.path.join(directory, f".tmp-{os.getpid()}-{META_FILE}")
        with open(tmp_meta, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        os.replace(tmp_meta, os.path.join(directory, META_FILE))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "DeViSEModel":
        """Load a model saved by :meth:`save` (e.g. a training run directory)."""
        directory = os.fspath(directory)
        paths = [os.path.join(directory, name) for name in (MODEL_FILE, VOCABULARY_FILE, META_FILE)]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise DataFormatError(
                f"{directory}: not a devise model directory (missing {', '.join(os.path.basename(m) for m in missing)})"
            )
        try:
            with open(paths[2], encoding="utf-8") as f:
                meta = json.load(f)
            max_caption_length = int(meta["max_caption_length"])
            image_fingerprint = str(meta.get("image_fingerprint") or "")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A hand-edited or truncated model.json must not end in a traceback.
            raise DataFormatError(
                f"{paths[2]}: not a devise model description ({type(exc).__name__}: {exc}); "
                "it needs an integer 'max_caption_length'"
            ) from None
        try:
            keras_model = keras.saving.load_model(paths[0], compile=False)
        except (OSError, ValueError, KeyError) as exc:
            raise DataFormatError(f"{directory}: cannot load model ({exc})") from None
        return cls(keras_model, Vocabulary.load(paths[1]), max_caption_length, image_fingerprint)
