import dataclasses
from pathlib import Path

import pytest
import yaml

from devise.errors import ConfigError
from devise.training.config import (
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)

CONFIGS = sorted(f"configs/{p.name}" for p in (Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_load_and_round_trip(path, tmp_path, repo_root):
    config = load_config(repo_root / path)
    assert isinstance(config, ExperimentConfig)
    saved = tmp_path / "resolved.yaml"
    save_config(config, saved)
    assert load_config(saved) == config
    assert config_from_dict(config_to_dict(config)) == config


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_open_with_the_command_that_runs_them(path, repo_root):
    first = (repo_root / path).read_text().splitlines()[:3]
    assert any(f"devise-train --config {path}" in line for line in first)


def test_defaults_are_a_valid_config():
    assert config_from_dict({}) == ExperimentConfig()


def test_unknown_key_names_path_and_suggests(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("trainer:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    msg = str(err.value)
    assert str(f) in msg and "trainer.epoch: unknown key" in msg and "did you mean 'trainer.epochs'" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"trainer": {"epochs": "ten"}}, "trainer.epochs: expected int from 0 to 1000000, got 'ten'"),
        ({"trainer": {"epochs": True}}, "trainer.epochs: expected int"),
        ({"trainer": {"learning_rate": "fast"}}, "trainer.learning_rate: expected float"),
        ({"image_encoder": {"backbone": "vgg61"}}, "did you mean 'vgg16'"),
        ({"data": 5}, "data: expected a mapping"),
        ({"data": {"split": {"train": 4.5}}}, "data.split.train: expected int"),
        ({"word_vectors": {"path": 3}}, "word_vectors.path: expected str or null"),
        ({"trainer": {"strategy": "tpu"}}, "trainer.strategy: 'tpu' is not one of"),
    ],
)
def test_wrong_types_and_choices(data, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert fragment in str(err.value)


def test_scientific_notation_is_a_float_even_where_yaml_reads_a_string():
    config = load_config(None, ["trainer.learning_rate=1e-3", "loss.margin=2E-1", "trainer.weight_decay=5e-5"])
    assert (config.trainer.learning_rate, config.loss.margin, config.trainer.weight_decay) == (1e-3, 0.2, 5e-5)
    with pytest.raises(ConfigError, match="trainer.learning_rate: expected float"):
        load_config(None, ["trainer.learning_rate=fast"])


def test_ints_are_accepted_for_floats_and_null_for_optionals():
    config = config_from_dict({"trainer": {"learning_rate": 1, "clip_norm": None}})
    assert config.trainer.learning_rate == 1.0 and isinstance(config.trainer.learning_rate, float)
    assert config.trainer.clip_norm is None


def test_overrides_apply_with_yaml_values_and_are_checked():
    config = load_config(None, ["trainer.epochs=3", "model.joint_dim=64", "word_vectors.path=null", "name=x y"])
    assert (config.trainer.epochs, config.model.joint_dim, config.word_vectors.path, config.name) == (
        3,
        64,
        None,
        "x y",
    )
    with pytest.raises(ConfigError, match="trainer.epochs: expected int"):
        load_config(None, ["trainer.epochs=many"])
    with pytest.raises(ConfigError, match="did you mean 'model.joint_dim'"):
        load_config(None, ["model.joint_dims=3"])


@pytest.mark.parametrize("bad", ["trainer.epochs", "=3", "trainer..epochs=3", "trainer.epochs=[1,"])
def test_bad_override_syntax(bad):
    with pytest.raises(ConfigError, match="override"):
        load_config(None, [bad])


def test_override_into_a_scalar_is_refused():
    with pytest.raises(ConfigError, match="name is not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_file_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: ok\ntrainer: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar)


def test_configs_are_frozen():
    config = ExperimentConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"


def test_saved_yaml_is_plain(tmp_path):
    save_config(ExperimentConfig(), tmp_path / "c.yaml")
    data = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert data["trainer"]["epochs"] == ExperimentConfig().trainer.epochs


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("trainer.batch_size=0", "trainer.batch_size: must be >= 1, got 0"),
        ("trainer.epochs=-1", "trainer.epochs: must be >= 0"),
        ("trainer.learning_rate=0", "trainer.learning_rate: must be > 0.0"),
        ("trainer.clip_norm=-2", "trainer.clip_norm: must be > 0.0"),
        ("trainer.seed=-1", "trainer.seed: must be >= 0"),
        ("loss.margin=-0.1", "loss.margin: must be >= 0.0"),
        ("model.text_dropout=1.5", "model.text_dropout: must be < 1.0"),
        ("model.joint_dim=0", "model.joint_dim: must be >= 1"),
        ("image_encoder.batch_size=0", "image_encoder.batch_size: must be >= 1"),
        ("data.split.train=-1", "data.split.train: must be >= 0"),
        ("data.max_caption_length=0", "data.max_caption_length: must be >= 1"),
        ("data.shapes.image_size=8", "data.shapes.image_size: must be >= 32"),
        ("word_vectors.dim=0", "word_vectors.dim: must be >= 1"),
        ("loss.margin=.nan", "loss.margin: must be a finite number"),
        ("trainer.learning_rate=.inf", "trainer.learning_rate: must be a finite number"),
        ("model.image_dropout=1", "model.image_dropout: must be < 1.0"),
        ("word_vectors.max_words=0", "word_vectors.max_words: must be >= 1"),
        ("zeroshot.epochs=0", "zeroshot.epochs: must be >= 1"),
    ],
)
def test_numbers_outside_their_range_are_refused_with_the_key(override, fragment):
    # These used to pass --check and then fail with a Keras/TensorFlow traceback mid-run.
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_range_edges_and_null_optionals_are_accepted():
    config = load_config(
        None,
        [
            "trainer.epochs=0",
            "loss.margin=0",
            "model.text_dropout=0.5",
            "trainer.clip_norm=null",
            "word_vectors.dim=null",
        ],
    )
    assert (config.trainer.epochs, config.loss.margin, config.trainer.clip_norm) == (0, 0.0, None)


def test_saved_files_leave_no_temporary_file_behind(tmp_path):
    from devise.training.run_directory import write_json

    save_config(ExperimentConfig(), tmp_path / "c.yaml")
    write_json(tmp_path / "m.json", {"ok": 1})
    with pytest.raises(TypeError):
        write_json(tmp_path / "m.json", {"bad": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "m.json"]
    assert (tmp_path / "m.json").read_text() == '{\n  "ok": 1\n}\n'


def test_yaml_aliases_are_refused_so_a_nested_alias_bomb_cannot_expand(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 12)]  # 9**12 strings
    bomb.write_text("\n".join(lines) + "\nname: *a11\n")
    with pytest.raises(ConfigError, match=r"bomb\.yaml.*aliases"):
        load_config(bomb)
    recursive = tmp_path / "recursive.yaml"
    recursive.write_text("name: &r [*r]\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_config(recursive)
    with pytest.raises(ConfigError, match="aliases"):
        load_config(None, ["data.split={train: &t 3, val: *t}"])


def test_huge_configs_are_refused_and_long_values_are_cut_in_messages(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("name: " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match="big.yaml: over 1024 kB"):
        load_config(big)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["trainer.epochs=[" + ", ".join(["1"] * 100_000) + "]"])
    assert "trainer.epochs" in str(err.value) and len(str(err.value)) < 400


@pytest.mark.parametrize(
    "override, fragments",
    [
        # YAML 1.1 reads 1e30 as a string, 1.0e+30 as a float; neither is an int.
        ("trainer.batch_size=1e30", ["trainer.batch_size: expected int from 1 to 1000000", "'1e30'"]),
        ("trainer.batch_size=1.0e+30", ["trainer.batch_size: expected int from 1 to 1000000", "1e+30"]),
        ("trainer.epochs=1e30", ["trainer.epochs: expected int from 0 to", "'1e30'"]),
        ("trainer.batch_size=2.5", ["trainer.batch_size: expected int from 1 to 1000000", "2.5 (float)"]),
        ("trainer.epochs=true", ["trainer.epochs: expected int from 0 to", "True (bool)"]),
        ("word_vectors.dim=1e3", ["word_vectors.dim: expected int from 1 to", "or null", "'1e3'"]),
        # Integers that YAML reads as ints but no run can use.
        ("trainer.batch_size=" + "9" * 30, ["trainer.batch_size: must be <= 1000000, got 999999"]),
        ("image_encoder.batch_size=99999999999", ["image_encoder.batch_size: must be <= 1000000"]),
        ("trainer.seed=4294967296", ["trainer.seed: must be <= 4294967295"]),  # NumPy's seed limit
        ("data.split.train=1000000000000", ["data.split.train: must be <="]),
        ("model.joint_dim=1000000000", ["model.joint_dim: must be <="]),
        ("data.min_word_count=-1", ["data.min_word_count: must be >= 0"]),
    ],
)
def test_integers_must_be_integers_within_a_sane_range(override, fragments):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert all(f in message for f in fragments), message
    assert "\n" not in message and len(message) < 300


def test_every_integer_key_has_an_upper_bound():
    """A new int key without one would let `key: 99999999999999999999` reach Keras."""
    import typing

    def walk(cls, prefix):
        for field in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[field.name]
            if dataclasses.is_dataclass(tp):
                yield from walk(tp, f"{prefix}{field.name}.")
            elif int in (tp, *typing.get_args(tp)):
                yield f"{prefix}{field.name}", field.metadata.get("at_most")

    bounds = dict(walk(ExperimentConfig, ""))
    assert "trainer.batch_size" in bounds
    assert [key for key, at_most in bounds.items() if at_most is None] == []


def test_a_file_with_a_huge_integer_names_the_file_and_key(tmp_path):
    config = tmp_path / "huge.yaml"
    config.write_text("trainer:\n  batch_size: 1e30\n  seed: 0x" + "f" * 5000 + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert str(err.value).startswith(f"{config}: trainer.batch_size: expected int from 1 to 1000000")
    config.write_text("trainer:\n  seed: 0x" + "f" * 5000 + "\n")  # past Python's 4300-digit str() limit
    with pytest.raises(
        ConfigError, match=r"huge\.yaml: trainer\.seed: must be <= 4294967295, got <an integer of 20000 bits>"
    ):
        load_config(config)


@pytest.mark.parametrize(
    "key, value",
    [
        ("trainer.batch_size", "1" * 5000),  # int() refuses over 4300 digits
        ("name", "2001-13-45"),  # a YAML timestamp that is no date
        ("name", "!!float x"),
        ("name", "!!int x"),
    ],
)
def test_yaml_values_that_cannot_be_built_are_config_errors(tmp_path, key, value):
    """These raised ValueError tracebacks from inside the YAML loader."""
    section, _, leaf = key.rpartition(".")
    config = tmp_path / "bad.yaml"
    config.write_text(f"{section}:\n  {leaf}: {value}\n" if section else f"{leaf}: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    message = str(err.value)
    assert message.startswith(f"{config}:") and "invalid YAML" in message and len(message) < 300
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(None, [f"{key}={value}"])
    assert len(str(err.value)) < 300
