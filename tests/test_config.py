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
                                            ("2", 2.0), ("+1e-3", 1e-3), (" 5e-2 ", 5e-2)])
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


# The valid range of every checked field, written out here independently of config._RULES:
# (dotted key, a strategy of values outside that range, as YAML/--set text).
def _invalid_values():
    from hypothesis import strategies as st

    non_positive_int = st.integers(max_value=0).map(str)
    negative_int = st.integers(max_value=-1).map(str)
    bad_positive_float = st.one_of(st.floats(max_value=0.0, allow_nan=False).map(repr),
                                   st.sampled_from([".nan", ".inf", "-.inf"]))
    bad_non_negative_float = st.one_of(st.floats(max_value=-1e-12, allow_nan=False, allow_infinity=False).map(repr),
                                       st.sampled_from([".nan", ".inf"]))
    outside_unit = st.one_of(st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
                             st.floats(min_value=1.0, allow_nan=False, allow_infinity=False)).map(repr)
    return {
        "data.num_classes": non_positive_int, "data.crop_size": non_positive_int,
        "data.batch_size": non_positive_int, "data.num_workers": negative_int,
        "data.train_samples": non_positive_int, "data.val_samples": non_positive_int,
        "model.in_channels": non_positive_int, "train.epochs": non_positive_int,
        "train.lr": bad_positive_float, "train.weight_decay": bad_non_negative_float,
        "train.momentum": outside_unit, "train.poly_power": bad_positive_float,
        "train.warmup_steps": negative_int, "train.grad_clip": bad_positive_float,
        "train.val_every": non_positive_int, "train.log_every": non_positive_int,
        "train.max_steps": non_positive_int, "train.accumulate": non_positive_int,
        "train.ema_decay": outside_unit, "train.encoder_lr_mult": bad_non_negative_float,
        "train.freeze_encoder_steps": negative_int, "train.early_stop_patience": non_positive_int,
        "train.amp": st.text(min_size=1).filter(lambda s: s.strip() not in ("none", "bf16", "fp16")),
        "train.device": st.sampled_from(["tpu", "gpu", "cuda:x", "xla", "CPU", "cuda0"]),
    }


def test_every_invalid_value_is_a_named_error():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    cases = _invalid_values()

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(sorted(cases)).flatmap(lambda key: st.tuples(st.just(key), cases[key])))
    def check(case):
        key, text = case
        data = config.apply_overrides({}, [f"{key}={text}"])
        with pytest.raises(ConfigError) as info:
            config.from_dict(data)
        assert repr(key) in str(info.value)

    check()


@pytest.mark.parametrize("override", ["data.batch_size=0", "data.batch_size=-4", "data.num_workers=-1",
                                      "train.lr=-0.1", "train.lr=.nan", "train.val_every=0", "train.log_every=0",
                                      "data.num_classes=-3", "train.device=tpu", "train.max_steps=0"])
def test_the_reported_invalid_values_exit_2_from_the_cli(tmp_path, capsys, override):
    from pixelwise.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"out_dir": str(tmp_path / "run")}}))
    assert main(["train", str(cfg), "--set", override]) == 2
    err = capsys.readouterr().err
    assert repr(override.split("=")[0]) in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_values_between_fields_and_odd_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"'data.ignore_index' is 1, one of the 5 classes"):
        config.from_dict({"data": {"num_classes": 5, "ignore_index": 1}})
    config.from_dict({"data": {"num_classes": 5, "ignore_index": 255}})
    config.from_dict({"data": {"num_classes": 5, "ignore_index": -100}})
    with pytest.raises(ConfigError, match=r"'data.mean' \(3 values\) and 'data.std' \(1 values\)"):
        config.from_dict({"data": {"std": [0.5]}})
    plain = tmp_path / "plain.yaml"
    plain.write_text("just a string\n")
    with pytest.raises(ConfigError, match=r"holds a str .*must have the sections"):
        config.load(plain)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=r"'train.out_dir' must be a folder path"):
        config.from_dict({"train": {"out_dir": str(a_file)}})
    # The boundaries themselves are valid.
    config.from_dict({"data": {"num_classes": 1, "batch_size": 1, "num_workers": 0},
                      "train": {"momentum": 0.0, "weight_decay": 0.0, "warmup_steps": 0, "max_steps": 1,
                                "device": "cuda:1", "ema_decay": 0.9999}})


def test_check_with_no_classes_is_a_named_error(tmp_path, capsys):
    from pixelwise.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"num_classes": 0}, "train": {"out_dir": str(tmp_path / "run")}}))
    assert main(["check", str(cfg)]) == 2
    assert "'data.num_classes' must be an integer >= 1" in capsys.readouterr().err
