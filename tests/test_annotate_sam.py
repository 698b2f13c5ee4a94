"""SAM proposals through transformers' SamModel, with a randomly initialised model from a small SamConfig
saved to disk (no download): the proposal equals the one transformers' own full forward pass gives."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from annotate_helpers import CLASSES, make_folder
from pixelwise.annotate import create_app, open_project
from pixelwise.annotate.prompts import Click, Prompt
from pixelwise.annotate.sam import load_sam
from pixelwise.errors import ConfigError

transformers = pytest.importorskip("transformers",
                                   reason="SAM proposals need transformers (pip install 'pixelwise[sam]')")


def _tiny_sam(folder):
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.image_processing_sam import SamImageProcessor

    config = SamConfig(
        vision_config={"hidden_size": 32, "output_channels": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 128, "patch_size": 16, "window_size": 4, "global_attn_indexes": [1],
                       "mlp_dim": 64, "num_pos_feats": 16},
        prompt_encoder_config={"hidden_size": 32, "image_size": 128, "patch_size": 16, "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32})
    torch.manual_seed(0)
    model = SamModel(config).eval()
    processor = SamProcessor(image_processor=SamImageProcessor(size={"longest_edge": 128},
                                                               pad_size={"height": 128, "width": 128}))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


@torch.no_grad()
def _reference(model, processor, image, *, box=None, points=None, labels=None, multimask=False):
    kwargs = {}
    if box is not None:
        kwargs["input_boxes"] = [[box]]
    if points is not None:
        kwargs["input_points"], kwargs["input_labels"] = [[points]], [[labels]]
    inputs = processor(images=image, return_tensors="pt", **kwargs)
    out = model(**{k: v for k, v in inputs.items() if k not in ("original_sizes", "reshaped_input_sizes")},
                multimask_output=multimask)
    masks = processor.image_processor.post_process_masks(out.pred_masks, inputs["original_sizes"],
                                                         inputs["reshaped_input_sizes"])[0][0]
    best = int(out.iou_scores[0, 0].argmax()) if multimask else 0
    return masks[best].numpy().astype(bool)


def test_sam_proposals_match_transformers(tmp_path):
    truth = make_folder(tmp_path / "data", count=1, size=64, seed=1)
    model, processor = _tiny_sam(tmp_path / "sam")
    store, slot, sam = open_project(tmp_path / "data", classes=CLASSES, sam=tmp_path / "sam")
    image = store.image("img0")
    box = [8, 10, 40, 50]
    got = sam.propose(image, Prompt(class_id=1, box=tuple(box)), "img0")
    expected = _reference(model, processor, image, box=[float(v) for v in box])
    inbox = np.zeros((64, 64), bool)
    inbox[10:50, 8:40] = True
    assert (got == (expected & inbox)).all() and got.shape == (64, 64)
    assert 0 < got.sum() < inbox.sum()  # a random SAM still draws a non-trivial mask, so the match means something
    # A lone click: SAM's three candidates, the best by predicted IoU (the embedding is reused).
    click = sam.propose(image, Prompt(class_id=1, clicks=(Click(20, 30, True),)), "img0")
    assert 0 < click.sum() < click.size
    assert (click == _reference(model, processor, image, points=[[20.0, 30.0]], labels=[1], multimask=True)).all()

    client = TestClient(create_app(store, slot=slot, sam=sam))
    assert "sam" in client.get("/v1/annotate/project").json()["methods"]
    body = client.post("/v1/annotate/images/img0/proposal", json={"box": box, "class_id": 2}).json()
    assert body["method"] == "sam"  # auto prefers SAM when it is loaded
    mask = np.zeros((64, 64), bool)
    x, y, w, h = body["bbox"]
    if w:
        mask[y:y + h, x:x + w] = np.frombuffer(base64.b64decode(body["data"]), np.uint8).reshape(h, w) > 0
    assert (mask == got).all()
    assert truth["img0"].shape == (64, 64)


def test_sam_folder_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_sam(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match="cannot be loaded as a SamModel"):
        load_sam(tmp_path)
