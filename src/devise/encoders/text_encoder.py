"""Caption encoder: raw text -> word tokens -> word vectors -> a sequence encoder -> the joint space.

The layer carries its word table (the words, as a Keras ``StringLookup``, and
their vectors, as a weight) and its tokenisation settings in its config, so a
saved model embeds raw strings with no other file.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from devise.datasets.text import tokenize
from devise.embeddings.word_table import UNKNOWN_WORD
from devise.encoders.projector import L2Normalize

TEXT_ENCODER_KINDS = ("lstm", "gru", "bilstm", "mean")
#: What the tokens of an empty caption become (the lookup's out-of-vocabulary token).
UNKNOWN_TOKEN = UNKNOWN_WORD
_PADDING = ""


@keras.saving.register_keras_serializable(package="devise")
class TextEncoder(keras.layers.Layer):
    """Word tokens -> word vectors -> LSTM / GRU / BiLSTM / masked mean -> linear map -> unit vector.

    Inputs are string tokens ``(B, L)`` padded with ``""`` (see
    :meth:`encode_texts`, which tokenises raw text the way the word vectors
    spell words). Padding is masked, so a caption gives the same vector
    alone or in a batch of longer ones. Token ids come from a Keras
    ``StringLookup`` over ``vocabulary``: 0 is padding, 1 the unknown word,
    then the words in order.

    Args:
        vocabulary: the words of the table, one per row after the two
            reserved rows (see :mod:`devise.embeddings.word_table`).
        word_dim: size of the word vectors.
        output_dim: size of the joint space (ignored with ``project=False``,
            where it must equal the encoder's width).
        kind: ``"lstm"`` (the default), ``"gru"``, ``"bilstm"`` or
            ``"mean"`` (masked mean of the word vectors).
        units: state size of the recurrent encoders (BiLSTM: per direction).
        train_word_vectors: fine-tune the word vectors (only the rows of
            words seen in training captions ever receive a gradient).
        dropout: dropout on the word vectors during training.
        word_vectors_dtype: storage of the table: ``"float32"`` or
            ``"float16"`` (half the file size; frozen tables only).
        lowercase: lowercase text before lookup (GloVe 6B is lowercase).
        max_length: tokens kept per caption.
        project: apply the linear map to the joint space (``False`` keeps the
            encoder's output, e.g. the mean word vector of the regression
            baseline).
        embedding_matrix: ``(len(vocabulary) + 2, word_dim)`` initial rows.
            Not part of the config: the values are saved with the weights.
        **kwargs: passed to ``keras.layers.Layer``.

    Example:
    ```python
    encoder = devise.encoders.TextEncoder(table.words, 50, 256, embedding_matrix=table.matrix)
    tokens, unknown = encoder.encode_texts(["a crimson kite"])
    joint = encoder(tokens)                       # (1, 256), unit norm
    ```

    Reference:
        Frome et al., NIPS 2013 (word vectors as the label space); Kiros et
        al., "Unifying Visual-Semantic Embeddings with Multimodal Neural
        Language Models", 2014 (a recurrent encoder over word vectors).
    """

    def __init__(
        self,
        vocabulary: Sequence[str],
        word_dim: int,
        output_dim: int,
        kind: str = "lstm",
        units: int = 256,
        train_word_vectors: bool = False,
        dropout: float = 0.0,
        word_vectors_dtype: str = "float32",
        lowercase: bool = True,
        max_length: int = 32,
        project: bool = True,
        embedding_matrix: np.ndarray | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if kind not in TEXT_ENCODER_KINDS:
            raise ValueError(f"kind must be one of {TEXT_ENCODER_KINDS}, got {kind!r}")
        if word_vectors_dtype not in ("float32", "float16"):
            raise ValueError(f"word_vectors_dtype must be 'float32' or 'float16', got {word_vectors_dtype!r}")
        if train_word_vectors and word_vectors_dtype != "float32":
            raise ValueError("fine-tuned word vectors (train_word_vectors=True) need word_vectors_dtype='float32'")
        vocabulary = [str(w) for w in vocabulary]
        if _PADDING in vocabulary or UNKNOWN_TOKEN in vocabulary or len(set(vocabulary)) != len(vocabulary):
            raise ValueError(f"vocabulary words must be unique, non-empty and not {UNKNOWN_TOKEN!r}")
        # A numpy array, not a list: Keras tracks every element of a list
        # attribute, which takes seconds for a 100k-word table.
        self._vocabulary = np.asarray(vocabulary, dtype=object)
        self.word_dim = word_dim
        self.output_dim = output_dim
        self.kind = kind
        self.units = units
        self.train_word_vectors = train_word_vectors
        self.dropout = dropout
        self.word_vectors_dtype = word_vectors_dtype
        self.lowercase = lowercase
        self.max_length = max_length
        self.project = project
        rows = len(vocabulary) + 2
        if embedding_matrix is not None:
            embedding_matrix = np.asarray(embedding_matrix, np.float32)
            if embedding_matrix.shape != (rows, word_dim):
                raise ValueError(f"embedding_matrix has shape {embedding_matrix.shape}, expected ({rows}, {word_dim})")
        self._initial_embeddings = embedding_matrix
        self._known: frozenset[str] | None = None
        # === Layers ===
        self.lookup = keras.layers.StringLookup(
            vocabulary=self._vocabulary, mask_token=_PADDING, oov_token=UNKNOWN_TOKEN, name="word_lookup"
        )
        # Sublayers take this layer's dtype policy, so a mixed-precision model loads as it was trained.
        policy = self.dtype_policy
        self.word_dropout = keras.layers.Dropout(dropout, name="word_dropout", dtype=policy)
        if kind == "lstm":
            self.sequence = keras.layers.LSTM(units, name="lstm", dtype=policy)
        elif kind == "gru":
            self.sequence = keras.layers.GRU(units, name="gru", dtype=policy)
        elif kind == "bilstm":
            forward = keras.layers.LSTM(units, dtype=policy)
            self.sequence = keras.layers.Bidirectional(forward, name="bilstm", dtype=policy)
        else:
            self.sequence = None
        width = {"lstm": units, "gru": units, "bilstm": 2 * units, "mean": word_dim}[kind]
        if not project and output_dim != width:
            raise ValueError(f"project=False keeps the {kind} output of size {width}, but output_dim is {output_dim}")
        self.encoder_width = width
        self.projection = keras.layers.Dense(output_dim, name="projection", dtype=policy) if project else None
        # float32 even under a mixed-precision policy (the input is cast up before normalising).
        self.l2 = L2Normalize(name="l2_normalize", dtype="float32")

    @property
    def vocabulary(self) -> list[str]:
        """The table's words, one per row after the two reserved rows."""
        return self._vocabulary.tolist()

    def build(self, input_shape):
        self.word_vectors = self.add_weight(
            shape=(len(self._vocabulary) + 2, self.word_dim),
            initializer="zeros",
            dtype=self.word_vectors_dtype,
            trainable=self.train_word_vectors,
            name="word_vectors",
        )
        if self._initial_embeddings is not None:
            self.word_vectors.assign(self._initial_embeddings.astype(self.word_vectors_dtype))
            self._initial_embeddings = None  # the weight holds them now
        if self.sequence is not None:
            self.sequence.build((input_shape[0], input_shape[1], self.word_dim))
        if self.projection is not None:
            self.projection.build((input_shape[0], self.encoder_width))
        super().build(input_shape)

    def call(self, tokens, training=None):
        ids = self.lookup(tokens)
        mask = ops.not_equal(ids, 0)
        x = ops.cast(ops.take(self.word_vectors, ids, axis=0), "float32")
        x = self.word_dropout(x, training=training)
        if self.sequence is None:
            weights = ops.expand_dims(ops.cast(mask, x.dtype), -1)  # x is 16-bit under a mixed policy
            x = ops.sum(x * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)
        else:
            x = self.sequence(x, mask=mask, training=training)
        if self.projection is not None:
            x = self.projection(x)
        return self.l2(x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    # -- text -> tokens ------------------------------------------------------
    @property
    def known_words(self) -> frozenset[str]:
        """Every word of the table (built on first use)."""
        if self._known is None:
            self._known = frozenset(self._vocabulary.tolist())
        return self._known

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text`` as the table spells them (see :func:`devise.datasets.text.tokenize`)."""
        return tokenize(text, self.known_words, lowercase=self.lowercase)

    def encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, list[list[str]]]:
        """Token matrix ``(N, max_length)`` of strings, and each text's words missing from the table.

        A text with no token at all becomes the unknown token, so it still
        has a (weak) embedding; callers that must refuse such a query check
        :meth:`tokenize` first.
        """
        known = self.known_words
        rows, unknown = [], []
        for text in texts:
            tokens = self.tokenize(text)[: self.max_length] or [UNKNOWN_TOKEN]
            rows.append(tokens)
            unknown.append(list(dict.fromkeys(t for t in tokens if t not in known and t != UNKNOWN_TOKEN)))
        out = np.full((len(rows), self.max_length), _PADDING, dtype=object)
        for i, tokens in enumerate(rows):
            out[i, : len(tokens)] = tokens
        return out, unknown

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary": self.vocabulary,
            "word_dim": self.word_dim,
            "output_dim": self.output_dim,
            "kind": self.kind,
            "units": self.units,
            "train_word_vectors": self.train_word_vectors,
            "dropout": self.dropout,
            "word_vectors_dtype": self.word_vectors_dtype,
            "lowercase": self.lowercase,
            "max_length": self.max_length,
            "project": self.project,
        }
