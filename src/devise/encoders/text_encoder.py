"""Caption encoder: word vectors condensed by an LSTM into the joint space."""

from __future__ import annotations

import keras
import numpy as np

from devise.encoders.projector import L2Normalize


@keras.saving.register_keras_serializable(package="devise")
class LSTMTextEncoder(keras.layers.Layer):
    """Token ids -> word vectors -> LSTM -> linear map -> unit vector.

    Id 0 is padding and is masked, so captions of any length in one batch
    give the same result as alone.

    Args:
        vocabulary_size: number of token ids (including padding and unknown).
        word_dim: size of the word vectors (e.g. 50 or 300 for GloVe).
        output_dim: size of the joint embedding space.
        lstm_units: size of the LSTM state.
        train_word_vectors: whether the word vectors are fine-tuned.
        dropout: dropout on the word vectors during training.
        embedding_matrix: optional ``(vocabulary_size, word_dim)`` initial
            word vectors (e.g. GloVe). Not part of the config: the values
            are saved with the weights.
        **kwargs: passed to ``keras.layers.Layer``.

    Example:
    ```python
    encoder = devise.encoders.LSTMTextEncoder(
        vocabulary_size=len(vocab), word_dim=50, output_dim=256,
        embedding_matrix=matrix)
    joint = encoder(vocab.encode(["a red circle"], max_length=16))
    ```

    Reference:
        Frome et al., NIPS 2013 (word vectors as the label space); Kiros et
        al., "Unifying Visual-Semantic Embeddings with Multimodal Neural
        Language Models", 2014 (an LSTM over word vectors).
    """

    def __init__(
        self,
        vocabulary_size: int,
        word_dim: int,
        output_dim: int,
        lstm_units: int = 512,
        train_word_vectors: bool = False,
        dropout: float = 0.0,
        embedding_matrix: np.ndarray | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.word_dim = word_dim
        self.output_dim = output_dim
        self.lstm_units = lstm_units
        self.train_word_vectors = train_word_vectors
        self.dropout = dropout
        if embedding_matrix is not None:
            embedding_matrix = np.asarray(embedding_matrix, np.float32)
            if embedding_matrix.shape != (vocabulary_size, word_dim):
                raise ValueError(
                    f"embedding_matrix has shape {embedding_matrix.shape}, "
                    f"expected ({vocabulary_size}, {word_dim})"
                )
        self._initial_embeddings = embedding_matrix
        # === Layers ===
        self.embedding = keras.layers.Embedding(
            vocabulary_size, word_dim, mask_zero=True, trainable=train_word_vectors, name="word_vectors"
        )
        self.word_dropout = keras.layers.Dropout(dropout, name="word_dropout")
        self.lstm = keras.layers.LSTM(lstm_units, name="lstm")
        self.projection = keras.layers.Dense(output_dim, name="projection")
        self.l2 = L2Normalize(name="l2_normalize")

    def build(self, input_shape):
        self.embedding.build(input_shape)
        if self._initial_embeddings is not None:
            self.embedding.embeddings.assign(self._initial_embeddings)
            self._initial_embeddings = None  # weights now hold them
        self.lstm.build((*input_shape, self.word_dim))
        self.projection.build((input_shape[0], self.lstm_units))
        super().build(input_shape)

    def call(self, token_ids, training=None):
        x = self.embedding(token_ids)
        mask = self.embedding.compute_mask(token_ids)
        x = self.word_dropout(x, training=training)
        x = self.lstm(x, mask=mask, training=training)
        return self.l2(self.projection(x))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "word_dim": self.word_dim,
            "output_dim": self.output_dim,
            "lstm_units": self.lstm_units,
            "train_word_vectors": self.train_word_vectors,
            "dropout": self.dropout,
        }
