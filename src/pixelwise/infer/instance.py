"""Prediction with a saved instance model: overlays, a COCO results file with RLE masks,
and semantic label maps made from the instances.

For each input image ``NAME`` the output folder gets

    NAME_instances.png   the image with every instance in its own colour, its box, and
                         "class score" text (OpenCV drawing); a keypoint model also draws each
                         instance's keypoints as dots joined by the keypoint set's skeleton
    NAME_semantic.png    per-pixel class of the highest-scoring instance (palette PNG;
                         ``pixelwise.data.read_mask`` reads the indices back)

and for the whole run

    predictions.json     COCO results: ``[{"image_id", "category_id", "score", "bbox": [x, y, w, h],
                         "segmentation": {"size": [H, W], "counts": str}}]`` (every detection the
                         model keeps, for AP; overlays only draw those above ``score_threshold``);
                         a keypoint model adds ``"keypoints": [x1, y1, s1, ...]`` (``s`` the keypoint's
                         heatmap score), COCO's keypoint results format
    images.json          a COCO dataset dict (images + categories, no annotations) so that
                         ``COCO("images.json").loadRes("predictions.json")`` works
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch

from ..data.io import _atomic_write, read_image, write_image, write_mask
from ..metrics.coco import coco_results
from ..models.maskrcnn import Instances
from ..postprocess.instances import instances_to_semantic
from ..runtime import autocast
from ..tasks.instance import load_instance_model
from ..train.distributed import barrier, cleanup, setup
from .predict import expand_inputs
from .shards import ShardedRun, signature

__all__ = ["detect_instances", "draw_instances", "draw_keypoints", "instance_colours", "predict_instance_paths"]


def instance_colours(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 RGB colours, bright and well apart: golden-ratio steps around the hue circle."""
    if n == 0:
        return np.zeros((0, 3), dtype=np.uint8)
    hues = (np.arange(n) * 0.618033988749895 * 180.0) % 180.0  # OpenCV hue is 0..179
    hsv = np.stack([hues, np.full(n, 220.0), np.full(n, 255.0)], axis=1).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def draw_instances(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                   scores: np.ndarray, class_names: list[str], *, alpha: float = 0.5) -> np.ndarray:
    """Overlay instances on an ``(H, W, 3)`` uint8 RGB image.

    Args:
        masks: ``(D, H, W)`` bool; boxes ``(D, 4)`` xyxy; labels ``(D,)``; scores ``(D,)``.
        class_names: name of each label (index 0 = background).
        alpha: mask opacity.

    Returns:
        A new ``(H, W, 3)`` uint8 image; instance ``i`` in ``instance_colours(D)[i]``.
    """
    canvas = image.astype(np.float32)
    colours = instance_colours(len(masks))
    # Low scores first, so the most confident instance is painted last and stays on top.
    order = np.argsort(scores, kind="stable")
    for i in order:
        canvas[masks[i]] = (1 - alpha) * canvas[masks[i]] + alpha * colours[i]
    out = np.ascontiguousarray(np.clip(canvas, 0, 255).astype(np.uint8))
    scale = max(0.3, min(image.shape[:2]) / 600)  # text readable on small and large images
    for i in order:
        colour = tuple(int(c) for c in colours[i])
        x0, y0, x1, y1 = (round(v) for v in boxes[i])
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), colour, 1)
        name = class_names[labels[i]] if 0 <= labels[i] < len(class_names) else f"class_{labels[i]}"
        text = f"{name} {scores[i]:.2f}"
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(0, y0 - h - base)
        cv2.rectangle(out, (x0, top), (x0 + w, top + h + base), colour, -1)
        cv2.putText(out, text, (x0, top + h), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def draw_keypoints(image: np.ndarray, keypoints: np.ndarray, *, skeleton: list | None = None,
                   colours: np.ndarray | None = None) -> np.ndarray:
    """Draw ``(D, P, 2+)`` keypoints (x, y in pixels) on an ``(H, W, 3)`` uint8 image: a dot per point,
    black-rimmed so it shows on any colour, and a line per ``skeleton`` pair ``[a, b]`` (0-based).
    Instance ``i`` is drawn in ``colours[i]`` (default :func:`instance_colours`). Returns a new image."""
    out = np.ascontiguousarray(image.copy())
    colours = instance_colours(len(keypoints)) if colours is None else colours
    radius = max(2, round(min(image.shape[:2]) / 100))
    for points, colour in zip(np.asarray(keypoints, dtype=np.float64), colours):
        colour = tuple(int(c) for c in colour)
        xy = [(int(round(x)), int(round(y))) for x, y in points[:, :2]]
        for a, b in skeleton or []:
            if max(a, b) < len(xy):
                cv2.line(out, xy[a], xy[b], colour, 1, cv2.LINE_AA)
        for centre in xy:
            cv2.circle(out, centre, radius + 1, (0, 0, 0), -1, cv2.LINE_AA)
            cv2.circle(out, centre, radius, colour, -1, cv2.LINE_AA)
    return out


@torch.no_grad()
def detect_instances(model: torch.nn.Module, image: np.ndarray, *, device: str | torch.device = "cpu",
                     amp: str = "none") -> Instances:
    """Run an instance model (eval mode) on one ``(H, W, 3)`` uint8 RGB image.

    The model normalises and resizes by itself, so it gets the pixels scaled to 0..1 (grey
    for a one-channel model). Returns :class:`Instances` on ``device`` with float32 boxes,
    scores and ``(D, H, W)`` mask probabilities, whatever the autocast dtype.
    """
    device = torch.device(device)
    if int(getattr(model, "config", {}).get("in_channels", 3)) == 1:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0).to(device)
    with autocast(device, amp):
        det = model([x])[0]
    return Instances(boxes=det.boxes.float(), labels=det.labels, scores=det.scores.float(), masks=det.masks.float(),
                     keypoints=det.keypoints, keypoint_scores=det.keypoint_scores)


@torch.no_grad()
def predict_instance_paths(checkpoint: str | Path, inputs: Iterable[str | Path], out: str | Path, *,
                           device: str = "cpu", amp: str = "none", score_threshold: float = 0.5,
                           mask_threshold: float = 0.5, progress: bool = False, resume: bool = True) -> dict:
    """Run a saved instance model over image files / folders and write the outputs above.

    As :func:`pixelwise.infer.predict.predict_paths`: a rerun into ``out`` with the same model and
    settings keeps finished images (``resume=False`` redoes them), and under ``torchrun`` each rank
    takes its shard while rank 0 merges ``images.json`` and ``predictions.json`` (image ids are
    positions in the input list, from 1). Returns ``{"written": [image paths], "failed": [(path,
    error message)], "resumed": [paths kept], "predictions": path of predictions.json, "images":
    path of images.json, "detections": detections in this process's images}``.
    """
    from tqdm import tqdm

    env = setup(device if device.startswith("cuda") else "cpu")
    try:
        device_t = env.device if env.distributed else torch.device(device)
        model, config = load_instance_model(checkpoint, device=device_t)
        names = config.get("data", {}).get("class_names") or [f"class_{i}" for i in range(model.num_classes)]
        keypoint_set = config.get("data", {}).get("keypoints") or {}
        skeleton = keypoint_set.get("skeleton", [])
        out = Path(out)
        run = ShardedRun(env, out, expand_inputs(inputs), signature(checkpoint, amp=amp, score=score_threshold,
                                                                      mask=mask_threshold), resume=resume)
        written, failed, resumed, detections = [], [], [], 0
        for index, path in tqdm(run.shard, desc="predict", disable=not progress or not env.is_main):
            files = [out / f"{path.stem}_instances.png", out / f"{path.stem}_semantic.png"]
            if run.finished(path, files):
                resumed.append(str(path))
                continue
            try:
                image = read_image(path)
            except ValueError as err:  # DataError: unreadable file; keep going with the others
                failed.append((str(path), str(err)))
                continue
            det = detect_instances(model, image, device=device_t, amp=amp)
            boxes, labels, scores, masks = det.boxes, det.labels, det.scores, det.masks
            results = coco_results(index + 1, boxes, labels, scores, masks, mask_threshold=mask_threshold,
                                   keypoints=det.keypoints, keypoint_scores=det.keypoint_scores)
            keep = (scores >= score_threshold).cpu().numpy()
            overlay = draw_instances(image, (masks > mask_threshold).cpu().numpy()[keep], boxes.cpu().numpy()[keep],
                                     labels.cpu().numpy()[keep], scores.cpu().numpy()[keep], names)
            if det.keypoints is not None:
                overlay = draw_keypoints(overlay, det.keypoints.cpu().numpy()[keep], skeleton=skeleton,
                                         colours=instance_colours(int(keep.sum())))
            write_image(files[0], overlay)
            semantic = instances_to_semantic(masks, labels, scores, score_threshold=score_threshold,
                                             mask_threshold=mask_threshold)
            write_mask(files[1], semantic.cpu().numpy())
            run.record(path, {"image": {"file_name": path.name, "height": image.shape[0], "width": image.shape[1]},
                              "results": results})
            detections += len(results)
            written.append(str(path))
        barrier(env)
        if env.is_main:
            categories = [{"id": k, "name": n} for k, n in enumerate(names) if k > 0]
            if keypoint_set:  # COCO keypoint categories: 1-based skeleton
                categories = [{**c, "keypoints": list(keypoint_set["names"]),
                               "skeleton": [[a + 1, b + 1] for a, b in skeleton]} for c in categories]
            images, results = [], []
            for index, _, data in run.records():
                if data is not None:
                    images.append({"id": index + 1, **data["image"]})
                    results += [{**r, "image_id": index + 1} for r in data["results"]]
            _atomic_write(out / "images.json",
                          json.dumps({"images": images, "annotations": [], "categories": categories}).encode())
            _atomic_write(out / "predictions.json", json.dumps(results).encode())
    finally:
        cleanup(env)
    return {"written": written, "failed": failed, "resumed": resumed, "predictions": str(out / "predictions.json"),
            "images": str(out / "images.json"), "detections": detections}
