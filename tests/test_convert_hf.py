"""transformers checkpoints -> pixelwise: peer models with random weights built here, converted
through a saved folder, logits compared (max abs difference < 1e-4) at several sizes, odd ones included."""

import json

import pytest
import torch

from convert_helpers import max_diff, randomise
from pixelwise.convert import convert, convert_state
from pixelwise.errors import ConfigError
from pixelwise.hub import load_model

T = pytest.importorskip("transformers", reason="transformers (the dev extra) builds the reference models")


def _roundtrip(ref, cfg, tmp_path):
    ref.save_pretrained(tmp_path / "peer")
    out = convert(tmp_path / "peer", source="hf", out=tmp_path / "converted")
    model, config = load_model(out)
    assert config["converted_from"]["source"] == "hf"
    return model


def _check(ref, ours, sizes):
    for size in sizes:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            diff, scale = max_diff(ref(pixel_values=x).logits, ours(x), size)
        assert scale > 0.1, "the comparison must see non-trivial logits"
        assert diff < 1e-4, (size, diff)


def test_segformer(tmp_path):
    cfg = T.SegformerConfig(num_labels=5, hidden_sizes=[8, 16, 24, 32], depths=[1, 2, 1, 1],
                            num_attention_heads=[1, 2, 1, 2], decoder_hidden_size=16)
    ref = randomise(T.SegformerForSemanticSegmentation(cfg))
    ours = _roundtrip(ref, cfg, tmp_path)
    _check(ref, ours, [(64, 64), (67, 93), (45, 61)])


def test_segformer_hub_layout_is_renamed(tmp_path):
    # The Hub's checkpoints predate transformers 5's module names; rename this model's keys back to that layout.
    cfg = T.SegformerConfig(num_labels=3, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                            num_attention_heads=[1, 1, 1, 2], decoder_hidden_size=16)
    ref = randomise(T.SegformerForSemanticSegmentation(cfg))
    old = {}
    for key, value in ref.state_dict().items():
        k = key.replace("segformer.stages.", "segformer.S.")
        for new, former in [(".layernorm_before.", ".layer_norm_1."), (".layernorm_after.", ".layer_norm_2."),
                            (".attention.q_proj.", ".attention.self.query."),
                            (".attention.k_proj.", ".attention.self.key."),
                            (".attention.v_proj.", ".attention.self.value."),
                            (".attention.o_proj.", ".attention.output.dense."),
                            (".attention.sequence_reduction.sequence_reduction.", ".attention.self.sr."),
                            (".attention.sequence_reduction.layer_norm.", ".attention.self.layer_norm."),
                            (".mlp.fc1.", ".mlp.dense1."), (".mlp.fc2.", ".mlp.dense2."),
                            ("decode_head.linear_projections.", "decode_head.linear_c.")]:
            k = k.replace(new, former)
        parts = k.split(".")
        if k.startswith("segformer.S.") and parts[3] == "patch_embeddings":
            k = f"segformer.encoder.patch_embeddings.{parts[2]}." + ".".join(parts[4:])
        elif k.startswith("segformer.S.") and parts[3] == "blocks":
            k = f"segformer.encoder.block.{parts[2]}.{parts[4]}." + ".".join(parts[5:])
        elif k.startswith("segformer.S.") and parts[3] == "layer_norm":
            k = f"segformer.encoder.layer_norm.{parts[2]}." + ".".join(parts[4:])
        old[k] = value
    assert "segformer.encoder.block.0.0.attention.self.query.weight" in old
    config = {**cfg.to_dict(), "architectures": ["SegformerForSemanticSegmentation"]}
    ours = convert_state("hf", old, config)
    _check(ref, ours, [(64, 96)])


def test_upernet_convnext(tmp_path):
    backbone = T.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1],
                                out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = T.UperNetConfig(backbone_config=backbone, num_labels=4, hidden_size=16, auxiliary_channels=8)
    ref = randomise(T.UperNetForSemanticSegmentation(cfg), std=0.1)
    ours = _roundtrip(ref, cfg, tmp_path)
    # transformers' UperNet interpolates to the input; pixelwise pads odd sizes to 32 first, so compare at multiples.
    _check(ref, ours, [(64, 64), (96, 160)])


def test_dpt(tmp_path):
    cfg = T.DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64,
                      neck_hidden_sizes=[8, 16, 32, 32], backbone_out_indices=[0, 1, 2, 3], fusion_hidden_size=16,
                      num_labels=3)
    ref = randomise(T.DPTForSemanticSegmentation(cfg), std=0.1)
    ours = _roundtrip(ref, cfg, tmp_path)
    # transformers' DPT assumes square token grids; 96 and 160 need the position embedding resampled (bilinear).
    _check(ref, ours, [(64, 64), (96, 96), (160, 160)])


def test_unknown_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BeitForSemanticSegmentation"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="BeitForSemanticSegmentation"):
        convert(tmp_path, source="hf", out=tmp_path / "out")


def test_cli_convert_then_predict(tmp_path):
    import numpy as np
    from PIL import Image

    from pixelwise.cli import main

    cfg = T.SegformerConfig(num_labels=3, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                            num_attention_heads=[1, 1, 1, 2], decoder_hidden_size=16,
                            id2label={0: "sky", 1: "road", 2: "car"})
    randomise(T.SegformerForSemanticSegmentation(cfg)).save_pretrained(tmp_path / "peer")
    assert main(["convert", str(tmp_path / "peer"), "--from", "hf", "--out", str(tmp_path / "model")]) == 0
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["data"]["class_names"] == ["sky", "road", "car"]
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "a.png"), "--out", str(tmp_path / "pred"),
                 "--quiet"]) == 0
    assert any((tmp_path / "pred").iterdir())
