"""Typed experiment configs, loaded strictly from YAML.

An experiment config is a tree of frozen dataclasses. Loading rejects an
unknown key (suggesting the closest valid one), a value of the wrong type,
outside its allowed choices or outside its numeric range, naming the full
key path; command-line
overrides ``key.sub=value`` go through the same checks. See docs/configs.md
for every key.

The config describes a whole experiment, and more than the trainer reads
it: search, evaluation and the console commands read a finished run's
``config.yaml`` to rebuild its image backbone and dataset. So it lives here,
below ``devise.training`` and ``devise.search`` alike, and depends on
nothing above the foundations; ``devise.training.config`` re-exports it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from typing import Any, Literal

import yaml

from devise.atomicfile import atomic_path
from devise.errors import SHOWN_CHARS, ConfigError, shown

#: Larger config files are refused: a config is a few kB.
MAX_CONFIG_BYTES = 1 << 20


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases: nested ``*refs`` expand exponentially (a "YAML bomb")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in devise configs", mark
            )
        return super().compose_node(parent, index)


def _load_yaml(text: str):
    """Parse YAML; a value YAML matches but cannot build (a 5000-digit int, month 13) is a YAMLError too."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except (ValueError, OverflowError, TypeError) as exc:  # raised by the constructors, not the parser
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= SHOWN_CHARS else detail[: SHOWN_CHARS - 3] + "..."
        raise yaml.constructor.ConstructorError(None, None, f"a value cannot be built: {detail}") from None


# Scientific notation that YAML 1.1 leaves as a string ("1e-3", "2E5").
_YAML_11_FLOAT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


#: Upper bounds of integer keys: far above any real run, low enough that no
#: library overflows (NumPy seeds are below 2**32, TensorFlow sizes int32/int64).
_LARGEST_SEED = 2**32 - 1
_LARGEST_COUNT = 1_000_000
_LARGEST_INT = 2**31 - 1


def _number(
    default,
    *,
    at_least: float | None = None,
    above: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
):
    """A numeric field with a range, checked (with its key path) when a config is loaded.

    The ranges reject at load time, and so under ``--check``, values that
    would otherwise fail deep inside Keras or TensorFlow after minutes of
    feature extraction (``batch_size=0``, ``text_dropout=1.5``,
    ``batch_size=10**30``). Every integer key has an ``at_most``.
    """
    metadata = {"at_least": at_least, "above": above, "below": below, "at_most": at_most}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How images are split: per category (the Pascal 1K protocol: 40/5/5), or as the dataset file says."""

    by: Literal["category", "dataset"] = "category"
    train: int = _number(40, at_least=0, at_most=_LARGEST_COUNT)
    val: int = _number(5, at_least=0, at_most=_LARGEST_COUNT)
    test: int = _number(5, at_least=0, at_most=_LARGEST_COUNT)
    seed: int = _number(0, at_least=0, at_most=_LARGEST_SEED)


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    """Parameters of the generated demo dataset."""

    images_per_category: int = _number(50, at_least=1, at_most=100_000)
    image_size: int = _number(128, at_least=32, at_most=4096)
    seed: int = _number(0, at_least=0, at_most=_LARGEST_SEED)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which captions and images to train on."""

    dataset: Literal["shapes", "pascal", "karpathy", "flickr_tokens", "coco", "manifest", "folders"] = "shapes"
    root: str = "data/shapes"
    annotations: str | None = None
    images: str | None = None
    labels: str | None = None
    download: bool = False
    url: str | None = None
    split: SplitConfig = SplitConfig()
    shapes: ShapesConfig = ShapesConfig()
    min_word_count: int = _number(1, at_least=0, at_most=_LARGEST_INT)
    max_caption_length: int = _number(32, at_least=1, at_most=10_000)
    strict: bool = False


@dataclasses.dataclass(frozen=True)
class WordVectorsConfig:
    """Word vectors that initialise the text encoder."""

    source: Literal["file", "glove_offline_50d"] = "glove_offline_50d"
    format: Literal["glove", "word2vec_text", "word2vec_binary"] = "glove"
    path: str | None = None
    dim: int | None = _number(None, at_least=1, at_most=100_000)
    cache_dir: str | None = None
    download: bool = False
    variant: str = "6B"
    url: str | None = None
    oov: Literal["random", "zero", "unk"] = "random"
    train: bool = False
    max_words: int | None = _number(100_000, at_least=1, at_most=100_000_000)
    dtype: Literal["float32", "float16"] = "float32"
    lowercase: bool = True


@dataclasses.dataclass(frozen=True)
class ImageEncoderConfig:
    """The frozen CNN whose features are cached and projected."""

    backbone: Literal["vgg16", "efficientnet_lite0", "keras_application", "keras_model"] = "efficientnet_lite0"
    weights: str | None = "imagenet"
    allow_download: bool = False
    batch_size: int = _number(32, at_least=1, at_most=_LARGEST_COUNT)
    device: str | None = None
    cache_dir: str = "data/feature_cache"
    resize: Literal["crop", "pad"] = "crop"
    # keras_application: the keras.applications network (ResNet50, VGG19, EfficientNetB0, ...).
    application: str | None = None
    # keras_application / keras_model: the feature layer (None: pooled last block / the output), and its pooling.
    layer: str | None = None
    pooling: Literal["avg", "max"] = "avg"
    # keras_application: square input size (None: the network's own, 224 for most).
    input_size: int | None = _number(None, at_least=32, at_most=4096)
    # Threads decoding image files (None: one per CPU core); float16 compute on a GPU.
    workers: int | None = _number(None, at_least=1, at_most=1024)
    mixed_precision: bool = False
    # manifest.json of devise-beam-extract: features read from its shards, the rest through the cache.
    features: str | None = None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes of the joint model."""

    joint_dim: int = _number(256, at_least=1, at_most=65_536)
    text_encoder: Literal["lstm", "gru", "bilstm", "mean"] = "lstm"
    lstm_units: int = _number(256, at_least=1, at_most=65_536)
    projector_bias: bool = False
    text_dropout: float = _number(0.0, at_least=0.0, below=1.0)
    image_dropout: float = _number(0.0, at_least=0.0, below=1.0)
    standardize_features: bool = False


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The training objective: the hinge rank loss, or the paper's L2 regression baseline."""

    kind: Literal["hinge_rank", "regression"] = "hinge_rank"
    margin: float = _number(0.1, at_least=0.0)
    negatives: Literal["all", "hardest", "sampled"] = "all"
    directions: Literal["both", "image_to_text", "text_to_image"] = "both"


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Optimisation and placement."""

    epochs: int = _number(20, at_least=0, at_most=_LARGEST_COUNT)
    batch_size: int = _number(128, at_least=1, at_most=_LARGEST_COUNT)
    optimizer: Literal["adam", "adagrad", "sgd"] = "adam"
    learning_rate: float = _number(2e-4, above=0.0)
    clip_norm: float | None = _number(2.0, above=0.0)
    weight_decay: float = _number(0.0, at_least=0.0)
    strategy: Literal["off", "mirrored", "multi_worker_mirrored"] = "off"
    mixed_precision: Literal["off", "float16", "bfloat16"] = "off"
    seed: int = _number(0, at_least=0, at_most=_LARGEST_SEED)
    eval_split: Literal["train", "val", "test"] = "test"


@dataclasses.dataclass(frozen=True)
class ZeroShotConfig:
    """Zero-shot classification on a class-per-folder dataset (``data.dataset: folders``)."""

    unseen: tuple[str, ...] = ()
    allow_missing_labels: bool = False
    epochs: int = _number(100, at_least=1, at_most=_LARGEST_COUNT)
    learning_rate: float = _number(0.01, above=0.0)
    margin: float = _number(0.1, at_least=0.0)
    top_t: int = _number(10, at_least=1, at_most=_LARGEST_COUNT)
    standardize: bool = True


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment: data -> features -> model -> training -> evaluation."""

    name: str = "devise"
    output_dir: str = "runs"
    data: DataConfig = DataConfig()
    word_vectors: WordVectorsConfig = WordVectorsConfig()
    image_encoder: ImageEncoderConfig = ImageEncoderConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    trainer: TrainerConfig = TrainerConfig()
    zeroshot: ZeroShotConfig = ZeroShotConfig()


# --------------------------------------------------------------------------
# Strict conversion between plain data and the dataclasses.


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return "a list"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp, path: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path or '<root>'}: expected a mapping of keys, got {shown(value)}")
        return _build(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, path)
            except ConfigError:
                pass
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {shown(value)}")
    if origin is tuple:  # tuple[X, ...]: a YAML list (tuples keep the config frozen)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {shown(value)}")
        item = typing.get_args(tp)[0]
        return tuple(_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{path}: {shown(value)} is not {_type_name(tp)}{hint}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{path}: expected null, got {shown(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str) and _YAML_11_FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # YAML's .nan / .inf would train to NaN losses
                raise ConfigError(f"{path}: must be a finite number, got {shown(value)}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {shown(value)} ({type(value).__name__})")


def _check_range(value, metadata, path: str) -> None:
    if value is None:
        return
    at_least, above, below = metadata.get("at_least"), metadata.get("above"), metadata.get("below")
    at_most = metadata.get("at_most")
    if at_most is None and isinstance(value, int):
        at_most = _LARGEST_INT
    if at_least is not None and value < at_least:
        raise ConfigError(f"{path}: must be >= {at_least}, got {shown(value)}")
    if above is not None and value <= above:
        raise ConfigError(f"{path}: must be > {above}, got {shown(value)}")
    if below is not None and value >= below:
        raise ConfigError(f"{path}: must be < {below}, got {shown(value)}")
    if at_most is not None and value > at_most:
        raise ConfigError(f"{path}: must be <= {at_most}, got {shown(value)}")


def _check_integer(value, tp, metadata, path: str) -> None:
    """Refuse a non-integer for an int key, saying the range (``1e30`` is a string in YAML 1.1, ``2.5`` a float)."""
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if int not in options or (value is None and type(None) in options):
        return
    if isinstance(value, int) and not isinstance(value, bool):
        return
    low = metadata.get("at_least", 0)
    high = metadata.get("at_most") or _LARGEST_INT
    optional = " or null" if type(None) in options else ""
    raise ConfigError(
        f"{path}: expected int from {low} to {high}{optional}, got {shown(value)} ({type(value).__name__})"
    )


def _build(cls, data: dict, path: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f"; did you mean '{(path + '.' if path else '') + close[0]}'?" if close else ""
            raise ConfigError(f"{full}: unknown key{hint} (valid keys here: {', '.join(names)})")
        _check_integer(value, hints[key], fields[key].metadata, full)
        kwargs[key] = _convert(value, hints[key], full)
        _check_range(kwargs[key], fields[key].metadata, full)
    return cls(**kwargs)


def config_from_dict(data: dict, cls=ExperimentConfig):
    """Build a config from plain data, strictly (unknown key or wrong type -> ConfigError)."""
    return _convert(data if data is not None else {}, cls, "")


def config_to_dict(config) -> dict:
    """Plain data (nested dicts and lists) of a config, ready for YAML."""
    return dataclasses.asdict(
        config, dict_factory=lambda items: {k: list(v) if isinstance(v, tuple) else v for k, v in items}
    )


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {shown(text)}: expected key.sub=value (e.g. trainer.epochs=5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"override {shown(text)}: {key!r} is not a dotted key path like trainer.epochs")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {shown(text)}: value is not valid YAML ({exc.problem})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to plain data."""
    data = _deep_copy(data)
    for text in overrides:
        parts, value = _parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {shown(text)}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _deep_copy(data):
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    return data


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an :class:`ExperimentConfig` from YAML, then apply overrides.

    Args:
        path: a YAML file, or ``None`` to start from the defaults.
        overrides: ``["trainer.epochs=5", "data.root=/data/pascal", ...]``.

    Raises:
        ConfigError: unreadable file, invalid YAML, unknown key, wrong type,
            or bad override; the message names the file and key path.
    """
    data: dict = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read(MAX_CONFIG_BYTES + 1)
            if len(text) > MAX_CONFIG_BYTES:
                raise ConfigError(f"{path}: over {MAX_CONFIG_BYTES // 1024} kB; not a devise config")
            data = _load_yaml(text) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config ({exc})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
    data = apply_overrides(data, list(overrides or []))
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from None
        raise


def save_config(config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (through a temporary file and a rename)."""
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
