"""The caption encoder's forward pass in numpy, from a saved ``TextEncoder``'s config and weights.

:class:`devise.encoders.TextEncoder` is the model; this is a second way to
run it, for a query that should not wait for TensorFlow (importing it takes
about five seconds on a 2-core machine, embedding a query with numpy about a
millisecond). It reproduces the layer step by step: the tokeniser
(:func:`devise.datasets.text.tokenize`, the same function), the word lookup
(``StringLookup`` with ``""`` as mask, index 0, and the unknown word at
index 1), the word vectors (float32 or float16 storage, computed in
float32), the LSTM, GRU (Keras' ``reset_after=True`` convention), BiLSTM or masked
mean over the unpadded words, the linear map and the L2 normalisation.
Tests compare it with the Keras layer on every encoder kind.

A config it does not know (a new option, another dtype policy, weights of
another shape) raises :class:`UnsupportedTextEncoderError` rather than give
vectors that might be wrong; callers fall back to Keras.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from devise.datasets.text import tokenize
from devise.embeddings.word_table import UNKNOWN_WORD
from devise.errors import DataFormatError

#: The encoder kinds this module runs (all of ``devise.encoders.TEXT_ENCODER_KINDS``).
NUMPY_TEXT_ENCODER_KINDS = ("lstm", "gru", "bilstm", "mean")
#: The ``TextEncoder`` config keys understood here; any other key is refused.
KNOWN_CONFIG_KEYS = frozenset(
    {
        "name",
        "trainable",
        "dtype",
        "vocabulary",
        "word_dim",
        "output_dim",
        "kind",
        "units",
        "train_word_vectors",
        "dropout",
        "word_vectors_dtype",
        "lowercase",
        "max_length",
        "project",
    }
)
#: Where each kind keeps its recurrent cells' variables, below the encoder's own path.
CELL_PATHS = {
    "lstm": ("sequence/cell",),
    "gru": ("sequence/cell",),
    "bilstm": ("sequence/forward_layer/cell", "sequence/backward_layer/cell"),
    "mean": (),
}
_PADDING = ""
_L2_EPSILON = 1e-12  # devise.encoders.L2Normalize's default


class UnsupportedTextEncoderError(DataFormatError):
    """A saved text encoder whose config or weights this module does not reproduce; use Keras instead."""


def _dtype_policy_name(dtype) -> str | None:
    if isinstance(dtype, str):
        return dtype
    if isinstance(dtype, Mapping) and isinstance(dtype.get("config"), Mapping):
        return dtype["config"].get("name")
    return None


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # The tanh form never overflows, unlike 1 / (1 + exp(-x)) for large negative x.
    return np.float32(0.5) * (np.float32(1.0) + np.tanh(np.float32(0.5) * x))


class NumpyTextEncoder:
    """A saved :class:`~devise.encoders.TextEncoder`, run in numpy: raw text -> unit vectors.

    Use :meth:`from_saved` with the layer's config (as ``get_config`` wrote
    it) and its weights as a ``.keras`` file stores them.

    Example:
    ```python
    archive = devise.encoders.keras_archive.KerasArchive.read("model.keras")
    config = archive.config["config"]["text_encoder"]["config"]
    encoder = NumpyTextEncoder.from_saved(config, archive.variables, prefix="layers/text_encoder")
    vectors = encoder.embed_texts(["a red circle"])    # (1, output_dim), unit rows
    ```
    """

    def __init__(
        self,
        *,
        vocabulary: Sequence[str],
        word_vectors: np.ndarray,
        kind: str,
        cells: Sequence[tuple[np.ndarray, ...]],
        projection: tuple[np.ndarray, np.ndarray] | None,
        lowercase: bool,
        max_length: int,
    ):
        self.vocabulary = list(vocabulary)
        self.word_vectors = word_vectors
        self.kind = kind
        self.cells = list(cells)
        self.projection = projection
        self.lowercase = lowercase
        self.max_length = max_length
        # StringLookup's ids: 0 the padding (mask), 1 the unknown word, then the words in order.
        self._ids = dict(zip(self.vocabulary, range(2, len(self.vocabulary) + 2)))
        self.output_dim = projection[0].shape[1] if projection is not None else self._width()

    def _width(self) -> int:
        if self.kind == "mean":
            return self.word_vectors.shape[1]
        return sum(cell[1].shape[0] for cell in self.cells)

    # -- loading --------------------------------------------------------------------
    @classmethod
    def from_saved(
        cls, config: Mapping, variables: Mapping[str, Sequence[np.ndarray]], *, prefix: str = ""
    ) -> NumpyTextEncoder:
        """The encoder of a saved ``TextEncoder``.

        Args:
            config: the layer's config (``get_config()``).
            variables: layer path -> its variables in order (see
                :class:`devise.encoders.keras_archive.KerasArchive`).
            prefix: the encoder's own path among ``variables``; every path
                under it must be one this module expects.

        Raises:
            UnsupportedTextEncoderError: an unknown config key or value, a
                dtype policy other than float32, or variables of another
                layout or shape.
        """
        refuse = UnsupportedTextEncoderError
        if not isinstance(config, Mapping):
            raise refuse("the text encoder's config is not a JSON object")
        unknown = sorted(set(config) - KNOWN_CONFIG_KEYS)
        if unknown:
            raise refuse(f"the text encoder's config has keys this reader does not know: {', '.join(unknown)}")
        kind = config.get("kind")
        if kind not in NUMPY_TEXT_ENCODER_KINDS:
            raise refuse(f"text encoder kind {kind!r} is not one of {NUMPY_TEXT_ENCODER_KINDS}")
        policy = _dtype_policy_name(config.get("dtype", "float32"))
        if policy != "float32":
            raise refuse(f"the text encoder computes in dtype policy {policy!r}; only 'float32' is reproduced")
        storage = config.get("word_vectors_dtype", "float32")
        if storage not in ("float32", "float16"):
            raise refuse(f"word vectors stored as {storage!r}")
        vocabulary = config.get("vocabulary")
        if not isinstance(vocabulary, list) or not all(isinstance(w, str) and w for w in vocabulary):
            raise refuse("the text encoder's vocabulary is not a list of words")
        max_length = config.get("max_length")
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise refuse(f"max_length {max_length!r} is not a positive integer")
        lowercase, project = config.get("lowercase", True), config.get("project", True)
        if not isinstance(lowercase, bool) or not isinstance(project, bool):
            raise refuse("lowercase and project must be true or false")

        base = f"{prefix}/" if prefix else ""
        own = {path[len(base) :] if base else path: list(v) for path, v in variables.items() if path.startswith(base)}
        if prefix and prefix in variables:
            own[""] = list(variables[prefix])
        expected = {"", *CELL_PATHS[kind], *(["projection"] if project else [])}
        if set(own) != expected:
            raise refuse(
                f"the text encoder's weights are laid out as {sorted(own)}, expected {sorted(expected)} "
                f"for a {kind} encoder"
            )

        def shaped(path: str, count: int) -> list[np.ndarray]:
            found = own[path]
            if len(found) != count:
                raise refuse(f"{base}{path} holds {len(found)} variables, expected {count}")
            return found

        (table,) = shaped("", 1)
        if table.ndim != 2 or table.shape[0] != len(vocabulary) + 2 or str(table.dtype) != storage:
            raise refuse(
                f"word vectors of shape {table.shape} and dtype {table.dtype}, expected "
                f"({len(vocabulary) + 2}, word_dim) {storage}"
            )
        word_dim = table.shape[1]
        gates = {"lstm": 4, "bilstm": 4, "gru": 3}.get(kind)
        cells = []
        for path in CELL_PATHS[kind]:
            kernel, recurrent, bias = (np.asarray(a, np.float32) for a in shaped(path, 3))
            units = recurrent.shape[0]
            # A GRU's (2, 3u) bias is Keras' reset_after=True; (3u,) would be reset_after=False, not reproduced.
            bias_shapes = [(2, gates * units)] if kind == "gru" else [(gates * units,)]
            if (
                kernel.shape != (word_dim, gates * units)
                or recurrent.shape != (units, gates * units)
                or bias.shape not in bias_shapes
            ):
                raise refuse(
                    f"{base}{path}: weights of shapes {kernel.shape}, {recurrent.shape}, {bias.shape} "
                    f"do not make a {kind} cell over {word_dim}-d word vectors"
                )
            cells.append((kernel, recurrent, bias))
        projection = None
        encoder = cls(
            vocabulary=vocabulary,
            word_vectors=table,
            kind=kind,
            cells=cells,
            projection=None,
            lowercase=lowercase,
            max_length=max_length,
        )
        if project:
            kernel, bias = (np.asarray(a, np.float32) for a in shaped("projection", 2))
            if kernel.ndim != 2 or kernel.shape[0] != encoder.output_dim or bias.shape != (kernel.shape[1],):
                raise refuse(
                    f"{base}projection: weights of shapes {kernel.shape}, {bias.shape} do not map the "
                    f"{encoder.output_dim}-d encoder output"
                )
            projection = (kernel, bias)
            encoder.projection = projection
            encoder.output_dim = kernel.shape[1]
        if config.get("output_dim") != encoder.output_dim:
            raise refuse(f"output_dim {config.get('output_dim')!r} does not match the weights ({encoder.output_dim})")
        return encoder

    # -- text -> ids ------------------------------------------------------------------
    @property
    def known_words(self) -> Mapping[str, int]:
        """Every word of the table (a mapping to its lookup id, usable as a set)."""
        return self._ids

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text`` as the table spells them (the same function as the Keras layer)."""
        return tokenize(text, self._ids, lowercase=self.lowercase)

    def token_ids(self, texts: Sequence[str]) -> np.ndarray:
        """Lookup ids ``(N, max_length)``: 0 for padding, 1 for an unknown word.

        As :meth:`devise.encoders.TextEncoder.encode_texts`: at most
        ``max_length`` tokens, and a text with none becomes the unknown word.
        """
        out = np.zeros((len(texts), self.max_length), np.int64)
        for row, text in enumerate(texts):
            tokens = self.tokenize(text)[: self.max_length] or [UNKNOWN_WORD]
            out[row, : len(tokens)] = [self._ids.get(t, 1) for t in tokens]
        return out

    # -- forward pass -----------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors ``(N, output_dim)`` (float32), as the Keras layer gives them."""
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a list of strings; wrap a single query in a list")
        return self.embed_ids(self.token_ids(list(texts)))

    def embed_ids(self, ids: np.ndarray) -> np.ndarray:
        """Unit vectors of lookup ids ``(N, L)`` (0 = padding, at the end of each row)."""
        ids = np.asarray(ids, np.int64)
        mask = ids != 0
        x = self.word_vectors[ids].astype(np.float32)
        if self.kind == "mean":
            weights = mask[..., None].astype(np.float32)
            out = (x * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), np.float32(1.0))
        elif self.kind == "bilstm":
            forward = self._run(self.cells[0], x, mask)
            out = np.concatenate([forward, self._run(self.cells[1], *_reversed_rows(x, mask))], axis=1)
        else:
            out = self._run(self.cells[0], x, mask)
        if self.projection is not None:
            kernel, bias = self.projection
            out = out @ kernel + bias
        square_sum = np.sum(np.square(out), axis=-1, keepdims=True)
        return (out / np.sqrt(np.maximum(square_sum, np.float32(_L2_EPSILON)))).astype(np.float32)

    def _run(self, cell: tuple[np.ndarray, ...], x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The final state of a recurrent layer; masked steps carry the state over (Keras' convention)."""
        kernel, recurrent, bias = cell
        batch, steps, _ = x.shape
        units = recurrent.shape[0]
        h = np.zeros((batch, units), np.float32)
        c = np.zeros((batch, units), np.float32)
        inputs = x @ kernel  # (B, L, gates * units), all steps at once
        for t in range(steps):
            keep = mask[:, t]
            if not keep.any():
                continue
            if self.kind == "gru":
                new_h = _gru_step(inputs[:, t], h, recurrent, bias, units)
            else:
                new_h, new_c = _lstm_step(inputs[:, t] + bias, h, c, recurrent, units)
                c = np.where(keep[:, None], new_c, c)
            h = np.where(keep[:, None], new_h, h)
        return h


def _lstm_step(z_x, h, c, recurrent, units):
    """Keras' LSTM cell (gates i, f, c, o; tanh and sigmoid)."""
    z = z_x + h @ recurrent
    i = _sigmoid(z[:, :units])
    f = _sigmoid(z[:, units : 2 * units])
    g = np.tanh(z[:, 2 * units : 3 * units])
    o = _sigmoid(z[:, 3 * units :])
    c = f * c + i * g
    return o * np.tanh(c), c


def _gru_step(x_part, h, recurrent, bias, units):
    """Keras' GRU cell with ``reset_after=True`` (its default): gates z, r, h; the reset gate
    scales the recurrent product, which has its own bias (``bias[1]``)."""
    x_part = x_part + bias[0]
    inner = h @ recurrent + bias[1]
    z = _sigmoid(x_part[:, :units] + inner[:, :units])
    r = _sigmoid(x_part[:, units : 2 * units] + inner[:, units : 2 * units])
    candidate = np.tanh(x_part[:, 2 * units :] + r * inner[:, 2 * units :])
    return z * h + (1 - z) * candidate


def _reversed_rows(x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's unpadded steps in reverse order, padding after them.

    Keras' backward layer reads the padded sequence from its end; the padding
    comes first there and is masked (the state stays zero), so the result is
    that of the reversed words alone.
    """
    lengths = mask.sum(axis=1)
    steps = np.arange(mask.shape[1])
    source = np.where(steps[None, :] < lengths[:, None], lengths[:, None] - 1 - steps[None, :], steps[None, :])
    rows = np.arange(len(x))[:, None]
    return x[rows, source], mask[rows, source]
