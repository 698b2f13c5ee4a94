"""Config: YAML round trip, unknown keys and wrong types named, --set overrides."""

from pathlib import Path

import pytest
import yaml

from pixelwise import config
from pixelwise.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_round_trip(tmp_path):
    cfg = config.from_dict({"train": {"lr": 0.01, "epochs": 3}, "data": {"num_classes": 7}})
    config.save(cfg, tmp_path / "c.yaml")
    again = config.load(tmp_path / "c.yaml")
    assert again == cfg
    assert again.train.lr == 0.01 and again.data.num_classes == 7


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.lrr'.*valid keys"):
        config.from_dict({"train": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match=r"unknown config key 'modle'"):
        config.from_dict({"modle": {}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"'train.epochs' must be int, got 'ten'"):
        config.from_dict({"train": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"'data.batch_size' must be int"):
        config.from_dict({"data": {"batch_size": 2.5}})
    with pytest.raises(ConfigError, match=r"'train.channels_last' must be bool"):
        config.from_dict({"train": {"channels_last": "yes"}})
    # An int where a float is expected is fine (YAML writes 1 for 1.0).
    assert config.from_dict({"train": {"lr": 1}}).train.lr == 1.0


@pytest.mark.parametrize("text, expected", [("3e-4", 3e-4), ("1E-4", 1e-4), ("1.0e12", 1.0e12), (".5", 0.5),
                                            ("2", 2.0), ("-1e-3", -1e-3), (" 5e-2 ", 5e-2)])
def test_float_fields_take_what_python_float_takes_in_yaml_and_set(tmp_path, expected, text):
    # PyYAML (YAML 1.1) reads 3e-4 and 1E-4 as strings; a float field must still take them.
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  lr: {text}\n  grad_clip: {text}\n")
    cfg = config.load(path)
    assert cfg.train.lr == expected and type(cfg.train.lr) is float
    assert cfg.train.grad_clip == expected and type(cfg.train.grad_clip) is float  # float or null
    cfg = config.load(tmp_path / "c.yaml", [f"train.lr={text}", f"train.weight_decay={text}"])
    assert cfg.train.lr == expected and cfg.train.weight_decay == expected
    assert config.from_dict({"train": {"lr": text}}).train.lr == expected


def test_strings_that_are_no_number_stay_errors_and_other_fields_keep_strings(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.lr' must be float, got 'fast'"):
        config.from_dict({"train": {"lr": "fast"}})
    with pytest.raises(ConfigError, match=r"'train.epochs' must be int, got '1e3'"):
        config.from_dict({"train": {"epochs": "1e3"}})  # int fields do not read floats
    assert config.from_dict({"train": {"out_dir": "1e-4"}}).train.out_dir == "1e-4"


def test_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.1\n")
    cfg = config.load(path, ["train.lr=0.01", "model.encoder=resnet34", "train.grad_clip=null",
                             "data.mean=[0.5, 0.5, 0.5]"])
    assert cfg.train.lr == 0.01
    assert cfg.model.encoder == "resnet34"
    assert cfg.train.grad_clip is None
    assert cfg.data.mean == [0.5, 0.5, 0.5]
    with pytest.raises(ConfigError, match="section.key=value"):
        config.load(path, ["train.lr"])
    with pytest.raises(ConfigError, match="'train.nope'"):
        config.load(path, ["train.nope=1"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)


@pytest.mark.parametrize("name", ["demo.yaml", "folder.yaml"])
def test_shipped_configs_load(name):
    cfg = config.load(ROOT / "configs" / name)
    assert cfg.data.num_classes >= 2


def test_demo_yaml_equals_what_pixelwise_demo_runs():
    from pixelwise.demo import demo_config

    assert config.load(ROOT / "configs" / "demo.yaml") == demo_config()
    assert yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())["train"]["out_dir"] == "runs/demo"
