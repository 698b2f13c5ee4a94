"""Panoptic quality (pixelwise.metrics.panoptic) against torchmetrics' independent PanopticQuality on
random panoptic maps, against hand-counted crowd and void cases (panopticapi's rules), and through
COCO panoptic files."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.errors import DataError
from pixelwise.metrics.panoptic import PanopticQuality, evaluate_panoptic_files, id_to_rgb, rgb_to_id

THINGS, STUFF = (1, 2), (3, 4)


def _scene(rng, size=40):
    """Ground truth: two stuff halves, 2-4 thing boxes on top, a void strip; segments as COCO lists them."""
    ids = np.zeros((size, size), np.int64)
    ids[:, : size // 2], ids[:, size // 2:] = 1, 2
    segments = [{"id": 1, "category_id": 3}, {"id": 2, "category_id": 4}]
    for k in range(int(rng.integers(2, 5))):
        y, x = rng.integers(0, size - 12, 2)
        h, w = rng.integers(6, 12, 2)
        ids[y:y + h, x:x + w] = 10 + k
        segments.append({"id": 10 + k, "category_id": int(rng.choice(THINGS))})
    ids[:, :2] = 0  # void
    present = set(np.unique(ids).tolist())
    return ids, [s for s in segments if s["id"] in present]


def _perturb(rng, ids, segments):
    """A prediction: shifted segments, some with the wrong class, one dropped, one spurious box."""
    pred = np.roll(ids, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
    pred[pred == 0] = 1  # the model predicts something where the truth is void
    out = []
    for s in segments:
        category = s["category_id"]
        if category in THINGS and rng.random() < 0.3:
            category = 3 - category
        out.append({"id": s["id"], "category_id": category})
    things = [s for s in out if s["category_id"] in THINGS]
    if len(things) > 1:
        pred[pred == things[0]["id"]] = 2  # dropped: its pixels go to stuff
        out = [s for s in out if s["id"] != things[0]["id"]]
    y, x = rng.integers(0, 30, 2)
    pred[y:y + 8, x:x + 8] = 99
    out.append({"id": 99, "category_id": int(rng.choice(THINGS))})
    present = set(np.unique(pred).tolist())
    return pred, [s for s in out if s["id"] in present]


def _torchmetrics_pairs(ids, segments):
    """(H, W, 2) (category, instance) maps; void -> an unknown category (torchmetrics ignores it)."""
    category = {s["id"]: s["category_id"] for s in segments}
    cat = np.vectorize(lambda i: category.get(int(i), 0))(ids)
    return np.stack([cat, ids], axis=-1)


def test_matches_torchmetrics_on_random_scenes():
    tm = pytest.importorskip("torchmetrics.detection", reason="torchmetrics (the dev extra) is the reference")
    rng = np.random.default_rng(0)
    ours = PanopticQuality(things=THINGS, stuff=STUFF)
    preds, targets = [], []
    for i in range(6):
        gt, gt_segments = _scene(rng)
        pred, pred_segments = _perturb(rng, gt, gt_segments)
        ours.update(pred, pred_segments, gt, gt_segments, image=f"scene{i}")
        preds.append(_torchmetrics_pairs(pred, pred_segments))
        targets.append(_torchmetrics_pairs(gt, gt_segments))
    reference = tm.PanopticQuality(things=set(THINGS), stuffs=set(STUFF), return_sq_and_rq=True,
                                   return_per_class=True, allow_unknown_preds_category=True)
    per_class = reference(torch.from_numpy(np.stack(preds)), torch.from_numpy(np.stack(targets))).numpy()
    per_class = per_class.reshape(len(THINGS) + len(STUFF), 3)  # (C, 3): PQ, SQ, RQ per class
    result = ours.compute()
    for column, c in enumerate((*THINGS, *STUFF)):  # torchmetrics orders things, then stuff
        got = result["per_class"][c]
        assert got["tp"] + got["fp"] + got["fn"] > 0
        np.testing.assert_allclose([got["pq"], got["sq"], got["rq"]], per_class[column],
                                   atol=1e-6, err_msg=f"category {c}")
    np.testing.assert_allclose(result["all"]["pq"], per_class[:, 0].mean(), atol=1e-6)
    assert 0.2 < result["all"]["pq"] < 0.95  # the perturbations leave something to measure


def test_crowd_and_void_follow_panopticapi():
    """Hand-counted: one match (IoU 0.8), a miss, a prediction on a crowd region (ignored), one mostly
    on void (ignored), one mostly on real ground truth (a false positive)."""
    gt = np.zeros((20, 20), np.int64)
    gt[0:10, 0:10] = 1            # thing, category 1, 100 px
    gt[10:20, 0:10] = 2           # crowd of category 1
    gt[0:5, 10:20] = 3            # thing, category 2, 50 px, never predicted
    gt[5:20, 10:20] = 4           # stuff, category 3
    gt[0:2, 0:10] = 0             # void over the first thing's top rows (so it is 80 px)
    gt_segments = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 1, "iscrowd": 1},
                   {"id": 3, "category_id": 2}, {"id": 4, "category_id": 3}]
    pred = np.zeros((20, 20), np.int64)
    pred[0:10, 0:10] = 11         # category 1 over thing 1 + its void rows: IoU = 80 / (100 + 80 - 80 - 20) = 1
    pred[12:20, 0:8] = 12         # category 1 inside the crowd: ignored
    pred[5:20, 10:20] = 14        # stuff 3 exactly: IoU 1
    pred[0:5, 10:13] = 15         # category 3 on thing 2's pixels: a false positive for category 3
    pred_segments = [{"id": 11, "category_id": 1}, {"id": 12, "category_id": 1}, {"id": 14, "category_id": 3},
                     {"id": 15, "category_id": 3}]
    metric = PanopticQuality(things=[1, 2], stuff=[3])
    metric.update(pred, pred_segments, gt, gt_segments)
    r = metric.compute()["per_class"]
    assert (r[1]["tp"], r[1]["fp"], r[1]["fn"]) == (1, 0, 0) and r[1]["pq"] == pytest.approx(1.0)
    assert (r[2]["tp"], r[2]["fp"], r[2]["fn"]) == (0, 0, 1) and r[2]["pq"] == 0
    assert (r[3]["tp"], r[3]["fp"], r[3]["fn"]) == (1, 1, 0) and r[3]["pq"] == pytest.approx(1 / 1.5)
    # A prediction whose pixels are 3/5 void is ignored; the same one 2/5 void is a false positive.
    for void_rows, fp in ((3, 0), (2, 1)):
        g = np.full((5, 4), 7, np.int64)
        g[:void_rows] = 0
        p = np.full((5, 4), 8, np.int64)
        p[:, 2:] = 9
        m = PanopticQuality(things=[1, 2], stuff=[])
        m.update(p, [{"id": 8, "category_id": 2}, {"id": 9, "category_id": 1}], g, [{"id": 7, "category_id": 1}])
        assert m.compute()["per_class"][2]["fp"] == fp


def test_coco_panoptic_files_and_their_errors(tmp_path):
    rng = np.random.default_rng(1)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    direct = PanopticQuality(things=THINGS, stuff=STUFF)
    gt_json = {"categories": [{"id": c, "name": f"c{c}", "isthing": int(c in THINGS)} for c in (*THINGS, *STUFF)],
               "annotations": []}
    pred_json = {"annotations": []}
    for i in range(3):
        gt, gt_segments = _scene(rng)
        pred, pred_segments = _perturb(rng, gt, gt_segments)
        direct.update(pred, pred_segments, gt, gt_segments)
        assert np.array_equal(rgb_to_id(id_to_rgb(gt * 70000)), gt * 70000)  # ids above 2^16 survive the PNG
        Image.fromarray(id_to_rgb(gt)).save(gt_dir / f"{i}.png")
        Image.fromarray(id_to_rgb(pred)).save(pred_dir / f"{i}.png")
        gt_json["annotations"].append({"image_id": i, "file_name": f"{i}.png", "segments_info": gt_segments})
        pred_json["annotations"].append({"image_id": i, "file_name": f"{i}.png", "segments_info": pred_segments})
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    (tmp_path / "pred.json").write_text(json.dumps(pred_json))
    result = evaluate_panoptic_files(tmp_path / "gt.json", gt_dir, tmp_path / "pred.json", pred_dir)
    assert result["all"] == direct.compute()["all"] and result["images"] == 3
    assert result["per_class"][1]["name"] == "c1"
    from pixelwise.cli import main

    assert main(["pq", str(tmp_path / "gt.json"), str(gt_dir), str(tmp_path / "pred.json"), str(pred_dir),
                 "--per-class", "--json", str(tmp_path / "pq.json")]) == 0
    assert json.loads((tmp_path / "pq.json").read_text())["all"]["pq"] == pytest.approx(result["all"]["pq"])
    pred_json["annotations"][0]["segments_info"] = pred_json["annotations"][0]["segments_info"][1:]
    (tmp_path / "pred.json").write_text(json.dumps(pred_json))
    with pytest.raises(DataError, match=r"0.png: predicted segment id \d+ is in the PNG but not in segments_info"):
        evaluate_panoptic_files(tmp_path / "gt.json", gt_dir, tmp_path / "pred.json", pred_dir)
    assert main(["pq", str(tmp_path / "gt.json"), str(gt_dir), str(tmp_path / "pred.json"), str(pred_dir)]) == 2
    with pytest.raises(ValueError, match="both as things and as stuff"):
        PanopticQuality(things=[1], stuff=[1])
