"""The numpy text path (NumpyTextModel) against the Keras model, on every encoder kind, and its refusals."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest

from devise.encoders.keras_archive import KerasArchive
from devise.encoders.text_encoder import TEXT_ENCODER_KINDS
from devise.encoders.text_numpy import NUMPY_TEXT_ENCODER_KINDS, UnsupportedTextEncoderError
from devise.errors import DataFormatError, QueryError
from devise.model import DeViSEModel, build_devise_model
from devise.numpy_model import NumpyTextModel

WORDS = [
    "a", "red", "blue", "green", "circle", "circles", "square", "star", "two", "three", "on", "the", "of",
    "dog", "'s", "do", "n't", "t-shirt", "shirt", "big", "small", "and", "café", "над", "水",
]  # fmt: skip
MAX_LENGTH = 12
QUERIES = [
    "a red circle",
    "Two BLUE stars",
    "the dog's t-shirt",
    "don't",
    "a zxqv circle",  # an unknown word among known ones
    "zxqv qqq",  # only unknown words
    "",  # empty
    "!!! ... ???",  # empty after tokenisation
    "café над 水 big",
    "red " * 30,  # longer than max_length
    " ".join(WORDS),  # every word, truncated
    "circle",
    "a big small green square on the star of the circles and two three",
]

# (kind, storage dtype, project, standardize image features, projector bias)
VARIANTS = [
    ("lstm", "float32", True, False, False),
    ("gru", "float32", True, True, True),
    ("bilstm", "float32", True, False, False),
    ("mean", "float32", True, False, True),
    ("lstm", "float16", True, True, False),
    ("mean", "float16", False, False, False),
]


def _save(tmp_path, kind, storage, project, standardize, bias, seed=0):
    rng = np.random.default_rng(seed)
    word_dim, units = 6, 5
    joint = 4 if project else word_dim
    matrix = rng.standard_normal((len(WORDS) + 2, word_dim)).astype(np.float32)
    keras_model = build_devise_model(
        words=WORDS,
        embedding_matrix=matrix,
        image_dim=7,
        joint_dim=joint,
        text_encoder=kind,
        units=units,
        max_caption_length=MAX_LENGTH,
        word_vectors_dtype=storage,
        project_text=project,
        standardize_features=standardize,
        projector_bias=bias,
        image_fingerprint="test-extractor",
    )
    # Random weights at a scale where the gates saturate and the state matters (not the near-zero init).
    keras_model.set_weights([(rng.standard_normal(w.shape) * 0.8).astype(w.dtype) for w in keras_model.get_weights()])
    model = DeViSEModel(keras_model)
    directory = tmp_path / f"{kind}-{storage}-{project}-{standardize}-{bias}"
    model.save(directory)
    return directory


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    base = tmp_path_factory.mktemp("numpy_text")
    return {variant: _save(base, *variant) for variant in VARIANTS}


def test_every_kind_the_library_offers_is_covered():
    assert set(NUMPY_TEXT_ENCODER_KINDS) == set(TEXT_ENCODER_KINDS)
    assert {v[0] for v in VARIANTS} == set(TEXT_ENCODER_KINDS)


@pytest.mark.parametrize("variant", VARIANTS, ids=["-".join(map(str, v)) for v in VARIANTS])
def test_numpy_vectors_match_keras_to_1e5(saved_models, variant):
    directory = saved_models[variant]
    keras_side = DeViSEModel.load(directory)
    numpy_side = NumpyTextModel.load(directory)
    expected = keras_side.embed_texts(QUERIES)
    got = numpy_side.embed_texts(QUERIES)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # One at a time equals in a batch (padding is masked), and the same fingerprint as Keras computes.
    np.testing.assert_allclose(numpy_side.embed_texts([QUERIES[2]])[0], got[2], atol=1e-6)
    assert numpy_side.fingerprint() == keras_side.fingerprint()
    assert numpy_side.joint_dim == keras_side.joint_dim and numpy_side.image_fingerprint == "test-extractor"
    for query in QUERIES:
        assert numpy_side.tokenize(query) == keras_side.tokenize(query)
        assert numpy_side.unknown_words(query) == keras_side.unknown_words(query)
        try:
            expected_unknown = keras_side.check_query(query)
        except QueryError as exc:
            with pytest.raises(QueryError, match="empty|no word"):
                numpy_side.check_query(query)
            assert str(exc)
        else:
            assert numpy_side.check_query(query) == expected_unknown


def test_random_queries_match_keras(saved_models):
    """Many random word sequences (known, unknown and mixed) on the BiLSTM, the kind with most to get wrong."""
    directory = saved_models[("bilstm", "float32", True, False, False)]
    rng = np.random.default_rng(1)
    pool = [*WORDS, "zxqv", "Circle,", "RED!"]
    queries = [" ".join(rng.choice(pool, size=rng.integers(1, 2 * MAX_LENGTH))) for _ in range(200)]
    np.testing.assert_allclose(
        NumpyTextModel.load(directory).embed_texts(queries),
        DeViSEModel.load(directory).embed_texts(queries),
        atol=1e-5,
        rtol=0,
    )


def _rewrite(source, target, *, config=None, drop=None, weights=None):
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            if name == drop:
                continue
            data = old.read(name)
            if name == "config.json" and config is not None:
                data = json.dumps(config(json.loads(data))).encode()
            if name == "model.weights.h5" and weights is not None:
                data = weights(data)
            new.writestr(name, data)


def test_damaged_truncated_or_foreign_files_are_refused_in_one_line(saved_models, tmp_path):
    source = saved_models[VARIANTS[0]] / "model.keras"
    data = source.read_bytes()
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # inside model.weights.h5, stored uncompressed: its CRC no longer matches
    damaged = tmp_path / "damaged.keras"
    damaged.write_bytes(bytes(flipped))
    foreign = tmp_path / "foreign.keras"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("hello.txt", "not a model")
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"\x00" * 1000)
    no_weights = tmp_path / "no_weights.keras"
    _rewrite(source, no_weights, drop="model.weights.h5")
    for path, message in [
        (truncated, "truncated or damaged"),
        (damaged, "truncated or damaged"),
        (foreign, "no config.json or model.weights.h5"),
        (garbage, "truncated or damaged"),
        (no_weights, "no model.weights.h5"),
        (tmp_path / "missing.keras", "no model.keras"),
    ]:
        with pytest.raises(DataFormatError, match=message) as info:
            NumpyTextModel.load(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
        assert not isinstance(info.value, UnsupportedTextEncoderError)


def _edit_text_config(edit):
    def apply(config):
        edit(config["config"]["text_encoder"]["config"])
        return config

    return apply


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c.update(attention=True), "keys this reader does not know: attention"),
        (lambda c: c.update(kind="transformer"), "kind 'transformer'"),
        (lambda c: c.update(dtype="mixed_float16"), "dtype policy 'mixed_float16'"),
        (lambda c: c.update(vocabulary=c["vocabulary"][:-1]), "word vectors of shape"),
        (lambda c: c.update(kind="gru"), "laid out as|do not make a gru cell"),
        (lambda c: c.update(project=False), "laid out as"),
    ],
)
def test_a_config_it_does_not_reproduce_is_refused_not_guessed(saved_models, tmp_path, edit, message):
    source = saved_models[VARIANTS[0]] / "model.keras"
    target = tmp_path / "edited.keras"
    _rewrite(source, target, config=_edit_text_config(edit))
    with pytest.raises(UnsupportedTextEncoderError, match=message):
        NumpyTextModel.load(target)


@pytest.mark.parametrize("image_dim", [None, 0, -7, 7.0, "7", True])
def test_an_image_dim_that_is_not_a_positive_int_is_refused(saved_models, tmp_path, image_dim):
    source = saved_models[VARIANTS[0]] / "model.keras"
    target = tmp_path / "edited.keras"

    def edit(config):
        if image_dim is None:
            del config["config"]["image_dim"]
        else:
            config["config"]["image_dim"] = image_dim
        return config

    _rewrite(source, target, config=edit)
    with pytest.raises(UnsupportedTextEncoderError, match=f"{target}: image_dim is .*not a positive whole number"):
        NumpyTextModel.load(target)


def test_another_keras_model_is_refused(saved_models, tmp_path):
    source = saved_models[VARIANTS[0]] / "model.keras"
    target = tmp_path / "other.keras"

    def other(config):
        config["registered_name"] = "mylib>Other"
        return config

    _rewrite(source, target, config=other)
    with pytest.raises(UnsupportedTextEncoderError, match="not a devise joint model"):
        NumpyTextModel.load(target)


def _keras_layer(model, path: str):
    """The Keras layer a weights-file path names: ``layers/<snake_case class>/<attribute>/...``."""
    parts = path.split("/")
    by_class = {re.sub(r"(?<!^)(?=[A-Z])", "_", type(layer).__name__).lower(): layer for layer in model.layers}
    layer = by_class[parts[1]]
    for attribute in parts[2:]:
        layer = getattr(layer, attribute)
    return layer


@pytest.mark.parametrize("variant", [("bilstm", "float32", True, False, False), ("gru", "float32", True, True, True)])
def test_archive_reader_keeps_variables_in_order(saved_models, variant):
    """Every variable the reader loads equals, in order, the one Keras itself saves for that layer."""
    directory = saved_models[variant]
    archive = KerasArchive.read(directory / "model.keras")
    if variant[0] == "bilstm":
        kernel, recurrent, bias = archive.variables["layers/text_encoder/sequence/forward_layer/cell"]
        assert kernel.shape == (6, 20) and recurrent.shape == (5, 20) and bias.shape == (20,)
    keras_model = DeViSEModel.load(directory).keras_model
    for path, loaded in archive.variables.items():
        store: dict = {}
        _keras_layer(keras_model, path).save_own_variables(store)
        assert len(loaded) == len(store), path
        for i, variable in enumerate(loaded):
            np.testing.assert_array_equal(variable, np.asarray(store[str(i)]), err_msg=f"{path} variable {i}")
    assert sum(map(len, archive.variables.values())) == len(keras_model.get_weights())
