"""The text side of a saved DeViSE model in numpy: queries embedded without importing TensorFlow.

A text search needs the model for three things: its fingerprint (to check
the index was built by it), its word table (to refuse a query with no known
word) and the query's vector. :class:`NumpyTextModel` reads all three from
``model.keras`` with ``zipfile``, ``json`` and ``h5py``
(:mod:`devise.encoders.keras_archive`) and embeds text with
:class:`devise.encoders.text_numpy.NumpyTextEncoder`: a command-line query
then answers in a fraction of a second instead of waiting about five
seconds for TensorFlow. Images still need :class:`devise.model.DeViSEModel`
(and the CNN). The fingerprint and the query check are defined here, once,
and :class:`~devise.model.DeViSEModel` uses the same functions.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Container, Iterable, Sequence

import numpy as np

from devise.encoders.keras_archive import KerasArchive
from devise.encoders.text_numpy import CELL_PATHS, NumpyTextEncoder, UnsupportedTextEncoderError
from devise.errors import DataFormatError, QueryError

MODEL_FILE = "model.keras"
JOINT_MODEL = "devise>DeViSEJointModel"
_JOINT_KEYS = frozenset({"name", "trainable", "image_projector", "text_encoder", "image_dim", "image_fingerprint"})
# Where a .keras file keeps each part's variables (class names in snake case, then attribute names).
_IMAGE_PATHS = ("layers/linear_projector", "layers/linear_projector/dense")
_TEXT_PATH = "layers/text_encoder"
# Training state Keras saves with a compiled model (devise-train's): not needed to embed anything.
_TRAINING_STATE = "optimizer"


def model_fingerprint(image_fingerprint: str, words: Sequence[str], weights: Iterable[np.ndarray]) -> str:
    """The fingerprint of a joint model: SHA-256 of the image extractor's fingerprint, the words and every weight.

    ``weights`` in the order of ``keras.Model.get_weights()``. An index
    stores it, and readers refuse a mismatch instead of mixing two models'
    vector spaces.
    """
    digest = hashlib.sha256()
    digest.update(image_fingerprint.encode())
    digest.update("\n".join(words).encode())
    for weight in weights:
        array = np.ascontiguousarray(weight)
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def check_query_tokens(text, tokens: Sequence[str], known: Container[str]) -> list[str]:
    """Refuse a query that cannot be embedded; return its unknown words otherwise.

    Args:
        text: the query as given.
        tokens: its tokens, as the model's word table spells them.
        known: the words of the table.

    Raises:
        QueryError: ``text`` has no word at all, or none the model knows.
    """
    if not tokens:
        raise QueryError("the query is empty: type some words (e.g. 'a red circle')")
    unknown = list(dict.fromkeys(t for t in tokens if t not in known))
    if len(unknown) == len(set(tokens)):
        raise QueryError(
            f"no word of the query {text!r} has a word vector (unknown: {', '.join(unknown)}); "
            "try other words or check the spelling",
            unknown,
        )
    return unknown


class TextQueryMethods:
    """The query-side methods :class:`NumpyTextModel` and :class:`devise.model.DeViSEModel` share.

    Both hold a ``text_encoder`` (numpy or Keras) with ``tokenize``,
    ``known_words``, ``vocabulary`` and ``max_length``; these methods need
    nothing else, so the two models answer the same way.
    """

    @property
    def max_caption_length(self) -> int:
        return self.text_encoder.max_length

    @property
    def words(self) -> list[str]:
        """The words of the model's table (each embeds with its own vector)."""
        return self.text_encoder.vocabulary

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text`` as the model's word table spells them."""
        return self.text_encoder.tokenize(text)

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` that the model's word table lacks (each once, in order)."""
        known = self.text_encoder.known_words
        return list(dict.fromkeys(t for t in self.tokenize(text) if t not in known))

    def check_query(self, text: str) -> list[str]:
        """Refuse a query that cannot be embedded; return its unknown words otherwise.

        Raises:
            QueryError: ``text`` is not a string, has no word at all, or none the model knows.
        """
        if not isinstance(text, str):
            raise QueryError(f"a query is a string, got {type(text).__name__}")
        return check_query_tokens(text, self.tokenize(text), self.text_encoder.known_words)


class NumpyTextModel(TextQueryMethods):
    """A saved DeViSE model's text side, run in numpy: fingerprint, word table, text -> joint vectors.

    The text methods match :class:`devise.model.DeViSEModel`'s, and its
    vectors match to 1e-5 (tests check every encoder kind).

    Args:
        path: the ``model.keras`` file.
        encoder: its text encoder.
        image_fingerprint: the image extractor the model was trained on.
        image_dim: size of the CNN features the image side takes.
        fingerprint: the model's fingerprint (:func:`model_fingerprint`).

    Example:
    ```python
    model = devise.numpy_model.NumpyTextModel.load("runs/demo-20261127-101500")
    vector = model.embed_texts(["two red circles"])[0]       # no TensorFlow imported
    ```
    """

    def __init__(
        self, path: str, encoder: NumpyTextEncoder, *, image_fingerprint: str, image_dim: int, fingerprint: str
    ):
        self.path = path
        self.text_encoder = encoder
        self.image_fingerprint = image_fingerprint
        self.image_dim = image_dim
        self._fingerprint = fingerprint

    @classmethod
    def load(cls, path: str | os.PathLike) -> NumpyTextModel:
        """Read a ``model.keras`` file, or the one in a directory (e.g. a run directory).

        Raises:
            DataFormatError: not a model file, or a damaged one.
            UnsupportedTextEncoderError: a model this reader does not
                reproduce (another layout, option or dtype policy); load it
                with :meth:`devise.model.DeViSEModel.load` instead.
        """
        path = os.fspath(path)
        file = os.path.join(path, MODEL_FILE) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise DataFormatError(f"{path}: not a devise model (no {MODEL_FILE})")
        archive = KerasArchive.read(file)
        refuse = UnsupportedTextEncoderError
        top = archive.config
        config = top.get("config")
        if top.get("registered_name") != JOINT_MODEL or not isinstance(config, dict):
            raise refuse(f"{file}: not a devise joint model ({top.get('registered_name') or top.get('class_name')!r})")
        unknown = sorted(set(config) - _JOINT_KEYS)
        if unknown:
            raise refuse(f"{file}: the joint model's config has keys this reader does not know: {', '.join(unknown)}")
        text, image = config.get("text_encoder"), config.get("image_projector")
        if not isinstance(text, dict) or text.get("registered_name") != "devise>TextEncoder":
            raise refuse(f"{file}: the text side is not a devise TextEncoder")
        if not isinstance(image, dict) or image.get("registered_name") != "devise>LinearProjector":
            raise refuse(f"{file}: the image side is not a devise LinearProjector")
        paths = {p for p in archive.layer_paths() if p != _TRAINING_STATE and not p.startswith(_TRAINING_STATE + "/")}
        image_paths = [p for p in _IMAGE_PATHS if p in paths]
        text_paths = {p for p in paths if p == _TEXT_PATH or p.startswith(_TEXT_PATH + "/")}
        if _IMAGE_PATHS[1] not in paths or paths - set(image_paths) - text_paths:
            raise refuse(f"{file}: weights laid out as {sorted(paths)}, not as a devise joint model")
        try:
            encoder = NumpyTextEncoder.from_saved(text.get("config"), archive.variables, prefix=_TEXT_PATH)
        except UnsupportedTextEncoderError as exc:
            raise refuse(f"{file}: {exc}") from None
        joint_dim = (image.get("config") or {}).get("output_dim")
        if joint_dim != encoder.output_dim:
            raise refuse(f"{file}: the text side gives {encoder.output_dim}-d vectors, the image side {joint_dim!r}")
        image_fingerprint = config.get("image_fingerprint", "")
        if not isinstance(image_fingerprint, str):
            raise refuse(f"{file}: image_fingerprint is not a string")
        image_dim = config.get("image_dim")
        if not isinstance(image_dim, int) or isinstance(image_dim, bool) or image_dim < 1:
            raise refuse(f"{file}: image_dim is {image_dim!r}, not a positive whole number")
        # Keras' get_weights() order: each layer's own variables, then its sublayers'.
        order = [*image_paths, *_text_order(encoder)]
        weights = [w for p in order for w in archive.variables[p]]
        fingerprint = model_fingerprint(image_fingerprint, encoder.vocabulary, weights)
        return cls(
            file,
            encoder,
            image_fingerprint=image_fingerprint,
            image_dim=image_dim,
            fingerprint=fingerprint,
        )

    @property
    def joint_dim(self) -> int:
        return self.text_encoder.output_dim

    def fingerprint(self) -> str:
        """The fingerprint :meth:`devise.model.DeViSEModel.fingerprint` gives for the same file."""
        return self._fingerprint

    def embed_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        """Joint-space unit vectors ``(N, joint_dim)`` of captions or queries (float32)."""
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a list of strings; wrap a single query in a list")
        texts = list(texts)
        out = np.empty((len(texts), self.joint_dim), np.float32)
        for start in range(0, len(texts), batch_size):
            out[start : start + batch_size] = self.text_encoder.embed_texts(texts[start : start + batch_size])
        return out


def _text_order(encoder: NumpyTextEncoder) -> list[str]:
    own = [_TEXT_PATH, *(f"{_TEXT_PATH}/{p}" for p in CELL_PATHS[encoder.kind])]
    return own + ([f"{_TEXT_PATH}/projection"] if encoder.projection is not None else [])
