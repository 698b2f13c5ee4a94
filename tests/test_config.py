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
    from pixelwise.engine.demo import demo_config

    assert config.load(ROOT / "configs" / "demo.yaml") == demo_config()
    assert yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())["train"]["out_dir"] == "runs/demo"
