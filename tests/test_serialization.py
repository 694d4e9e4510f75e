"""Config round trips and ``.keras`` save/load for every public layer, the joint model and DeViSEModel."""

from __future__ import annotations

import copy
import inspect
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import devise
from devise.encoders.keras_applications import ApplicationPreprocessing
from devise.encoders.projector import L2Normalize, LinearProjector
from devise.encoders.text_encoder import TEXT_ENCODER_KINDS, TextEncoder
from devise.encoders.vgg16 import CaffeImagePreprocessing
from devise.errors import DataFormatError, QueryError
from devise.losses import HingeRankLoss
from devise.model import DeViSEJointModel, DeViSEModel, build_devise_model

WORDS = ["a", "red", "blue", "circle", "square", "two", "big", "small", "t-shirt", "dog", "'s"]
WORD_DIM, JOINT_DIM, UNITS, MAX_LEN, IMAGE_DIM = 4, 3, 5, 6, 7
ROWS = len(WORDS) + 2


def _tokens(n: int, seed: int) -> np.ndarray:
    """``(n, MAX_LEN)`` string tokens padded with "", some of them unknown words."""
    rng = np.random.default_rng(seed)
    out = np.full((n, MAX_LEN), "", dtype=object)
    for row in range(n):
        length = rng.integers(1, MAX_LEN + 1)
        out[row, :length] = rng.choice([*WORDS, "zebra"], length)
    return out.astype(str)


def _floats(shape, seed: int, high: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-high, high, shape).astype(np.float32)


def _numpy(tree):
    return keras.tree.map_structure(keras.ops.convert_to_numpy, tree)


def _assert_equal_outputs(actual, expected):
    actual, expected = _numpy(actual), _numpy(expected)
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected)
        for key in expected:
            np.testing.assert_array_equal(actual[key], expected[key])
    else:
        np.testing.assert_array_equal(actual, expected)


def _text_encoder(kind: str, output_dim: int = JOINT_DIM, **kwargs) -> TextEncoder:
    options = dict(units=UNITS, max_length=MAX_LEN, embedding_matrix=_floats((ROWS, WORD_DIM), 3), name="text")
    return TextEncoder(WORDS, WORD_DIM, output_dim, kind=kind, **{**options, **kwargs})


def _standardized_projector() -> LinearProjector:
    projector = LinearProjector(JOINT_DIM, use_bias=True, dropout=0.2, standardize=True, name="proj_std")
    projector.set_feature_statistics(_floats((20, IMAGE_DIM), 12, high=4.0) + 2.0)
    return projector


def _joint_model(seed: int = 0, **kwargs) -> DeViSEJointModel:
    keras.utils.set_random_seed(seed)
    options = dict(
        words=WORDS,
        embedding_matrix=_floats((ROWS, WORD_DIM), 7),
        image_dim=IMAGE_DIM,
        joint_dim=JOINT_DIM,
        units=UNITS,
        max_caption_length=MAX_LEN,
        projector_bias=True,
        text_dropout=0.1,
        image_dropout=0.1,
        standardize_features=True,
        image_fingerprint="vgg16-fc7|none|224x224|4096",
    )
    model = build_devise_model(**{**options, **kwargs})
    model.image_projector.set_feature_statistics(_floats((20, IMAGE_DIM), 13, high=3.0) + 1.0)
    return model


def _joint_inputs(n: int = 4, seed: int = 8):
    return {"image_features": _floats((n, IMAGE_DIM), seed, high=3.0), "tokens": _tokens(n, seed + 1)}


TEXT_SPEC = dict(shape=(MAX_LEN,), dtype="string")
JOINT_SPEC = {"image_features": dict(shape=(IMAGE_DIM,)), "tokens": TEXT_SPEC}

# (name, layer factory, input spec for keras.Input (a dict of them for dict inputs), sample input)
LAYERS = {
    "LinearProjector": (
        lambda: LinearProjector(JOINT_DIM, use_bias=True, normalize=True, name="proj"),
        dict(shape=(IMAGE_DIM,)),
        _floats((4, IMAGE_DIM), 0),
    ),
    "LinearProjector-raw": (
        lambda: LinearProjector(JOINT_DIM, use_bias=False, normalize=False),
        dict(shape=(IMAGE_DIM,)),
        _floats((4, IMAGE_DIM), 1),
    ),
    "LinearProjector-standardize": (_standardized_projector, dict(shape=(IMAGE_DIM,)), _floats((4, IMAGE_DIM), 11)),
    "L2Normalize": (
        lambda: L2Normalize(epsilon=1e-6, name="l2"),
        dict(shape=(5,)),
        _floats((3, 5), 2),
    ),
    **{
        f"TextEncoder-{kind}": (
            (lambda kind=kind: _text_encoder(kind, train_word_vectors=True, dropout=0.25)),
            TEXT_SPEC,
            _tokens(4, 4),
        )
        for kind in TEXT_ENCODER_KINDS
    },
    "TextEncoder-float16": (
        lambda: _text_encoder("gru", word_vectors_dtype="float16", lowercase=False),
        TEXT_SPEC,
        _tokens(4, 5),
    ),
    "TextEncoder-unprojected": (
        lambda: _text_encoder("mean", project=False, output_dim=WORD_DIM),
        TEXT_SPEC,
        _tokens(4, 6),
    ),
    "CaffeImagePreprocessing": (
        lambda: CaffeImagePreprocessing(name="caffe"),
        dict(shape=(6, 5, 3)),
        np.random.default_rng(5).uniform(0, 255, (2, 6, 5, 3)).astype(np.float32),
    ),
    **{
        f"ApplicationPreprocessing-{module}": (
            (lambda module=module: ApplicationPreprocessing(module, name=f"pre_{module}")),
            dict(shape=(6, 5, 3)),
            np.random.default_rng(9).uniform(0, 255, (2, 6, 5, 3)).astype(np.float32),
        )
        for module in ("resnet", "mobilenet_v2", "densenet")
    },
    "DeViSEJointModel": (_joint_model, JOINT_SPEC, _joint_inputs()),
}


def _inputs(spec):
    if "shape" in spec:
        return keras.Input(**spec)
    return {key: keras.Input(name=key, **value) for key, value in spec.items()}


def test_every_registered_devise_layer_is_covered():
    registered = {
        name.split(">", 1)[1]
        for name, obj in keras.saving.get_custom_objects().items()
        if name.startswith("devise>") and inspect.isclass(obj) and issubclass(obj, keras.layers.Layer)
    }
    assert "DeViSEJointModel" in registered  # a keras.Model is a Layer too
    covered = {key.split("-")[0] for key in LAYERS}
    assert registered == covered


@pytest.mark.parametrize("key", list(LAYERS))
def test_layer_config_round_trip(key):
    factory, spec, sample = LAYERS[key]
    layer = factory()
    layer(_inputs(spec))  # built, as in a real model
    config = layer.get_config()
    json.dumps(config)  # plain values only: no arrays (weights travel separately)
    clone = type(layer).from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    # Also through Keras' generic (registered-name) serialisation.
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is type(layer)
    assert revived.get_config() == config


@pytest.mark.parametrize("key", list(LAYERS))
def test_layer_keras_file_round_trip(key, tmp_path):
    factory, spec, sample = LAYERS[key]
    keras.utils.set_random_seed(0)
    inputs = _inputs(spec)
    model = keras.Model(inputs, factory()(inputs))
    expected = model(sample, training=False)
    path = tmp_path / "layer.keras"
    model.save(path)

    loaded = keras.saving.load_model(path)
    _assert_equal_outputs(loaded(sample, training=False), expected)
    assert len(loaded.weights) == len(model.weights)
    for a, b in zip(model.weights, loaded.weights):
        assert a.dtype == b.dtype and a.trainable == b.trainable
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_text_encoder_word_vectors_survive_without_the_embedding_matrix(tmp_path):
    """The word vectors are not in the config, so they must come back from the weights."""
    matrix = _floats((ROWS, WORD_DIM), 6)
    for dtype in ("float32", "float16"):
        inputs = keras.Input(**TEXT_SPEC)
        encoder = _text_encoder("lstm", embedding_matrix=matrix, word_vectors_dtype=dtype)
        model = keras.Model(inputs, encoder(inputs))
        model.save(tmp_path / f"text-{dtype}.keras")
        loaded = keras.saving.load_model(tmp_path / f"text-{dtype}.keras").get_layer("text")
        assert loaded.word_vectors.dtype == dtype
        assert loaded.vocabulary == WORDS
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded.word_vectors), matrix.astype(dtype))


# -- the joint model ---------------------------------------------------------------


def test_joint_model_outputs_are_a_dict_of_unit_vectors():
    model = _joint_model()
    outputs = _numpy(model(_joint_inputs(5), training=False))
    assert isinstance(outputs, dict) and set(outputs) == {"image", "text"}
    for key in ("image", "text"):
        assert outputs[key].shape == (5, JOINT_DIM) and outputs[key].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(outputs[key], axis=1), 1.0, atol=1e-6)
    assert model.output_names is not None


def test_joint_model_keras_file_round_trip(tmp_path):
    model = _joint_model(text_encoder="bilstm", word_vectors_dtype="float16")
    inputs = _joint_inputs()
    expected = model(inputs, training=False)
    model.save(tmp_path / "joint.keras")
    loaded = keras.saving.load_model(tmp_path / "joint.keras")
    assert isinstance(loaded, DeViSEJointModel)
    _assert_equal_outputs(loaded(inputs, training=False), expected)
    assert (loaded.image_dim, loaded.image_fingerprint) == (IMAGE_DIM, model.image_fingerprint)
    assert loaded.text_encoder.kind == "bilstm" and loaded.text_encoder.vocabulary == WORDS
    assert loaded.text_encoder.word_vectors.dtype == "float16"
    for name in ("feature_mean", "feature_scale"):  # the standardisation statistics are weights
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(getattr(loaded.image_projector, name)),
            keras.ops.convert_to_numpy(getattr(model.image_projector, name)),
        )


def _training_data(n: int = 6):
    """Inputs and ``[image id, caption id]`` targets as a tf.data pipeline.

    (Keras' numpy adapter rejects string arrays, so string tokens reach
    ``fit`` through tf.data, as in the Trainer.)
    """
    inputs = _joint_inputs(n, seed=20)
    groups = np.stack([np.array([0, 0, 1, 2, 3, 4]), np.arange(n)], axis=1).astype(np.int32)  # 2 captions of image 0
    return inputs, groups, tf.data.Dataset.from_tensor_slices((inputs, groups)).batch(n)


def test_hinge_rank_loss_trains_saves_and_loads(tmp_path):
    model = _joint_model(text_encoder="mean")  # recurrent ones trace for seconds; the Trainer's tests fit those
    loss = HingeRankLoss(margin=0.3, negatives="hardest", directions="image_to_text")
    model.compile(optimizer="adam", loss=loss)
    inputs, groups, data = _training_data()
    before = _numpy(model(inputs, training=False))
    history = model.fit(data, epochs=2, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    after = _numpy(model(inputs, training=False))
    assert np.abs(after["text"] - before["text"]).max() > 0  # it trained
    expected = model.evaluate(data, verbose=0)
    path = tmp_path / "compiled.keras"
    model.save(path)

    loaded = keras.saving.load_model(path, compile=False)
    assert isinstance(loaded, DeViSEJointModel)
    _assert_equal_outputs(loaded(inputs, training=False), after)
    # The ranking loss is not part of the saved compile config (compile()
    # keeps it apart from Keras' own loss), so a loaded model is compiled
    # again with it before it trains; the weights give the same loss value.
    assert loaded.ranking_loss is None
    loaded.compile(optimizer="adam", loss=HingeRankLoss.from_config(loss.get_config()))
    assert loaded.evaluate(data, verbose=0) == pytest.approx(expected, rel=1e-6)
    loaded.fit(data, epochs=1, shuffle=False, verbose=0)  # and it still trains


def test_loading_with_compile_true_does_not_restore_the_ranking_loss(tmp_path):
    """What Keras does today: it warns, skips compile() and leaves no ranking loss."""
    model = _joint_model(text_encoder="mean")
    model.compile(optimizer="adam", loss=HingeRankLoss(margin=0.3))
    _, _, data = _training_data()
    model.fit(data, epochs=1, shuffle=False, verbose=0)
    model.save(tmp_path / "compiled.keras")
    with zipfile.ZipFile(tmp_path / "compiled.keras") as archive:
        assert json.loads(archive.read("config.json"))["compile_config"]["loss"] is None

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.saving.load_model(tmp_path / "compiled.keras", compile=True)
    assert any("compile()" in str(w.message) for w in caught)
    assert isinstance(loaded, DeViSEJointModel) and loaded.ranking_loss is None
    with pytest.raises(ValueError, match="ranking loss"):
        loaded.evaluate(data, verbose=0)


def test_hinge_rank_loss_config_round_trip():
    loss = HingeRankLoss(margin=0.2, negatives="all", directions="text_to_image")
    assert HingeRankLoss.from_config(loss.get_config()).get_config() == loss.get_config()


# -- DeViSEModel -------------------------------------------------------------------

QUERIES = ["a red circle", "two blue squares", "A T-shirt", "the dog's circle", "a purple zebra", "zebra", "", "?!"]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A small DeViSEModel, its embeddings and the directory it was saved to."""
    model = DeViSEModel(_joint_model(seed=1, text_encoder="gru"))
    features = _floats((5, IMAGE_DIM), 11, high=5.0)
    directory = tmp_path_factory.mktemp("devise_model") / "run"
    model.save(directory)
    return model, directory, features, model.embed_texts(QUERIES), model.embed_image_features(features)


def test_devise_model_writes_only_model_keras_and_model_json(saved_model):
    model, directory, *_ = saved_model
    assert sorted(p.name for p in directory.iterdir()) == ["model.json", "model.keras"]
    meta = json.loads((directory / "model.json").read_text())
    assert meta["words"] == len(WORDS) and meta["text_encoder"] == "gru"
    assert (meta["joint_dim"], meta["image_dim"], meta["max_caption_length"]) == (JOINT_DIM, IMAGE_DIM, MAX_LEN)
    assert meta["image_fingerprint"] == model.image_fingerprint


@pytest.mark.parametrize("where", ["directory", "model.keras"])
def test_devise_model_load_gives_identical_embeddings(saved_model, where):
    model, directory, features, texts, images = saved_model
    loaded = DeViSEModel.load(directory if where == "directory" else directory / "model.keras")
    assert texts.shape == (len(QUERIES), JOINT_DIM) and images.shape == (5, JOINT_DIM)
    np.testing.assert_array_equal(loaded.embed_texts(QUERIES), texts)
    np.testing.assert_array_equal(loaded.embed_image_features(features), images)
    # Other batches: the same vectors, up to float32 rounding (CPU kernels sum differently per batch shape).
    np.testing.assert_allclose(loaded.embed_texts(QUERIES, batch_size=3), texts, atol=1e-6, rtol=0)
    assert loaded.words == WORDS
    assert loaded.max_caption_length == MAX_LEN
    assert loaded.image_fingerprint == model.image_fingerprint
    assert (loaded.joint_dim, loaded.image_dim) == (JOINT_DIM, IMAGE_DIM)
    assert loaded.fingerprint() == model.fingerprint()


def test_devise_model_unknown_and_empty_texts(saved_model):
    model, _, _, texts, _ = saved_model
    by_query = dict(zip(QUERIES, texts))
    # No known word, an unknown word and an empty text all embed as the unknown word
    # (up to float32 rounding: they sit in different rows of the batch).
    np.testing.assert_allclose(by_query["zebra"], by_query[""], atol=1e-6, rtol=0)
    np.testing.assert_allclose(by_query["?!"], by_query[""], atol=1e-6, rtol=0)
    assert np.abs(by_query["a red circle"] - by_query[""]).max() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-6)
    with pytest.raises(TypeError, match="list"):
        model.embed_texts("a red circle")


def test_devise_model_tokenize_and_unknown_words(saved_model):
    model, *_ = saved_model
    assert model.tokenize("A T-shirt, the dog's") == ["a", "t-shirt", "the", "dog", "'s"]
    assert model.unknown_words("a purple zebra, a purple circle") == ["purple", "zebra"]
    assert model.unknown_words("a red circle") == []
    assert model.unknown_words("") == []


@pytest.mark.parametrize("text", ["", "   ", "?!", "..."])
def test_check_query_refuses_empty_queries(saved_model, text):
    model, *_ = saved_model
    with pytest.raises(QueryError, match="empty"):
        model.check_query(text)


@pytest.mark.parametrize("text, unknown", [("zebra", ["zebra"]), ("purple zebra zebra", ["purple", "zebra"])])
def test_check_query_refuses_queries_without_a_known_word(saved_model, text, unknown):
    model, *_ = saved_model
    with pytest.raises(QueryError, match="no word") as info:
        model.check_query(text)
    assert info.value.unknown_words == unknown
    assert isinstance(info.value, ValueError)  # callers that catch ValueError still catch it


def test_check_query_accepts_and_returns_the_unknown_words(saved_model):
    model, *_ = saved_model
    assert model.check_query("a purple circle") == ["purple"]
    assert model.check_query("a red circle") == []
    with pytest.raises(QueryError, match="string"):
        model.check_query(None)


def test_devise_model_wraps_only_a_joint_model():
    with pytest.raises(TypeError, match="DeViSEJointModel"):
        DeViSEModel(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))


def test_load_refuses_a_keras_model_that_is_not_a_devise_model(tmp_path):
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(tmp_path / "model.keras")
    for path in (tmp_path, tmp_path / "model.keras"):
        with pytest.raises(DataFormatError, match=r"model\.keras: a Keras model but not a devise joint model"):
            DeViSEModel.load(path)


def _corruptions(good: bytes) -> dict[str, bytes]:
    def rewrite(member: str, change) -> bytes:
        """The archive with ``member`` changed (dropped where ``change`` returns None)."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(good)) as source, zipfile.ZipFile(buffer, "w") as target:
            for name in source.namelist():
                data = change(source.read(name)) if name == member else source.read(name)
                if data is not None:
                    target.writestr(name, data)
        return buffer.getvalue()

    return {
        "empty": b"",
        "not-a-zip": b"this is not a zip archive\n" * 20,
        "truncated": good[: len(good) // 2],
        "bad-config": rewrite("config.json", lambda data: b"{not json"),
        "no-weights": rewrite("model.weights.h5", lambda data: None),
        "truncated-weights": rewrite("model.weights.h5", lambda data: data[: len(data) // 2]),
    }


def test_load_names_a_corrupt_model_file(saved_model, tmp_path):
    _, directory, *_ = saved_model
    good = (directory / "model.keras").read_bytes()
    for name, data in _corruptions(good).items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.keras").write_bytes(data)
        for path in (folder, folder / "model.keras"):
            with pytest.raises(DataFormatError, match=r"model\.keras: cannot load model") as info:
                DeViSEModel.load(path)
            assert str(folder / "model.keras") in str(info.value), name


def test_load_names_a_directory_without_a_model(tmp_path):
    with pytest.raises(DataFormatError, match=r"no model\.keras"):
        DeViSEModel.load(tmp_path)
    with pytest.raises(DataFormatError, match="not a devise model"):
        DeViSEModel.load(tmp_path / "absent.keras")


_FRESH_PROCESS = """
import json, sys
import devise
model = devise.DeViSEModel.load(sys.argv[1])
texts = json.loads(sys.argv[2])
print(json.dumps({"embeddings": model.embed_texts(texts).tolist(), "unknown": [model.unknown_words(t) for t in texts]}))
"""


@pytest.mark.slow
def test_model_keras_alone_embeds_raw_strings_in_a_fresh_process(saved_model, tmp_path):
    """Only model.keras, in a new interpreter: the word table and tokeniser travel inside it."""
    model, directory, _, texts, _ = saved_model
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(directory / "model.keras", alone / "model.keras")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(alone / "model.keras"), json.dumps(QUERIES)],
        capture_output=True,
        text=True,
        cwd=alone,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(np.asarray(out["embeddings"], np.float32), texts, atol=1e-6, rtol=0)
    assert out["unknown"] == [model.unknown_words(q) for q in QUERIES]
    assert sorted(p.name for p in alone.iterdir()) == ["model.keras"]  # loading wrote nothing beside it


def test_public_api_exports_the_saved_types():
    assert devise.DeViSEModel is DeViSEModel
    assert devise.DeViSEJointModel is DeViSEJointModel
    assert devise.build_devise_model is build_devise_model
    assert devise.QueryError is QueryError and issubclass(QueryError, devise.DeviseError)
    assert devise.encoders.TextEncoder is TextEncoder
    assert devise.encoders.LinearProjector is LinearProjector
    assert devise.encoders.L2Normalize is L2Normalize
    assert devise.embeddings.build_word_table is not None
    assert not hasattr(devise.encoders, "LSTMTextEncoder")
    assert not hasattr(devise, "build_joint_keras_model")
