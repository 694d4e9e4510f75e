"""Config round trips and ``.keras`` save/load for every public layer and the joint model."""

from __future__ import annotations

import copy
import inspect

import keras
import numpy as np
import pytest

import devise
from devise.datasets.text import Vocabulary
from devise.encoders.projector import L2Normalize, LinearProjector
from devise.encoders.text_encoder import LSTMTextEncoder
from devise.encoders.vgg16 import CaffeImagePreprocessing
from devise.losses import HingeRankLoss
from devise.model import DeViSEModel, build_joint_keras_model

VOCAB, WORD_DIM, JOINT_DIM, UNITS, MAX_LEN, IMAGE_DIM = 10, 4, 3, 5, 6, 7


def _tokens(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((n, MAX_LEN), np.int32)
    for row in range(n):
        length = rng.integers(1, MAX_LEN + 1)
        out[row, :length] = rng.integers(1, VOCAB, length)
    return out


def _floats(shape, seed: int, high: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-high, high, shape).astype(np.float32)


# (name, layer factory, input spec for keras.Input, sample input)
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
    "L2Normalize": (
        lambda: L2Normalize(epsilon=1e-6, name="l2"),
        dict(shape=(5,)),
        _floats((3, 5), 2),
    ),
    "LSTMTextEncoder": (
        lambda: LSTMTextEncoder(
            VOCAB,
            WORD_DIM,
            JOINT_DIM,
            lstm_units=UNITS,
            train_word_vectors=True,
            dropout=0.25,
            embedding_matrix=_floats((VOCAB, WORD_DIM), 3),
            name="text",
        ),
        dict(shape=(MAX_LEN,), dtype="int32"),
        _tokens(4, 4),
    ),
    "CaffeImagePreprocessing": (
        lambda: CaffeImagePreprocessing(name="caffe"),
        dict(shape=(6, 5, 3)),
        np.random.default_rng(5).uniform(0, 255, (2, 6, 5, 3)).astype(np.float32),
    ),
}


def test_every_registered_devise_layer_is_covered():
    registered = {
        name.split(">", 1)[1]
        for name, obj in keras.saving.get_custom_objects().items()
        if name.startswith("devise>") and inspect.isclass(obj) and issubclass(obj, keras.layers.Layer)
    }
    covered = {key.split("-")[0] for key in LAYERS}
    assert registered == covered


@pytest.mark.parametrize("key", list(LAYERS))
def test_layer_config_round_trip(key):
    factory, spec, sample = LAYERS[key]
    layer = factory()
    layer(keras.Input(**spec))  # built, as in a real model
    config = layer.get_config()
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
    inputs = keras.Input(**spec)
    model = keras.Model(inputs, factory()(inputs))
    expected = keras.ops.convert_to_numpy(model(sample, training=False))
    path = tmp_path / "layer.keras"
    model.save(path)

    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(sample, training=False)), expected)
    assert len(loaded.weights) == len(model.weights)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_text_encoder_weights_survive_without_the_embedding_matrix(tmp_path):
    """The word vectors are not in the config, so they must come back from the weights."""
    matrix = _floats((VOCAB, WORD_DIM), 6)
    inputs = keras.Input((MAX_LEN,), dtype="int32")
    encoder = LSTMTextEncoder(VOCAB, WORD_DIM, JOINT_DIM, lstm_units=UNITS, embedding_matrix=matrix, name="text")
    model = keras.Model(inputs, encoder(inputs))
    model.save(tmp_path / "text.keras")
    loaded = keras.saving.load_model(tmp_path / "text.keras")
    embeddings = loaded.get_layer("text").embedding.embeddings
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(embeddings), matrix)


# -- the joint model ---------------------------------------------------------------


def _joint_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_joint_keras_model(
        image_dim=IMAGE_DIM,
        vocabulary_size=VOCAB,
        word_dim=WORD_DIM,
        joint_dim=JOINT_DIM,
        lstm_units=UNITS,
        max_caption_length=MAX_LEN,
        embedding_matrix=_floats((VOCAB, WORD_DIM), 7),
        projector_bias=True,
        text_dropout=0.1,
    )


def _joint_inputs(n: int = 4):
    return {"image_features": _floats((n, IMAGE_DIM), 8, high=3.0), "token_ids": _tokens(n, 9)}


def test_joint_model_config_round_trip():
    model = _joint_model()
    config = model.get_config()
    # (Keras' functional from_config consumes the dict it is given.)
    clone = keras.Model.from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    assert [type(layer) for layer in clone.layers] == [type(layer) for layer in model.layers]


def test_joint_model_keras_file_round_trip(tmp_path):
    model = _joint_model()
    inputs = _joint_inputs()
    expected = keras.ops.convert_to_numpy(model(inputs, training=False))
    assert expected.shape == (4, 2 * JOINT_DIM)
    model.save(tmp_path / "joint.keras")
    loaded = keras.saving.load_model(tmp_path / "joint.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(inputs, training=False)), expected)


def test_hinge_rank_loss_survives_compile_save_and_load(tmp_path):
    model = _joint_model()
    loss = HingeRankLoss(margin=0.3, negatives="hardest", directions="image_to_text")
    model.compile(optimizer="adam", loss=loss)
    inputs = _joint_inputs(6)
    groups = np.array([0, 0, 1, 2, 3, 4], np.int32)  # two captions of image 0
    model.fit(inputs, groups, batch_size=6, epochs=1, verbose=0)  # builds the optimizer state
    expected = model.evaluate(inputs, groups, batch_size=6, verbose=0)
    model.save(tmp_path / "compiled.keras")

    loaded = keras.saving.load_model(tmp_path / "compiled.keras", compile=True)
    assert isinstance(loaded.loss, HingeRankLoss)
    assert loaded.loss.get_config() == loss.get_config()
    assert (loaded.loss.margin, loaded.loss.negatives, loaded.loss.directions) == (0.3, "hardest", "image_to_text")
    assert loaded.evaluate(inputs, groups, batch_size=6, verbose=0) == pytest.approx(expected, rel=1e-6)
    loaded.fit(inputs, groups, batch_size=6, epochs=1, verbose=0)  # and it still trains


def test_hinge_rank_loss_config_round_trip():
    loss = HingeRankLoss(margin=0.2, negatives="all", directions="text_to_image")
    assert HingeRankLoss.from_config(loss.get_config()).get_config() == loss.get_config()


def test_devise_model_save_load(tmp_path):
    captions = ["a red circle", "two blue squares", "a small red square", "one big blue circle"]
    vocab = Vocabulary.build(captions)
    keras.utils.set_random_seed(0)
    keras_model = build_joint_keras_model(
        image_dim=IMAGE_DIM,
        vocabulary_size=len(vocab),
        word_dim=WORD_DIM,
        joint_dim=JOINT_DIM,
        lstm_units=UNITS,
        max_caption_length=MAX_LEN,
        embedding_matrix=_floats((len(vocab), WORD_DIM), 10),
    )
    model = DeViSEModel(keras_model, vocab, MAX_LEN, image_fingerprint="vgg16-fc7|none|224x224|4096")
    queries = [*captions, "a purple triangle", ""]
    features = _floats((5, IMAGE_DIM), 11, high=5.0)
    texts = model.embed_texts(queries)
    images = model.embed_image_features(features)
    assert texts.shape == (len(queries), JOINT_DIM) and images.shape == (5, JOINT_DIM)

    model.save(tmp_path / "run")
    loaded = DeViSEModel.load(tmp_path / "run")
    np.testing.assert_array_equal(loaded.embed_texts(queries), texts)
    np.testing.assert_array_equal(loaded.embed_image_features(features), images)
    assert loaded.vocabulary.words == vocab.words
    assert loaded.max_caption_length == MAX_LEN
    assert loaded.image_fingerprint == model.image_fingerprint
    assert (loaded.joint_dim, loaded.image_dim) == (JOINT_DIM, IMAGE_DIM)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model.json", "model.keras", "vocabulary.json"]


def test_public_api_exports_the_saved_types():
    assert devise.DeViSEModel is DeViSEModel
    assert devise.encoders.LSTMTextEncoder is LSTMTextEncoder
    assert devise.encoders.LinearProjector is LinearProjector


@pytest.mark.parametrize("meta", ["{}", "[]", '{"max_caption_length": "long"}', "{not json"])
def test_devise_model_load_names_a_bad_model_json(meta, tmp_path):
    vocab = Vocabulary.build(["a red circle"])
    keras_model = build_joint_keras_model(
        image_dim=IMAGE_DIM, vocabulary_size=len(vocab), word_dim=WORD_DIM, joint_dim=JOINT_DIM,
        lstm_units=UNITS, max_caption_length=MAX_LEN,
    )
    DeViSEModel(keras_model, vocab, MAX_LEN).save(tmp_path)
    (tmp_path / "model.json").write_text(meta)
    with pytest.raises(devise.errors.DataFormatError, match=r"model\.json: not a devise model description"):
        DeViSEModel.load(tmp_path)
