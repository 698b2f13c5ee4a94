"""A converted model fine-tunes from the CLI: `model.init_from: DIR` in a train config."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from convert_helpers import randomise
from pixelwise.cli import main
from pixelwise.errors import ConfigError

T = pytest.importorskip("transformers", reason="transformers (the dev extra) builds the peer model")


def _converted(tmp_path):
    cfg = T.SegformerConfig(num_labels=3, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                            num_attention_heads=[1, 1, 1, 2], decoder_hidden_size=16)
    randomise(T.SegformerForSemanticSegmentation(cfg), std=0.05).save_pretrained(tmp_path / "peer")
    assert main(["convert", str(tmp_path / "peer"), "--from", "hf", "--out", str(tmp_path / "converted")]) == 0
    return tmp_path / "converted"


def test_finetune_a_converted_model_from_the_cli(tmp_path):
    folder = _converted(tmp_path)
    config = {"model": {"init_from": str(folder)},
              "data": {"dataset": "synthetic", "num_classes": 5, "crop_size": 64, "batch_size": 4,
                       "train_samples": 8, "val_samples": 4},
              "train": {"epochs": 1, "out_dir": str(tmp_path / "run"), "plots": False, "device": "cpu"}}
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--quiet"]) == 0
    saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert saved["model"]["name"] == "segformer" and saved["model"]["num_classes"] == 5
    before, after = load_file(str(folder / "model.safetensors")), load_file(str(tmp_path / "run" / "best" /
                                                                               "model.safetensors"))
    assert after["head.1.weight"].shape[0] == 5  # the classifier was re-made for 5 classes
    key = "encoder.stages.0.embed.proj.weight"  # the encoder started from the converted weights, then trained
    assert before[key].shape == after[key].shape and not torch.equal(before[key], after[key])
    assert (after[key] - before[key]).abs().max() < 0.1


def test_init_from_disagreeing_name_is_refused(tmp_path):
    from pixelwise import config as config_mod
    from pixelwise.tasks.semantic import build_model

    folder = _converted(tmp_path)
    cfg = config_mod.from_dict({"model": {"init_from": str(folder), "name": "deeplabv3"}})
    with pytest.raises(ConfigError, match="leave them unset"):
        build_model(cfg)
