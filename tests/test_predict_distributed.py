"""`pixelwise predict` beyond one process: two gloo processes under torchrun write the files one
process writes (every per-image file byte for byte, the COCO and CSV files equal), and a second
run into the same folder keeps finished images, redoes the missing ones, and starts over when the
model or the settings change."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise import Segmenter, create_model
from pixelwise.infer.predict import predict_paths
from pixelwise.infer.shards import STATE_DIR

ROOT = Path(__file__).resolve().parents[1]
FORMATS = "png,color,overlay,coco-rle,csv-rle"


@pytest.fixture
def setup_dirs(tmp_path):
    torch.manual_seed(0)
    model = create_model("unet", num_classes=3, base_channels=4, depth=2)
    with torch.no_grad():  # weights large enough that every class wins somewhere: non-empty COCO/CSV files
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.6)
    Segmenter(model, mean=[0.5] * 3, std=[0.25] * 3, class_names=["bg", "a", "b"]).save_pretrained(tmp_path / "m")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):  # an odd count: the two shards differ in size
        Image.fromarray(rng.integers(0, 255, (24 + 4 * i, 32, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    return tmp_path / "m", images


def _outputs(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def _run(model, images, out, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              "-m", "pixelwise", "predict", str(model), str(images), "--out", str(out), "--format", FORMATS,
              "--quiet", *extra]
    return subprocess.run(launch, env=env, capture_output=True, text=True, timeout=240)


def test_two_processes_write_what_one_process_writes(setup_dirs, tmp_path):
    model, images = setup_dirs
    single = predict_paths(model, [images], tmp_path / "one", formats=FORMATS, progress=False)
    assert single["written"] == [f"im{i}" for i in range(5)] and single["world_size"] == 1
    done = _run(model, images, tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0/2: wrote 3 prediction(s)" in done.stdout and "rank 1/2: wrote 2 prediction(s)" in done.stdout
    one, two = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 5 * 3 + 2
    for name in one:
        assert one[name] == two[name], name
    coco = json.loads(one["predictions_coco.json"])
    assert sorted({e["image_id"] for e in coco}) == list(range(5))  # ids follow the input order
    assert {e["file_name"] for e in coco if e["image_id"] == 3} == {"im3.png"}
    # A 2-process run into a folder that is complete redoes nothing.
    again = _run(model, images, tmp_path / "two")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "wrote 0 prediction(s)" in again.stdout and "kept 3 finished earlier" in again.stdout
    assert _outputs(tmp_path / "two") == two


def test_a_half_done_folder_resumes_without_redoing_finished_images(setup_dirs, tmp_path):
    model, images = setup_dirs
    out = tmp_path / "out"
    predict_paths(model, [images], out, formats=FORMATS, progress=False)
    full = _outputs(out)
    # as if the run had been killed after three images: two records and one mask are gone
    (out / STATE_DIR / "im1.png.json").unlink()
    (out / STATE_DIR / "im4.png.json").unlink()
    (out / "im2_color.png").unlink()
    (out / "predictions_coco.json").unlink()
    stamp = (out / "im0.png").stat().st_mtime_ns
    result = predict_paths(model, [images], out, formats=FORMATS, progress=False)
    assert result["written"] == ["im1", "im2", "im4"] and result["resumed"] == ["im0", "im3"]
    assert (out / "im0.png").stat().st_mtime_ns == stamp
    assert _outputs(out) == full
    with open(out / "predictions_rle.csv", newline="") as f:
        assert [r[0] for r in csv.reader(f)][1:] == [f"im{i}.png" for i in range(5) for _ in (1, 2)]

    # A format the earlier run did not write: those images are predicted again.
    assert predict_paths(model, [images], out, formats="png", progress=False)["resumed"] == [f"im{i}" for i in range(5)]
    # Different settings or a different model start over; so does resume=False.
    assert len(predict_paths(model, [images], out, formats=FORMATS, tta="flip", progress=False)["written"]) == 5
    assert len(predict_paths(model, [images], out, formats=FORMATS, tta="flip", progress=False)["resumed"]) == 5
    assert len(predict_paths(model, [images], out, formats=FORMATS, tta="flip", progress=False,
                             resume=False)["written"]) == 5
    seg = Segmenter.from_pretrained(model)
    with torch.no_grad():
        for p in seg.model.parameters():
            p.add_(0.01)
    seg.save_pretrained(model)
    assert len(predict_paths(model, [images], out, formats=FORMATS, tta="flip", progress=False)["written"]) == 5


def test_segment_batch_is_a_ray_style_batch_function(setup_dirs):
    """The Ray Data recipe's callable, called as Ray Data calls it (a dict of numpy columns)."""
    from pixelwise.recipes.batch import SegmentBatch

    model, images = setup_dirs
    seg = Segmenter.from_pretrained(model)
    fn = SegmentBatch(str(model), tile=16)
    files = sorted(images.iterdir())
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    ragged = fn({"image": np.array(arrays, dtype=object), "id": np.arange(5)})
    assert list(ragged["id"]) == list(range(5))
    for array, mask, areas in zip(arrays, ragged["mask"], ragged["areas"]):
        expected = seg(array, tile=16).labels
        np.testing.assert_array_equal(mask, expected)
        assert mask.dtype == np.uint8
        assert json.loads(areas) == {n: int((expected == i).sum()) for i, n in enumerate(seg.class_names)}
    stacked = fn({"image": np.stack([arrays[0], arrays[0]])})
    np.testing.assert_array_equal(stacked["mask"][1], seg(arrays[0], tile=16).labels)
    by_path = fn({"path": np.array([str(f) for f in files[:2]])})
    np.testing.assert_array_equal(by_path["mask"][1], seg(arrays[1], tile=16).labels)
    with pytest.raises(KeyError, match="column"):
        fn({"pixels": np.stack([arrays[0]])})
