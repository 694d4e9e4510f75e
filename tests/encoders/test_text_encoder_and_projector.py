"""TextEncoder, LinearProjector and L2Normalize against numpy references."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from devise.encoders.projector import L2Normalize, LinearProjector
from devise.encoders.text_encoder import TEXT_ENCODER_KINDS, UNKNOWN_TOKEN, TextEncoder

WORDS = [f"w{i}" for i in range(10)]  # "w{i}" has id 2 + i; 0 is padding, 1 unknown
WORD_DIM, JOINT_DIM, UNITS, MAX_LEN = 5, 4, 6, 8
ROWS = len(WORDS) + 2


# -- naive references (float64, one caption at a time, token by token) -----------


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.sqrt((v * v).sum(axis=-1, keepdims=True))


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x).astype(np.float64)


def _row_ids(tokens: list[str]) -> list[int]:
    """Word -> table row, written apart from the StringLookup: padding dropped, unknown -> 1."""
    ids = []
    for token in tokens:
        if token == "":
            continue
        ids.append(2 + WORDS.index(token) if token in WORDS else 1)
    return ids


def _lstm_reference(cell, vectors: list[np.ndarray]) -> np.ndarray:
    kernel, recurrent, bias = _np(cell.kernel), _np(cell.recurrent_kernel), _np(cell.bias)
    u = recurrent.shape[0]
    # Keras gate order along the 4u axis: input, forget, cell candidate, output.
    w_i, w_f, w_c, w_o = (kernel[:, k * u : (k + 1) * u] for k in range(4))
    r_i, r_f, r_c, r_o = (recurrent[:, k * u : (k + 1) * u] for k in range(4))
    b_i, b_f, b_c, b_o = (bias[k * u : (k + 1) * u] for k in range(4))
    h = np.zeros(u)
    c = np.zeros(u)
    for x in vectors:
        i = _sigmoid(x @ w_i + h @ r_i + b_i)
        f = _sigmoid(x @ w_f + h @ r_f + b_f)
        g = np.tanh(x @ w_c + h @ r_c + b_c)
        o = _sigmoid(x @ w_o + h @ r_o + b_o)
        c = f * c + i * g
        h = o * np.tanh(c)
    return h


def _gru_reference(cell, vectors: list[np.ndarray]) -> np.ndarray:
    kernel, recurrent, bias = _np(cell.kernel), _np(cell.recurrent_kernel), _np(cell.bias)
    assert cell.reset_after and bias.shape[0] == 2  # input bias, recurrent bias
    u = recurrent.shape[0]
    # Keras gate order along the 3u axis: update (z), reset (r), candidate (h).
    w_z, w_r, w_h = (kernel[:, k * u : (k + 1) * u] for k in range(3))
    r_z, r_r, r_h = (recurrent[:, k * u : (k + 1) * u] for k in range(3))
    bi_z, bi_r, bi_h = (bias[0, k * u : (k + 1) * u] for k in range(3))
    br_z, br_r, br_h = (bias[1, k * u : (k + 1) * u] for k in range(3))
    h = np.zeros(u)
    for x in vectors:
        z = _sigmoid(x @ w_z + bi_z + h @ r_z + br_z)
        r = _sigmoid(x @ w_r + bi_r + h @ r_r + br_r)
        candidate = np.tanh(x @ w_h + bi_h + r * (h @ r_h + br_h))
        h = z * h + (1.0 - z) * candidate
    return h


def _mean_reference(vectors: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(vectors[0])
    count = 0
    for x in vectors:
        total = total + x
        count += 1
    return total / count


def reference_text_embedding(encoder: TextEncoder, tokens: list[str]) -> np.ndarray:
    table = _np(encoder.word_vectors)
    vectors = [table[i] for i in _row_ids(tokens)]
    if encoder.kind == "lstm":
        h = _lstm_reference(encoder.sequence.cell, vectors)
    elif encoder.kind == "gru":
        h = _gru_reference(encoder.sequence.cell, vectors)
    elif encoder.kind == "bilstm":
        forward = _lstm_reference(encoder.sequence.forward_layer.cell, vectors)
        backward = _lstm_reference(encoder.sequence.backward_layer.cell, vectors[::-1])
        h = np.concatenate([forward, backward])
    else:
        h = _mean_reference(vectors)
    if encoder.projection is not None:
        h = h @ _np(encoder.projection.kernel) + _np(encoder.projection.bias)
    return _unit(h)


def _padded(rows: list[list[str]], length: int) -> np.ndarray:
    out = np.full((len(rows), length), "", dtype=object)
    for r, tokens in enumerate(rows):
        out[r, : len(tokens)] = tokens
    return out.astype(str)


def _run(encoder, tokens, **kwargs) -> np.ndarray:
    return keras.ops.convert_to_numpy(encoder(tokens, **kwargs))


@pytest.fixture(scope="module")
def matrix():
    m = np.random.default_rng(0).normal(size=(ROWS, WORD_DIM)).astype(np.float32)
    m[0] = 0.0
    return m


def _encoder(kind: str, matrix, **kwargs) -> TextEncoder:
    keras.utils.set_random_seed(1)
    enc = TextEncoder(
        WORDS, WORD_DIM, JOINT_DIM, kind=kind, units=UNITS, embedding_matrix=matrix, max_length=MAX_LEN, **kwargs
    )
    enc(_padded([["w2", "w3"]], MAX_LEN))  # builds it
    return enc


@pytest.fixture(scope="module", params=TEXT_ENCODER_KINDS)
def encoder(request, matrix):
    return _encoder(request.param, matrix)


CAPTIONS = [["w0"], ["w1", "w2", "w3"], ["w4", "w5", "w6", "w7", "w8", "w9"], ["w9", "zebra", "w0"]]


# -- every kind ---------------------------------------------------------------------


def test_text_outputs_are_unit_vectors(encoder):
    out = _run(encoder, _padded(CAPTIONS, MAX_LEN))
    assert out.shape == (len(CAPTIONS), JOINT_DIM)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert encoder.compute_output_shape((3, MAX_LEN)) == (3, JOINT_DIM)


def test_text_matches_numpy_reference(encoder):
    out = _run(encoder, _padded(CAPTIONS, MAX_LEN))
    for row, tokens in enumerate(CAPTIONS):
        np.testing.assert_allclose(out[row], reference_text_embedding(encoder, tokens), atol=1e-5)


def test_text_result_does_not_depend_on_padding_or_batch_mates(encoder):
    caption = ["w2", "w7", "w0"]
    alone = _run(encoder, _padded([caption], 3))[0]
    padded = _run(encoder, _padded([caption], 10))[0]
    batch = _run(encoder, _padded([["w3", "w4", "w5", "w6", "w7", "w8", "w9", "w1"], caption, ["w1"]], 10))[1]
    np.testing.assert_allclose(padded, alone, atol=1e-6)
    np.testing.assert_allclose(batch, alone, atol=1e-6)
    # Not vacuous: another caption gives another vector.
    other = _run(encoder, _padded([["w2", "w7", "w1"]], 3))[0]
    assert np.abs(other - alone).max() > 1e-3


def test_unknown_tokens_use_row_one(encoder):
    out = _run(encoder, _padded([["w3", "zebra"], ["w3", "yak"], ["w3", UNKNOWN_TOKEN]], 4))
    np.testing.assert_allclose(out[0], out[1], atol=1e-7)
    np.testing.assert_allclose(out[0], out[2], atol=1e-7)
    np.testing.assert_allclose(out[0], reference_text_embedding(encoder, ["w3", UNKNOWN_TOKEN]), atol=1e-5)
    # Row 1 is really what is used: change it and the embedding follows.
    table = keras.ops.convert_to_numpy(encoder.word_vectors).copy()
    try:
        changed = table.copy()
        changed[1] += 1.0
        encoder.word_vectors.assign(changed)
        moved = _run(encoder, _padded([["w3", "zebra"]], 4))[0]
        assert np.abs(moved - out[0]).max() > 1e-3
        np.testing.assert_allclose(moved, reference_text_embedding(encoder, ["w3", "zebra"]), atol=1e-5)
    finally:
        encoder.word_vectors.assign(table)


def test_embedding_matrix_is_in_the_weights_not_the_config(encoder, matrix):
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(encoder.word_vectors), matrix)
    config = encoder.get_config()
    assert "embedding_matrix" not in config
    json.dumps(config)  # plain values only, no arrays
    assert config["vocabulary"] == WORDS
    assert (config["word_dim"], config["output_dim"], config["units"]) == (WORD_DIM, JOINT_DIM, UNITS)
    assert (config["kind"], config["max_length"]) == (encoder.kind, MAX_LEN)


def test_frozen_and_trainable_word_vectors(matrix):
    frozen = _encoder("lstm", matrix)
    assert id(frozen.word_vectors) not in {id(w) for w in frozen.trainable_weights}
    assert id(frozen.word_vectors) in {id(w) for w in frozen.non_trainable_weights}
    assert id(frozen.sequence.cell.kernel) in {id(w) for w in frozen.trainable_weights}

    tuned = _encoder("lstm", matrix, train_word_vectors=True)
    assert id(tuned.word_vectors) in {id(w) for w in tuned.trainable_weights}


# -- encode_texts / tokenize ----------------------------------------------------------


def test_encode_texts_pads_truncates_and_reports_unknown_words(matrix):
    encoder = TextEncoder(WORDS, WORD_DIM, JOINT_DIM, units=UNITS, max_length=4)
    tokens, unknown = encoder.encode_texts(["W1 w2", "w1 w2 w3 w4 w5 w6", "zebra w1 zebra yak", "", "?!"])
    assert tokens.shape == (5, 4) and tokens.dtype == object
    assert tokens.tolist() == [
        ["w1", "w2", "", ""],  # lowercased, padded with ""
        ["w1", "w2", "w3", "w4"],  # truncated at the end
        ["zebra", "w1", "zebra", "yak"],  # unknown words stay as words (the lookup maps them to 1)
        [UNKNOWN_TOKEN, "", "", ""],  # empty text -> a single unknown token
        [UNKNOWN_TOKEN, "", "", ""],  # punctuation only: no token either
    ]
    assert unknown == [[], [], ["zebra", "yak"], [], []]  # each once, in order; not the filler token
    assert encoder.encode_texts([])[0].shape == (0, 4)


def test_encode_texts_reports_only_the_kept_tokens():
    encoder = TextEncoder(WORDS, WORD_DIM, JOINT_DIM, units=UNITS, max_length=2)
    _, unknown = encoder.encode_texts(["w1 w2 zebra"])
    assert unknown == [[]]  # "zebra" was cut off, so it plays no part


def test_encoded_texts_run_through_the_encoder(encoder):
    tokens, _ = encoder.encode_texts(["w1 w2 w3", "", "zebra"])
    out = _run(encoder, tokens.astype(str))
    np.testing.assert_allclose(out[0], reference_text_embedding(encoder, ["w1", "w2", "w3"]), atol=1e-5)
    np.testing.assert_allclose(out[1], out[2], atol=1e-7)  # empty text and an unknown word: both row 1


def test_tokenize_follows_the_table():
    encoder = TextEncoder(["t-shirt", "dog", "'s", "do", "n't"], 3, 3, units=2)
    assert encoder.known_words == frozenset(["t-shirt", "dog", "'s", "do", "n't"])
    assert encoder.tokenize("A T-shirt, the dog's; don't!") == ["a", "t-shirt", "the", "dog", "'s", "do", "n't"]
    cased = TextEncoder(["Paris", "paris"], 3, 3, units=2, lowercase=False)
    assert cased.tokenize("Paris paris") == ["Paris", "paris"]
    tokens, unknown = cased.encode_texts(["PARIS Paris"])
    assert unknown == [["PARIS"]]


# -- word vector storage and options ------------------------------------------------------


@pytest.mark.parametrize("kind", TEXT_ENCODER_KINDS)
def test_float16_word_vectors(kind, matrix):
    full = _encoder(kind, matrix)
    half = _encoder(kind, matrix, word_vectors_dtype="float16")  # same seed: same other weights
    assert half.word_vectors.dtype == "float16"
    assert all(w.dtype == "float32" for w in half.weights if w is not half.word_vectors)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(half.word_vectors), matrix.astype(np.float16))
    tokens = _padded(CAPTIONS, MAX_LEN)
    out = _run(half, tokens)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _run(full, tokens), atol=5e-3)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_float16_word_vectors_cannot_be_trained():
    with pytest.raises(ValueError, match="float32"):
        TextEncoder(WORDS, WORD_DIM, JOINT_DIM, train_word_vectors=True, word_vectors_dtype="float16")


def test_project_false_keeps_the_encoder_output(matrix):
    keras.utils.set_random_seed(0)
    mean = TextEncoder(WORDS, WORD_DIM, WORD_DIM, kind="mean", project=False, embedding_matrix=matrix)
    out = _run(mean, _padded(CAPTIONS, MAX_LEN))
    assert mean.projection is None and out.shape == (len(CAPTIONS), WORD_DIM)
    for row, tokens in enumerate(CAPTIONS):
        np.testing.assert_allclose(out[row], reference_text_embedding(mean, tokens), atol=1e-6)
    assert len(mean.weights) == 1  # the table only
    bilstm = TextEncoder(WORDS, WORD_DIM, 2 * UNITS, kind="bilstm", units=UNITS, project=False)
    assert _run(bilstm, _padded(CAPTIONS, MAX_LEN)).shape == (len(CAPTIONS), 2 * UNITS)


@pytest.mark.parametrize(
    "kind, output_dim", [("mean", WORD_DIM + 1), ("lstm", UNITS + 1), ("gru", JOINT_DIM), ("bilstm", UNITS)]
)
def test_project_false_requires_output_dim_equal_to_width(kind, output_dim):
    with pytest.raises(ValueError, match="project=False"):
        TextEncoder(WORDS, WORD_DIM, output_dim, kind=kind, units=UNITS, project=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="transformer"), "kind"),
        (dict(word_vectors_dtype="bfloat16"), "word_vectors_dtype"),
        (dict(embedding_matrix=np.zeros((ROWS - 2, WORD_DIM))), "embedding_matrix"),  # forgot the reserved rows
        (dict(embedding_matrix=np.zeros((ROWS, WORD_DIM - 1))), "embedding_matrix"),
        (dict(embedding_matrix=np.zeros(ROWS * WORD_DIM)), "embedding_matrix"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TextEncoder(WORDS, WORD_DIM, JOINT_DIM, **kwargs)


@pytest.mark.parametrize("words", [["a", "b", "a"], ["a", ""], ["a", UNKNOWN_TOKEN]])
def test_bad_vocabulary_raises(words):
    with pytest.raises(ValueError, match="vocabulary"):
        TextEncoder(words, WORD_DIM, JOINT_DIM)


def test_word_dropout_only_in_training(matrix):
    encoder = _encoder("mean", matrix, dropout=0.5)
    tokens = _padded([["w1", "w2", "w3", "w4", "w5"]] * 8, MAX_LEN)
    inference = _run(encoder, tokens, training=False)
    expected = reference_text_embedding(encoder, ["w1", "w2", "w3", "w4", "w5"])
    np.testing.assert_allclose(inference[0], expected, atol=1e-6)
    np.testing.assert_array_equal(inference, _run(encoder, tokens))
    trained = _run(encoder, tokens, training=True)
    assert np.abs(trained - inference).max() > 1e-3


# -- LinearProjector / L2Normalize -----------------------------------------------


def _projector_weights(projector):
    w = _np(projector.dense.kernel)
    b = _np(projector.dense.bias) if projector.use_bias else 0.0
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
    out = _run(projector, x)
    w, b = _projector_weights(projector)
    np.testing.assert_allclose(out, _unit(x.astype(np.float64) @ w + b), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_linear_projector_without_normalisation():
    x = np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32)
    projector = LinearProjector(5, normalize=False)
    out = _run(projector, x)
    w, _ = _projector_weights(projector)
    assert out.shape == (4, 5)
    np.testing.assert_allclose(out, x.astype(np.float64) @ w, atol=1e-5)
    assert not np.allclose(np.linalg.norm(out, axis=1), 1.0)


def test_linear_projector_on_higher_rank_input():
    x = np.random.default_rng(4).normal(size=(2, 3, 6)).astype(np.float32)
    projector = LinearProjector(4)
    out = _run(projector, x)
    assert out.shape == projector.compute_output_shape(x.shape) == (2, 3, 4)
    w, _ = _projector_weights(projector)
    np.testing.assert_allclose(out, _unit(x.astype(np.float64) @ w), atol=1e-6)


def test_linear_projector_standardize_matches_numpy():
    rng = np.random.default_rng(6)
    train = rng.normal(loc=5.0, scale=3.0, size=(50, 6)).astype(np.float32)
    train[:, 2] = 7.0  # a constant feature
    projector = LinearProjector(3, use_bias=True, normalize=False, standardize=True)
    projector.set_feature_statistics(train)  # builds it
    assert projector.built and len(projector.non_trainable_weights) == 2
    assert len(projector.trainable_weights) == 2  # kernel, bias: the statistics do not train
    projector.dense.bias.assign(rng.normal(size=3).astype(np.float32))

    # The reference, feature by feature.
    n, d = train.shape
    mean = [sum(float(train[i, j]) for i in range(n)) / n for j in range(d)]
    std = [np.sqrt(sum((float(train[i, j]) - mean[j]) ** 2 for i in range(n)) / n) for j in range(d)]
    scale = [s if s > 1e-6 else 1.0 for s in std]
    assert scale[2] == 1.0
    np.testing.assert_allclose(_np(projector.feature_mean), mean, rtol=1e-6)
    np.testing.assert_allclose(_np(projector.feature_scale), scale, rtol=1e-5)

    x = rng.normal(loc=5.0, scale=3.0, size=(4, d)).astype(np.float32)
    w, b = _projector_weights(projector)
    expected = np.array([[(x[r, j] - mean[j]) / scale[j] for j in range(d)] for r in range(4)]) @ w + b
    np.testing.assert_allclose(_run(projector, x), expected, atol=1e-5)
    # On the training features the constant one contributes nothing (0 instead of 0/0).
    only_constant = keras.ops.convert_to_numpy(projector.dense.kernel).copy()
    only_constant[[0, 1, 3, 4, 5]] = 0.0
    projector.dense.kernel.assign(only_constant)
    projector.dense.bias.assign(np.zeros(3, np.float32))
    np.testing.assert_array_equal(_run(projector, train), 0.0)


def test_linear_projector_standardize_requires_the_flag():
    with pytest.raises(ValueError, match="standardize"):
        LinearProjector(3).set_feature_statistics(np.ones((2, 4)))


def test_linear_projector_dropout_only_in_training():
    x = np.random.default_rng(7).normal(size=(8, 16)).astype(np.float32)
    keras.utils.set_random_seed(0)
    projector = LinearProjector(4, dropout=0.5, normalize=False)
    inference = _run(projector, x, training=False)
    w, _ = _projector_weights(projector)
    np.testing.assert_allclose(inference, x.astype(np.float64) @ w, atol=1e-5)
    np.testing.assert_array_equal(_run(projector, x), inference)  # default: inference
    trained = _run(projector, x, training=True)
    assert np.abs(trained - inference).max() > 1e-3


def test_l2_normalize_matches_numpy_and_keeps_zero_vectors_finite():
    x = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
    x[1] = 0.0
    out = _run(L2Normalize(), x)
    np.testing.assert_allclose(out[[0, 2]], _unit(x[[0, 2]]), atol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)
