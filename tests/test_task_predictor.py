"""Task.predictor: each task gives its inference object for a model in memory or a saved folder,
and the two agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixelwise import InstancePredictor, Segmenter, config
from pixelwise.errors import ConfigError
from pixelwise.hub import save_model
from pixelwise.registry import PREDICTORS, TASKS
from pixelwise.tasks.base import build_predictor
from pixelwise.tasks.select import build_task

TINY_MASKRCNN = {"min_size": 64, "max_size": 64, "fpn_channels": 16, "anchor_scale": 4.0, "representation_size": 32,
                 "mask_channels": 16, "mask_layers": 2, "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20,
                 "box_score_thresh": 0.0, "box_detections_per_img": 5}


def test_every_task_has_a_registered_predictor_with_both_constructors():
    assert set(TASKS) <= set(PREDICTORS)
    for name, predictor in PREDICTORS.items():
        assert callable(predictor.from_pretrained) and callable(predictor.from_model), name
    with pytest.raises(ConfigError, match="no predictor is registered for task 'panoptic'.*instance, semantic"):
        build_predictor("panoptic", "folder", dict)


def test_semantic_predictor_from_the_model_and_from_its_folder_agree(tmp_path):
    torch.manual_seed(0)
    cfg = config.from_dict({"model": {"name": "unet", "args": {"base_channels": 8, "depth": 2}},
                            "data": {"num_classes": 5, "crop_size": 32}})
    task = build_task(cfg)
    model = task.build_model().eval()
    in_memory = task.predictor(model)
    assert isinstance(in_memory, Segmenter) and in_memory.class_names == task.class_names()
    save_model(model, tmp_path / "m", task.model_meta())
    from_folder = task.predictor(tmp_path / "m")
    assert isinstance(from_folder, Segmenter) and from_folder.mode == in_memory.mode == "multiclass"
    image = np.random.default_rng(0).integers(0, 255, (40, 36, 3), dtype=np.uint8)
    a, b = in_memory(image, return_probs=True), from_folder(image, return_probs=True)
    assert a.labels.shape == (40, 36)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)


def test_binary_predictor_names_background_and_the_class():
    cfg = config.from_dict({"model": {"name": "unet", "args": {"base_channels": 8, "depth": 2}},
                            "data": {"dataset": "folder", "root": "unused", "num_classes": 1,
                                     "class_names": ["road"]}})
    task = build_task(cfg)
    predictor = task.predictor(task.build_model())
    assert predictor.mode == "binary" and predictor.class_names == ["background", "road"]


def test_instance_predictor_from_the_model_and_from_its_folder_agree(tmp_path):
    torch.manual_seed(0)
    cfg = config.from_dict({"model": {"name": "maskrcnn", "encoder": "test_resnet", "args": TINY_MASKRCNN},
                            "data": {"dataset": "synthetic_instances", "num_classes": 5, "crop_size": 64}})
    task = build_task(cfg)
    model = task.build_model().eval()
    in_memory = task.predictor(model)
    assert isinstance(in_memory, InstancePredictor) and in_memory.class_names == task.class_names()
    assert in_memory.class_names[0] == "background" and len(in_memory.class_names) == 5
    save_model(model, tmp_path / "m", task.model_meta())
    from_folder = task.predictor(tmp_path / "m")
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    a, b = in_memory(image), from_folder(image)
    assert a.masks.shape[1:] == (64, 64) and len(a.scores) == len(b.scores) > 0
    torch.testing.assert_close(a.boxes, b.boxes)
    # A semantic folder is refused by the instance predictor, with the loader to use.
    semantic = build_task(config.from_dict({"model": {"name": "unet", "args": {"base_channels": 8, "depth": 2}}}))
    save_model(semantic.build_model(), tmp_path / "s", semantic.model_meta())
    with pytest.raises(ConfigError, match="not an instance model.*pixelwise.load"):
        task.predictor(tmp_path / "s")


def test_every_task_has_an_exporter_that_writes_a_checked_onnx_file(tmp_path):
    """Task.exporter: the semantic task's is export_onnx, the instance task's export_instance_onnx, each
    run here on the task's own model (both check ONNX Runtime against PyTorch as they write)."""
    import pixelwise.export  # noqa: F401 - registers the exporters
    from pixelwise.export.instance import export_instance_onnx
    from pixelwise.export.onnx import export_onnx
    from pixelwise.registry import EXPORTERS
    from pixelwise.tasks.base import build_exporter

    assert set(TASKS) <= set(EXPORTERS)
    semantic = build_task(config.from_dict({"model": {"name": "unet", "args": {"base_channels": 4, "depth": 2}},
                                            "data": {"num_classes": 3, "crop_size": 32}}))
    assert semantic.exporter() is export_onnx
    report = semantic.exporter()(semantic.build_model().eval(), tmp_path / "s.onnx", height=32, width=40,
                                 verbose=False)
    assert report.dynamic and report.agreement == 1.0
    instance = build_task(config.from_dict({"model": {"name": "maskrcnn", "encoder": "test_resnet",
                                                      "args": TINY_MASKRCNN},
                                            "data": {"dataset": "synthetic_instances", "num_classes": 5,
                                                     "crop_size": 64}}))
    assert instance.exporter() is export_instance_onnx
    result = instance.exporter()(instance.build_model().eval(), tmp_path / "i.onnx", height=64, width=64)
    assert (tmp_path / "i.onnx").is_file() and result["max_abs_diff"] < 1e-3
    with pytest.raises(ConfigError, match="no exporter is registered for task 'panoptic'"):
        build_exporter("panoptic")
