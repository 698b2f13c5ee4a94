"""Precision / recall / F-beta, per-image metrics, distributed reduction, surface
distances and COCO mask AP, each against an independent brute-force computation or a
hand-worked example."""

from __future__ import annotations

import math
import socket
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pixelwise.errors import DataError
from pixelwise.metrics import ConfusionMatrix, PerImageMetrics
from pixelwise.metrics.surface import (
    SCORES,
    SurfaceMetrics,
    label_boundaries,
    surface_scores,
)

IGNORE = 255
NAN = math.nan


def _brute_counts(pred: np.ndarray, target: np.ndarray, k: int, ignore=IGNORE):
    """TP, GT, PR per class by looping over pixels."""
    tp, gt, pr = np.zeros(k), np.zeros(k), np.zeros(k)
    for p, t in zip(pred.ravel().tolist(), target.ravel().tolist()):
        if ignore is not None and t == ignore:
            continue
        gt[t] += 1
        pr[p] += 1
        tp[t] += p == t
    return tp, gt, pr


def _random_labels(seed: int, k: int, shape, ignore_fraction=0.1):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, k, shape)
    target[rng.random(shape) < ignore_fraction] = IGNORE
    # Predictions agree with the target most of the time, so scores are not ~1/k.
    pred = np.where(rng.random(shape) < 0.6, np.clip(target, 0, k - 1), rng.integers(0, k, shape))
    return pred, target


# ---------------------------------------------------------------- precision / recall / F


def test_precision_recall_fscore_hand_worked():
    # target = 0 0 0 1 1 2 255, pred = 0 0 1 1 2 2 0 (as in test_metrics.py), 4 classes.
    # TP = [2, 1, 1, 0], GT = [3, 2, 1, 0], PR = [2, 2, 2, 0]
    # precision = TP/PR = [1, 1/2, 1/2, nan];  recall = TP/GT = [2/3, 1/2, 1, nan]
    # F2 = 5 P R / (4 P + R): class 0: 5 * 2/3 / (4 + 2/3) = 5/7; class 1: 1/2;
    #      class 2: 5 * 1/2 / (2 + 1) = 5/6
    cm = ConfusionMatrix(num_classes=4)
    cm.update(torch.tensor([[0, 0, 1, 1, 2, 2, 0]]), torch.tensor([[0, 0, 0, 1, 1, 2, IGNORE]]))
    np.testing.assert_allclose(cm.precision().numpy(), [1, 0.5, 0.5, NAN], rtol=1e-12)
    np.testing.assert_allclose(cm.recall().numpy(), [2 / 3, 0.5, 1, NAN], rtol=1e-12)
    np.testing.assert_allclose(cm.fscore(beta=2.0).numpy(), [5 / 7, 0.5, 5 / 6, NAN], rtol=1e-12)
    np.testing.assert_allclose(cm.fscore(beta=1.0).numpy(), cm.dice().numpy(), rtol=1e-12)
    assert cm.mean_precision() == pytest.approx(2 / 3)
    assert cm.mean_recall() == pytest.approx(13 / 18)
    assert cm.mean_fscore(beta=2.0) == pytest.approx((5 / 7 + 0.5 + 5 / 6) / 3)


def test_fscore_matches_precision_recall_formula_on_random_data():
    pred, target = _random_labels(seed=0, k=6, shape=(3, 11, 13))
    cm = ConfusionMatrix(num_classes=6)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    tp, gt, pr = _brute_counts(pred, target, 6)
    p, r = tp / pr, tp / gt
    for beta in (0.5, 1.0, 3.0):
        expected = (1 + beta**2) * p * r / (beta**2 * p + r)
        np.testing.assert_allclose(cm.fscore(beta=beta).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(cm.precision().numpy(), p, rtol=1e-12)


def test_fscore_of_a_class_never_predicted_is_zero_not_nan():
    # Class 1 is in the GT but never predicted: P = 0/0, R = 0 -> F counted as 0
    # (MMSeg's P/R form would give NaN and drop the class from the mean).
    cm = ConfusionMatrix(num_classes=2)
    cm.update(torch.tensor([[0, 0, 0]]), torch.tensor([[0, 1, 1]]))
    assert math.isnan(cm.precision()[1].item())
    assert cm.fscore()[1].item() == 0.0
    assert cm.mean_fscore() == pytest.approx((2 * 1 / 4 + 0) / 2)  # F_0 = 2*1/(1+3)
    with pytest.raises(ValueError, match="beta"):
        cm.fscore(beta=0.0)


# ---------------------------------------------------------------- counting paths


@pytest.mark.parametrize(
    "k, ignore, dtypes",
    [
        (5, IGNORE, (torch.int64, torch.int64)),   # fast path
        (5, IGNORE, (torch.uint8, torch.uint8)),   # fast path in int32
        (40, IGNORE, (torch.uint8, torch.int32)),
        (5, 0, (torch.int64, torch.int64)),        # ignore_index < K: general path
        (5, None, (torch.int64, torch.int64)),
        (5, -1, (torch.int64, torch.int64)),
    ],
)
def test_both_counting_paths_match_brute_force(k, ignore, dtypes):
    pred, target = _random_labels(seed=k, k=k, shape=(2, 9, 10))
    if ignore is None:
        target[target == IGNORE] = 1
    elif ignore != IGNORE:
        target[target == IGNORE] = ignore
    cm = ConfusionMatrix(num_classes=k, ignore_index=ignore)
    cm.update(torch.from_numpy(pred).to(dtypes[1]), torch.from_numpy(target).to(dtypes[0]))
    tp, gt, pr = _brute_counts(pred, target, k, ignore)
    m = cm.matrix.numpy()
    np.testing.assert_array_equal(m.diagonal(), tp)
    np.testing.assert_array_equal(m.sum(1), gt)
    np.testing.assert_array_equal(m.sum(0), pr)


def test_stray_label_next_to_ignored_pixels_is_reported():
    # Both 37 and 255 exceed K: the fast path bins them past K*K and must notice 37.
    target = torch.tensor([[0, 1, IGNORE, 37]])
    cm = ConfusionMatrix(num_classes=21)
    with pytest.raises(DataError, match="label 37"):
        cm.update(torch.tensor([[0, 1, 2, 3]]), target)
    assert cm.matrix.sum().item() == 0


def test_out_of_range_prediction_on_an_ignored_pixel_is_allowed():
    cm = ConfusionMatrix(num_classes=3)
    cm.update(torch.tensor([[0, 1, 9]]), torch.tensor([[0, 1, IGNORE]]))
    assert cm.matrix.sum().item() == 2


def test_all_pixels_ignored_counts_nothing():
    for metric in (ConfusionMatrix(num_classes=3), PerImageMetrics(num_classes=3)):
        metric.update(torch.zeros(2, 4, 4, dtype=torch.long), torch.full((2, 4, 4), IGNORE))
        assert math.isnan(metric.miou())
    assert PerImageMetrics(num_classes=3).compute()["num_images"] == 0


def test_single_class():
    cm, per_image = ConfusionMatrix(num_classes=1), PerImageMetrics(num_classes=1)
    for metric in (cm, per_image):
        zeros = torch.zeros(1, 3, 3, dtype=torch.long)
        metric.update(zeros, zeros)
        assert metric.miou() == 1.0
    assert cm.fscore().tolist() == [1.0] and cm.pixel_accuracy() == 1.0


# ---------------------------------------------------------------- per-image metrics


def test_per_image_metrics_match_brute_force():
    k = 4
    pred, target = _random_labels(seed=3, k=k, shape=(5, 6, 7))
    target[1] = IGNORE  # a fully ignored image: counted, but defines nothing
    target[2][target[2] == 3] = 0
    pred[2][pred[2] == 3] = 1  # class 3 absent from image 2
    metric = PerImageMetrics(num_classes=k)
    metric.update(torch.from_numpy(pred[:3]), torch.from_numpy(target[:3]))
    metric.update(torch.from_numpy(pred[3:]), torch.from_numpy(target[3:]))

    ious, dices = [], []  # per image: {class: value} for the defined classes
    for p, t in zip(pred, target):
        tp, gt, pr = _brute_counts(p, t, k)
        ious.append({c: tp[c] / (gt[c] + pr[c] - tp[c]) for c in range(k) if gt[c] + pr[c]})
        dices.append({c: 2 * tp[c] / (gt[c] + pr[c]) for c in range(k) if gt[c] + pr[c]})
    class_iou = [np.mean([d[c] for d in ious if c in d]) for c in range(k)]
    class_dice = [np.mean([d[c] for d in dices if c in d]) for c in range(k)]
    np.testing.assert_allclose(metric.iou().numpy(), class_iou, rtol=1e-12)
    np.testing.assert_allclose(metric.dice().numpy(), class_dice, rtol=1e-12)
    assert metric.miou() == pytest.approx(np.mean(class_iou), rel=1e-12)
    image_miou = np.mean([np.mean(list(d.values())) for d in ious if d])
    assert metric.image_miou() == pytest.approx(image_miou, rel=1e-12)
    assert metric.image_mean_dice() == pytest.approx(
        np.mean([np.mean(list(d.values())) for d in dices if d]), rel=1e-12
    )
    assert metric.num_images == 5


def test_per_image_and_dataset_level_differ_as_documented():
    # Image A: class 1 is 1 pixel, predicted right; image B: class 1 is 7 pixels, all
    # missed. Dataset: IoU_1 = 1 / 8. Per image: IoU_1 = (1 + 0) / 2 = 1/2.
    target = torch.tensor([[0] * 7 + [1], [1] * 7 + [0]])
    pred = torch.tensor([[0] * 7 + [1], [0] * 8])
    cm, per_image = ConfusionMatrix(num_classes=2), PerImageMetrics(num_classes=2)
    cm.update(pred, target)
    per_image.update(pred, target)
    assert cm.iou()[1].item() == pytest.approx(1 / 8)
    assert per_image.iou()[1].item() == pytest.approx(1 / 2)


# ---------------------------------------------------------------- distributed (gloo)


def _square(top: int, left: int, size: int, shape=(64, 64)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top: top + size, left: left + size] = True
    return mask


# Image 1: GT a; predictions: a (0.9, TP), a disjoint square (0.8, FP).
# Image 2: GT b; prediction: b (0.7, TP).  Ranked over both images:
#   TP (P 1, R 1/2), FP (P 1/2, R 1/2), TP (P 2/3, R 1)
# Interpolated precision (max precision at recall >= r): 1 for r <= 1/2, 2/3 above.
# COCO samples r = 0, 0.01, ..., 1: 51 points (0 .. 0.50) get 1, 50 points get 2/3,
# AP = (51 + 50 * 2/3) / 101 = 0.834983..., the same at every IoU threshold.
_A, _B, _FP = _square(5, 5, 20), _square(30, 30, 20), _square(40, 2, 15)
_FP_CASE = [
    dict(gt_masks=_A[None], gt_labels=[3], pred_masks=np.stack([_A, _FP]),
         pred_labels=[3, 3], pred_scores=[0.9, 0.8]),
    dict(gt_masks=torch.from_numpy(_B[None]), gt_labels=torch.tensor([3]),
         pred_masks=torch.from_numpy(_B[None]), pred_labels=torch.tensor([3]),
         pred_scores=torch.tensor([0.7])),
]
_FP_CASE_AP = (51 + 50 * 2 / 3) / 101


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _distributed_worker(rank: int, port: int, pred, target, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    try:
        mine = slice(0, 3) if rank == 0 else slice(3, None)  # different data per process
        cm = ConfusionMatrix(num_classes=5)
        per_image = PerImageMetrics(num_classes=5)
        surface = SurfaceMetrics(num_classes=5, tolerance=1.0, boundary_width=1.0)
        for metric in (cm, per_image, surface):
            metric.update(pred[mine], target[mine])
            metric.all_reduce()
        from pixelwise.metrics.coco import CocoMaskAP

        ap = CocoMaskAP()  # one image per process; alone each would score AP = 1
        ap.update(**_FP_CASE[rank])
        ap.all_gather()
        torch.save(
            {"matrix": cm.matrix, "per_image": per_image.compute(), "surface": surface.compute(),
             "coco": ap.compute()["AP"], "coco_images": ap.num_images},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_two_gloo_processes(tmp_path):
    pred, target = (torch.from_numpy(a) for a in _random_labels(seed=7, k=5, shape=(5, 8, 8)))
    mp.spawn(_distributed_worker, args=(_free_port(), pred, target, str(tmp_path)), nprocs=2)
    cm, per_image = ConfusionMatrix(num_classes=5), PerImageMetrics(num_classes=5)
    surface = SurfaceMetrics(num_classes=5, tolerance=1.0, boundary_width=1.0)
    for metric in (cm, per_image, surface):
        metric.update(pred, target)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(result["matrix"], cm.matrix)
        assert result["per_image"]["num_images"] == 5
        np.testing.assert_allclose(result["per_image"]["iou"], per_image.compute()["iou"])
        np.testing.assert_allclose(result["surface"]["hd95"], surface.compute()["hd95"])
        assert result["coco_images"] == 2
        assert result["coco"] == pytest.approx(_FP_CASE_AP, rel=1e-9)


# ---------------------------------------------------------------- surface metrics


def _brute_boundary(mask: np.ndarray) -> set:
    h, w = mask.shape
    edge = set()
    for r in range(h):
        for c in range(w):
            if not mask[r, c]:
                continue
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                rr, cc = r + dr, c + dc
                if not (0 <= rr < h and 0 <= cc < w) or not mask[rr, cc]:
                    edge.add((r, c))
    return edge


def _dist(a, b, spacing):
    return math.hypot((a[0] - b[0]) * spacing[0], (a[1] - b[1]) * spacing[1])


def _brute_surface(pred, gt, spacing, tolerance, width) -> list[float]:
    bp, bg = _brute_boundary(pred), _brute_boundary(gt)
    to_gt = np.array([min(_dist(a, b, spacing) for b in bg) for a in bp])
    to_pred = np.array([min(_dist(a, b, spacing) for b in bp) for a in bg])
    hd = max(to_gt.max(), to_pred.max())
    hd95 = max(np.percentile(to_gt, 95), np.percentile(to_pred, 95))
    assd = (to_gt.sum() + to_pred.sum()) / (len(to_gt) + len(to_pred))
    p, r = np.mean(to_gt <= tolerance), np.mean(to_pred <= tolerance)
    bf = 2 * p * r / (p + r) if p + r else 0.0

    width = max(width, *spacing)  # documented floor: one pixel step

    def band(mask):
        h, w = mask.shape
        outside = [(i, j) for i in range(-1, h + 1) for j in range(-1, w + 1)
                   if not (0 <= i < h and 0 <= j < w) or not mask[i, j]]
        return {(i, j) for i in range(h) for j in range(w)
                if mask[i, j] and min(_dist((i, j), o, spacing) for o in outside) <= width}

    band_p, band_g = band(pred), band(gt)
    biou = len(band_p & band_g) / len(band_p | band_g)
    return [hd, hd95, assd, bf, biou]


def _blob(rng, shape):
    mask = np.zeros(shape, dtype=bool)
    for _ in range(2):
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        mask[max(r - 2, 0): r + rng.integers(1, 4), max(c - 3, 0): c + rng.integers(1, 4)] = True
    return mask


def test_label_boundaries_match_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (7, 8))
    edges = label_boundaries(labels)
    for c in range(3):
        assert set(zip(*np.nonzero(edges & (labels == c)))) == _brute_boundary(labels == c)


@pytest.mark.parametrize(
    "seed, spacing, tolerance, width",
    [
        (0, (0.5, 0.5), 1.5, 1.2),   # square pixels: the OpenCV path
        (1, (1.0, 2.0), 1.5, 1.2),   # anisotropic: the SciPy path
        (2, (0.5, 0.5), 1.5, 1.2),
        (3, (1.0, 2.0), 1.5, 1.2),
        (4, (1.0, 1.0), 2.0, 2.0),   # thresholds equal to pixel distances: <= is exact
        (5, (1.0, 1.0), math.sqrt(5), math.sqrt(8)),
    ],
)
def test_surface_scores_match_brute_force(seed, spacing, tolerance, width):
    rng = np.random.default_rng(seed)
    pred, gt = _blob(rng, (9, 11)), _blob(rng, (9, 11))
    got = surface_scores(pred, gt, spacing=spacing, tolerance=tolerance, boundary_width=width)
    expected = _brute_surface(pred, gt, spacing, tolerance, width)
    np.testing.assert_allclose([got[name] for name in SCORES], expected, rtol=1e-12)


def test_hausdorff_hand_worked():
    # Two single pixels 3 rows and 4 columns apart: every distance is 5.
    pred, gt = np.zeros((6, 6), bool), np.zeros((6, 6), bool)
    pred[0, 0], gt[3, 4] = True, True
    got = surface_scores(pred, gt, tolerance=4.9, boundary_width=1.0)
    assert got["hausdorff"] == got["hd95"] == got["assd"] == 5.0
    assert got["boundary_fscore"] == 0.0 and got["boundary_iou"] == 0.0
    assert surface_scores(pred, pred)["hausdorff"] == 0.0
    assert surface_scores(pred, pred)["boundary_iou"] == 1.0


def test_nested_squares_hand_worked():
    # pred: 7x7 square, gt: the 5x5 square inside it, in a 9x9 image (unit pixels).
    # Boundaries: the 24-pixel ring of pred, the 16-pixel ring of gt, one pixel apart
    # except pred's 4 corners, sqrt(2) from gt's corners.
    #   HD = sqrt 2; HD95 (pred->gt: 20 ones, 4 sqrt 2; 95th pct lands on sqrt 2) = sqrt 2
    #   ASSD = (20 + 4 sqrt 2 + 16) / (24 + 16)
    # Band w = 2: pred's two outer rings (49 - 9 = 40 px), gt's all but its centre (24);
    # they share gt's outer ring (16): BIoU = 16 / (40 + 24 - 16) = 1/3. A band with
    # d < 2 instead of d <= 2 would give 0.
    pred, gt = np.zeros((9, 9), bool), np.zeros((9, 9), bool)
    pred[1:8, 1:8], gt[2:7, 2:7] = True, True
    got = surface_scores(pred, gt, tolerance=1.0, boundary_width=2.0)
    assert got["hausdorff"] == pytest.approx(math.sqrt(2))
    assert got["hd95"] == pytest.approx(math.sqrt(2))
    assert got["assd"] == pytest.approx((36 + 4 * math.sqrt(2)) / 40)
    assert got["boundary_iou"] == pytest.approx(1 / 3)
    # BF with t = 1: P = 20/24, R = 16/16 -> 2 P R / (P + R) = 10/11.
    assert got["boundary_fscore"] == pytest.approx(10 / 11)


def test_surface_scores_of_empty_masks():
    empty, full = np.zeros((4, 5), bool), np.ones((4, 5), bool)
    assert all(math.isnan(v) for v in surface_scores(empty, empty).values())
    one_sided = surface_scores(empty, full)
    assert one_sided["hausdorff"] == one_sided["hd95"] == one_sided["assd"] == math.inf
    assert one_sided["boundary_fscore"] == 0.0 and one_sided["boundary_iou"] == 0.0


def test_surface_metrics_average_over_images_with_ignore_and_empty_classes():
    rng = np.random.default_rng(5)
    target = np.zeros((2, 9, 11), dtype=np.int64)
    pred = np.zeros_like(target)
    target[0][_blob(rng, (9, 11))] = 1
    pred[0][_blob(rng, (9, 11))] = 1
    pred[0][0, 0] = 2                          # class 2 only predicted in image 0
    target[1][_blob(rng, (9, 11))] = 1
    pred[1] = target[1]
    target[1][4:, :] = IGNORE                  # removed from both masks in image 1
    metric = SurfaceMetrics(num_classes=4, tolerance=1.0, boundary_width=1.0)
    metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    result = metric.compute()

    valid1 = target[1] != IGNORE
    expected = {c: [] for c in range(4)}
    for c in (0, 1):
        expected[c].append(_brute_surface(pred[0] == c, target[0] == c, (1.0, 1.0), 1.0, 1.0))
        p1, t1 = (pred[1] == c) & valid1, (target[1] == c) & valid1
        if p1.any() or t1.any():
            expected[c].append(_brute_surface(p1, t1, (1.0, 1.0), 1.0, 1.0))
    diagonal = math.hypot(9, 11)
    expected[2].append([diagonal] * 3 + [0.0, 0.0])  # one-sided: documented worst case
    for i, name in enumerate(SCORES):
        want = [np.mean([v[i] for v in expected[c]]) if expected[c] else NAN for c in range(4)]
        np.testing.assert_allclose(result[name], want, rtol=1e-12, err_msg=name)
        assert result[f"mean_{name}"] == pytest.approx(np.nanmean(want), rel=1e-12)
    assert metric.one_sided_counts().tolist() == [0, 0, 1, 0]


def test_surface_metrics_reject_unknown_labels():
    metric = SurfaceMetrics(num_classes=2)
    with pytest.raises(ValueError, match="label 7"):
        metric.update(torch.zeros(1, 3, 3, dtype=torch.long), torch.full((1, 3, 3), 7))


# ---------------------------------------------------------------- COCO mask AP


def test_coco_ap_is_one_when_predictions_equal_ground_truth():
    from pixelwise.metrics.coco import coco_mask_ap

    gt = np.stack([_square(2, 2, 10), _square(20, 20, 40)])  # one small, one medium
    images = [
        dict(gt_masks=gt, gt_labels=[1, 2], pred_masks=gt, pred_labels=[1, 2],
             pred_scores=[0.9, 0.8]),
        dict(gt_masks=gt[:1], gt_labels=[2], pred_masks=gt[:1], pred_labels=[2],
             pred_scores=[0.5]),
    ]
    result = coco_mask_ap(images)
    for name in ("AP", "AP50", "AP75", "APs", "APm"):
        assert result[name] == pytest.approx(1.0), name
    assert math.isnan(result["APl"])  # no object above 96**2 pixels
    assert result["per_class"] == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}


def test_coco_ap_with_a_false_positive_ranked_above_a_true_positive():
    from pixelwise.metrics.coco import CocoMaskAP

    # The worked example is above _FP_CASE: AP = (51 + 50 * 2/3) / 101.
    ap = CocoMaskAP()
    for image in _FP_CASE:  # numpy inputs for image 1, torch tensors for image 2
        ap.update(**image)
    result = ap.compute()
    assert result["AP"] == pytest.approx(_FP_CASE_AP, rel=1e-9)
    assert result["AP50"] == pytest.approx(_FP_CASE_AP, rel=1e-9)
    assert result["AP75"] == pytest.approx(_FP_CASE_AP, rel=1e-9)
    # With the FP scored last, precision is 1 up to recall 1: AP = 1.
    ap.reset()
    ap.update(gt_masks=np.stack([_A, _B]), gt_labels=[3, 3],
              pred_masks=np.stack([_A, _FP, _B]),
              pred_labels=[3, 3, 3], pred_scores=[0.9, 0.1, 0.8])
    assert ap.compute()["AP"] == pytest.approx(1.0)


def test_coco_ap_of_a_half_overlapping_prediction_depends_on_the_threshold():
    from pixelwise.metrics.coco import coco_mask_ap

    # GT 20x20 at column 10; prediction 20x20 shifted 5 columns: IoU = 300/500 = 0.6.
    # It matches at thresholds 0.50, 0.55, 0.60 (3 of 10): AP = 0.3, AP50 = 1, AP75 = 0.
    gt, pred = _square(10, 10, 20), _square(10, 15, 20)
    result = coco_mask_ap([dict(gt_masks=gt[None], gt_labels=[1], pred_masks=pred[None],
                                pred_labels=[1], pred_scores=[1.0])])
    assert (result["AP"], result["AP50"], result["AP75"]) == pytest.approx((0.3, 1.0, 0.0))


def test_coco_ap_without_predictions_is_zero_and_inputs_are_checked():
    from pixelwise.metrics.coco import CocoMaskAP

    ap = CocoMaskAP()
    with pytest.raises(ValueError, match="no ground-truth"):
        ap.compute()
    with pytest.raises(ValueError, match="one label per mask"):
        ap.update(gt_masks=_square(0, 0, 5)[None], gt_labels=[1, 2],
                  pred_masks=np.zeros((0, 64, 64)), pred_labels=[], pred_scores=[])
    ap.update(gt_masks=_square(0, 0, 5)[None], gt_labels=[1],
              pred_masks=np.zeros((0, 64, 64)), pred_labels=[], pred_scores=[])
    assert ap.compute()["AP"] == 0.0


def test_coco_ap_without_pycocotools_says_how_to_install(monkeypatch):
    from pixelwise.metrics.coco import CocoMaskAP

    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(ImportError, match=r"pip install 'pixelwise\[coco\]'"):
        CocoMaskAP()
