"""The model folder (pixelwise.hub): atomic writes, no pickle, recovery from interrupted swaps, and
self-contained loading (no weight source read, no network)."""

import json
import os

import numpy as np
import pytest
import torch
import torchvision

from pixelwise import create_model, load, save
from pixelwise import hub as ckpt
from pixelwise.errors import ConfigError


def _model():
    return create_model("unet", num_classes=3, base_channels=4, depth=2, norm="batch")


def test_save_load_round_trip(tmp_path):
    model = _model().eval()
    save(model, tmp_path / "m", {"data": {"num_classes": 3}})
    assert sorted(os.listdir(tmp_path / "m")) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model"] == {"name": "unet", "num_classes": 3, "base_channels": 4, "depth": 2, "norm": "batch"}
    again = load(tmp_path / "m")
    meta = again.saved_config
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert meta["data"]["num_classes"] == 3
    assert not again.training


def test_atomic_dir_keeps_old_copy_when_writer_fails(tmp_path):
    target = tmp_path / "last"
    save(_model(), target)
    before = (target / "model.safetensors").read_bytes()
    with pytest.raises(RuntimeError):
        with ckpt.atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("killed")
    assert (target / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last"]  # no temporary folder left behind


def test_resolve_recovers_from_a_swap_interrupted_between_renames(tmp_path):
    target = tmp_path / "last"
    save(_model(), target)
    # Simulate a kill after "last" was renamed away but before the new copy took its place.
    target.rename(tmp_path / ".last.old")
    assert ckpt.resolve(target) == tmp_path / ".last.old"
    model = load(target)
    assert isinstance(model, torch.nn.Module)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ConfigError, match="not a saved pixelwise model"):
        load(tmp_path)


# --- self-contained folders ----------------------------------------------------------------------


def _resnet18_file(tmp_path):
    """A local torchvision-format resnet18 weight file (random weights, saved in the test)."""
    torch.manual_seed(0)
    path = tmp_path / "r18_local.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_saving_moves_weight_sources_into_the_card(tmp_path):
    weights = _resnet18_file(tmp_path)
    model = create_model("fpn", encoder="resnet18", encoder_weights=str(weights), num_classes=3)
    save(model, tmp_path / "m", {"data": {"num_classes": 3}})
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "encoder_weights" not in config["model"]
    assert config["model"]["encoder"] == "resnet18"
    assert config["card"]["provenance"] == {"encoder_weights": str(weights)}
    assert config["card"]["task"] == "semantic"
    assert model.config["encoder_weights"] == str(weights)  # the live model is left as it was


def test_split_provenance_finds_named_sources_and_weight_files():
    build, sources = ckpt.split_provenance({"name": "x", "encoder": "resnet18", "encoder_weights": "imagenet",
                                            "pretrained": True, "init": "/w/backbone.safetensors", "depth": 4})
    assert build == {"name": "x", "encoder": "resnet18", "depth": 4}
    assert sources == {"encoder_weights": "imagenet", "pretrained": True, "init": "/w/backbone.safetensors"}


def test_a_folder_loads_and_predicts_with_its_weight_file_deleted_and_no_network(tmp_path, no_network):
    from pixelwise import Segmenter

    weights = _resnet18_file(tmp_path)
    model = create_model("fpn", encoder="resnet18", encoder_weights=str(weights), num_classes=3).eval()
    save(model, tmp_path / "m", {"data": {"num_classes": 3, "class_names": ["a", "b", "c"],
                                          "mean": [0.5] * 3, "std": [0.25] * 3}})
    weights.unlink()
    again = load(tmp_path / "m")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    result = Segmenter.from_pretrained(tmp_path / "m")(np.zeros((40, 48, 3), np.uint8))
    assert result.labels.shape == (40, 48)
    assert no_network == []


def test_an_older_folder_naming_imagenet_loads_without_a_download(tmp_path, no_network):
    """Folders written before weight sources moved to the card still name them in config.model."""
    model = create_model("fpn", encoder="resnet18", num_classes=2).eval()
    save(model, tmp_path / "m", {"data": {"num_classes": 2}})
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    config["model"]["encoder_weights"] = "imagenet"
    path.write_text(json.dumps(config))
    again = load(tmp_path / "m")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert no_network == []


def test_a_trained_run_loads_after_its_encoder_weight_file_is_deleted(tmp_path, no_network):
    from pixelwise import config as config_mod
    from pixelwise.cli import main
    from pixelwise.train.loop import train

    weights = _resnet18_file(tmp_path)
    cfg = config_mod.from_dict({
        "model": {"name": "fpn", "encoder": "resnet18", "encoder_weights": str(weights)},
        "data": {"dataset": "synthetic", "num_classes": 5, "crop_size": 32, "augment": "none", "batch_size": 2,
                 "train_samples": 4, "val_samples": 2, "num_workers": 0},
        "train": {"max_steps": 2, "out_dir": str(tmp_path / "run"), "log_every": 1, "plots": False,
                  "tensorboard": False}})
    train(cfg, progress=False)
    weights.unlink()
    images = tmp_path / "images"
    images.mkdir()
    from pixelwise.data import write_image

    write_image(images / "a.png", np.full((32, 40, 3), 100, np.uint8))
    assert main(["predict", str(tmp_path / "run" / "best"), str(images), "--out", str(tmp_path / "pred"),
                 "--quiet"]) == 0
    assert (tmp_path / "pred" / "a.png").is_file()
    assert no_network == []
