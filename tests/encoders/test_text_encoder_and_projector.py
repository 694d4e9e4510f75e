"""LSTMTextEncoder, LinearProjector and L2Normalize against numpy references."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from devise.encoders.projector import L2Normalize, LinearProjector
from devise.encoders.text_encoder import LSTMTextEncoder

VOCAB, WORD_DIM, JOINT_DIM, UNITS = 12, 5, 4, 6


# -- naive references ------------------------------------------------------------


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.sqrt((v * v).sum(axis=-1, keepdims=True))


def reference_text_embedding(encoder: LSTMTextEncoder, tokens: list[int]) -> np.ndarray:
    """One caption, token by token, in float64, with no padding at all."""
    table = keras.ops.convert_to_numpy(encoder.embedding.embeddings).astype(np.float64)
    kernel = keras.ops.convert_to_numpy(encoder.lstm.cell.kernel).astype(np.float64)
    recurrent = keras.ops.convert_to_numpy(encoder.lstm.cell.recurrent_kernel).astype(np.float64)
    bias = keras.ops.convert_to_numpy(encoder.lstm.cell.bias).astype(np.float64)
    u = encoder.lstm_units
    # Keras gate order along the 4u axis: input, forget, cell candidate, output.
    w_i, w_f, w_c, w_o = (kernel[:, k * u : (k + 1) * u] for k in range(4))
    r_i, r_f, r_c, r_o = (recurrent[:, k * u : (k + 1) * u] for k in range(4))
    b_i, b_f, b_c, b_o = (bias[k * u : (k + 1) * u] for k in range(4))
    h = np.zeros(u)
    c = np.zeros(u)
    for token in tokens:
        x = table[token]
        i = _sigmoid(x @ w_i + h @ r_i + b_i)
        f = _sigmoid(x @ w_f + h @ r_f + b_f)
        g = np.tanh(x @ w_c + h @ r_c + b_c)
        o = _sigmoid(x @ w_o + h @ r_o + b_o)
        c = f * c + i * g
        h = o * np.tanh(c)
    dense_w = keras.ops.convert_to_numpy(encoder.projection.kernel).astype(np.float64)
    dense_b = keras.ops.convert_to_numpy(encoder.projection.bias).astype(np.float64)
    return _unit(h @ dense_w + dense_b)


def _padded(rows: list[list[int]], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), np.int32)
    for r, tokens in enumerate(rows):
        out[r, : len(tokens)] = tokens
    return out


@pytest.fixture(scope="module")
def matrix():
    return np.random.default_rng(0).normal(size=(VOCAB, WORD_DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def encoder(matrix):
    keras.utils.set_random_seed(1)
    enc = LSTMTextEncoder(VOCAB, WORD_DIM, JOINT_DIM, lstm_units=UNITS, embedding_matrix=matrix)
    enc(_padded([[2, 3]], 4))  # builds it
    return enc


# -- LSTMTextEncoder -------------------------------------------------------------


def test_text_outputs_are_unit_vectors(encoder):
    ids = _padded([[2], [3, 4, 5], [6, 7, 8, 9, 10, 11]], 7)
    out = keras.ops.convert_to_numpy(encoder(ids))
    assert out.shape == (3, JOINT_DIM)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert encoder.compute_output_shape((3, 7)) == (3, JOINT_DIM)


def test_text_matches_numpy_lstm_reference(encoder):
    captions = [[2], [3, 4, 5], [6, 7, 8, 9, 10, 11], [11, 1, 2]]
    out = keras.ops.convert_to_numpy(encoder(_padded(captions, 8)))
    for row, tokens in enumerate(captions):
        np.testing.assert_allclose(out[row], reference_text_embedding(encoder, tokens), atol=1e-5)


def test_text_result_does_not_depend_on_padding_or_batch_mates(encoder):
    caption = [4, 9, 2]
    alone = keras.ops.convert_to_numpy(encoder(_padded([caption], 3)))[0]
    padded = keras.ops.convert_to_numpy(encoder(_padded([caption], 10)))[0]
    batch = keras.ops.convert_to_numpy(encoder(_padded([[5, 6, 7, 8, 9, 10, 11, 3], caption, [1]], 10)))[1]
    np.testing.assert_allclose(padded, alone, atol=1e-6)
    np.testing.assert_allclose(batch, alone, atol=1e-6)
    # Not vacuous: another caption gives another vector.
    other = keras.ops.convert_to_numpy(encoder(_padded([[4, 9, 3]], 3)))[0]
    assert np.abs(other - alone).max() > 1e-3


def test_embedding_matrix_is_loaded_but_not_in_config(encoder, matrix):
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(encoder.embedding.embeddings), matrix)
    config = encoder.get_config()
    assert "embedding_matrix" not in config
    json.dumps(config)  # plain values only, no arrays
    assert config["vocabulary_size"] == VOCAB and config["word_dim"] == WORD_DIM
    assert config["output_dim"] == JOINT_DIM and config["lstm_units"] == UNITS


def test_frozen_word_vectors_are_not_trainable(encoder):
    trainable = {id(w) for w in encoder.trainable_weights}
    assert id(encoder.embedding.embeddings) not in trainable
    assert id(encoder.lstm.cell.kernel) in trainable

    tuned = LSTMTextEncoder(VOCAB, WORD_DIM, JOINT_DIM, lstm_units=UNITS, train_word_vectors=True)
    tuned(_padded([[2]], 2))
    assert id(tuned.embedding.embeddings) in {id(w) for w in tuned.trainable_weights}


@pytest.mark.parametrize("shape", [(VOCAB + 1, WORD_DIM), (VOCAB, WORD_DIM - 1), (VOCAB * WORD_DIM,)])
def test_wrong_embedding_matrix_shape_raises(shape):
    with pytest.raises(ValueError, match="embedding_matrix"):
        LSTMTextEncoder(VOCAB, WORD_DIM, JOINT_DIM, lstm_units=UNITS, embedding_matrix=np.zeros(shape))


# -- LinearProjector / L2Normalize -----------------------------------------------


def _projector_weights(projector):
    w = keras.ops.convert_to_numpy(projector.dense.kernel).astype(np.float64)
    b = keras.ops.convert_to_numpy(projector.dense.bias).astype(np.float64) if projector.use_bias else 0.0
    return w, b


@pytest.mark.parametrize("use_bias", [False, True])
def test_linear_projector_matches_numpy(use_bias):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 7)).astype(np.float32)
    projector = LinearProjector(3, use_bias=use_bias)
    projector.build((None, 7))
    if use_bias:  # a non-zero bias, so that it matters
        projector.dense.bias.assign(rng.normal(size=3).astype(np.float32))
    assert len(projector.weights) == (2 if use_bias else 1)
    out = keras.ops.convert_to_numpy(projector(x))
    w, b = _projector_weights(projector)
    np.testing.assert_allclose(out, _unit(x.astype(np.float64) @ w + b), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_linear_projector_without_normalisation():
    x = np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32)
    projector = LinearProjector(5, normalize=False)
    out = keras.ops.convert_to_numpy(projector(x))
    w, _ = _projector_weights(projector)
    assert out.shape == (4, 5)
    np.testing.assert_allclose(out, x.astype(np.float64) @ w, atol=1e-5)
    assert not np.allclose(np.linalg.norm(out, axis=1), 1.0)


def test_linear_projector_on_higher_rank_input():
    x = np.random.default_rng(4).normal(size=(2, 3, 6)).astype(np.float32)
    projector = LinearProjector(4)
    out = keras.ops.convert_to_numpy(projector(x))
    assert out.shape == projector.compute_output_shape(x.shape) == (2, 3, 4)
    w, _ = _projector_weights(projector)
    np.testing.assert_allclose(out, _unit(x.astype(np.float64) @ w), atol=1e-6)


def test_l2_normalize_matches_numpy_and_keeps_zero_vectors_finite():
    x = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
    x[1] = 0.0
    out = keras.ops.convert_to_numpy(L2Normalize()(x))
    np.testing.assert_allclose(out[[0, 2]], _unit(x[[0, 2]]), atol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)
