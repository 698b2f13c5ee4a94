"""Prediction: images in, label maps (and coloured masks, overlays, run-length files) out.

The pieces: :func:`model_function` wraps a model with device transfer, autocast and
channels_last; :func:`~pixelwise.infer.sliding.sliding_window` and
:func:`~pixelwise.infer.tta.predict_probs` do tiling and test-time augmentation;
:class:`pixelwise.Segmenter` holds a saved model with its preprocessing; :func:`predict_paths`
is ``pixelwise predict``: files and folders in, one set of output files per image out.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..data.folder import IMAGE_SUFFIXES, RAW_IMAGE_SUFFIXES
from ..data.io import _atomic_write, write_image, write_mask
from ..data.rle import coco_rle, rle_encode
from ..errors import ConfigError, DataError
from .tta import TTA

FORMATS = ("png", "color", "overlay", "coco-rle", "csv-rle")
COCO_FILE, CSV_FILE = "predictions_coco.json", "predictions_rle.csv"


def expand_inputs(inputs: Iterable[str | Path], suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Files as given, folders expanded to their images (sorted; ``suffixes`` names them: a
    raw-mode model also reads ``.npy``). Missing paths are an error."""
    paths: list[Path] = []
    suffixes = frozenset(suffixes)
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in suffixes and not f.name.startswith("."))
            if not found:
                raise DataError(f"folder {str(p)!r} holds no images ({', '.join(sorted(suffixes))})")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"input {str(p)!r} does not exist; pass image files or folders of images")
    return paths


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """``"png,color"`` or ``["png", "color"]`` -> a checked tuple of output formats."""
    items = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        raise ConfigError(f"output format(s) {unknown or items} not known; choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(items))


def coco_rle_entries(labels: np.ndarray, probs: np.ndarray | None, *, image_id: int, file_name: str,
                     class_names: Sequence[str], ignore_index: int = 255) -> list[dict[str, Any]]:
    """COCO results-style records, one per foreground class present in ``labels`` (class 0 is
    background): ``{"image_id", "file_name", "category_id", "category_name", "segmentation":
    {"size": [H, W], "counts": str}, "score"}``; ``score`` is the mean probability of the class
    over its pixels (1.0 without ``probs``)."""
    entries = []
    for c in np.unique(labels):
        c = int(c)
        if c == 0 or c == ignore_index:
            continue
        binary = labels == c
        rle = coco_rle(binary[None])[0]
        score = float(probs[c][binary].mean()) if probs is not None else 1.0
        entries.append({"image_id": image_id, "file_name": file_name, "category_id": c,
                        "category_name": class_names[c] if c < len(class_names) else str(c),
                        "segmentation": rle,
                        "score": round(score, 6)})
    return entries


def csv_rle_rows(labels: np.ndarray, *, image_name: str, num_classes: int, ignore_index: int = 255) -> list[list[str]]:
    """Competition rows ``[ImageId, ClassId, EncodedPixels]``, one per foreground class
    ``1 .. num_classes - 1`` (empty ``EncodedPixels`` for an absent class); column-major,
    1-based runs as in :mod:`pixelwise.data.rle`."""
    return [[image_name, str(c), rle_encode(labels == c)]
            for c in range(1, num_classes) if c != ignore_index]


def predict_paths(model_dir: str | Path, inputs: Iterable[str | Path], out_dir: str | Path, *,
                  device: str = "cpu", amp: str = "none", channels_last: bool = False, tile: int | None = None,
                  overlap: float = 0.25, tta: bool | str | dict | TTA | None = None, crf: bool = False,
                  batch_size: int = 4, formats: str | Sequence[str] = ("png", "color", "overlay"),
                  backend: str = "torch", progress: bool = True) -> dict[str, Any]:
    """Segment image files/folders with a saved model. Per image ``NAME`` it writes, by format:

    - ``png``: ``NAME.png``, palette PNG whose pixel values are the class indices;
    - ``color``: ``NAME_color.png``, the class colours; ``overlay``: ``NAME_overlay.png``;
    - ``coco-rle``: records in ``predictions_coco.json`` (see :func:`coco_rle_entries`);
    - ``csv-rle``: rows in ``predictions_rle.csv`` (see :func:`csv_rle_rows`).

    A file that cannot be read is reported and skipped; outputs already written stay (the CSV
    is flushed row by row, the COCO JSON is written even if the run is interrupted).
    Returns ``{"written": [names], "failed": [(path, reason)], "files": [summary files]}``.
    """
    from .segmenter import Segmenter

    formats = parse_formats(formats)
    seg = Segmenter.from_pretrained(model_dir, device=device, amp=amp, channels_last=channels_last, backend=backend)
    if seg.mode == "multilabel" and {"coco-rle", "csv-rle"} & set(formats):
        raise ConfigError(f"{str(model_dir)!r} is a multilabel model (overlapping classes, bit-packed label PNGs); "
                          f"the coco-rle and csv-rle outputs hold one class per pixel: use png, color, overlay")
    ignore_index = int(seg.config.get("data", {}).get("ignore_index", 255))
    paths = expand_inputs(inputs, RAW_IMAGE_SUFFIXES if seg.raw else IMAGE_SUFFIXES)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    failed: list[tuple[str, str]] = []
    coco: list[dict[str, Any]] = []
    files: list[str] = []
    with contextlib.ExitStack() as stack:
        csv_writer = None
        if "csv-rle" in formats:
            csv_handle = stack.enter_context(open(out / CSV_FILE, "w", newline=""))
            csv_writer = csv.writer(csv_handle)
            csv_writer.writerow(["ImageId", "ClassId", "EncodedPixels"])
            files.append(str(out / CSV_FILE))
        if "coco-rle" in formats:
            # Registered callbacks run on every exit, an interrupt included: finished images are kept.
            stack.callback(lambda: _atomic_write(out / COCO_FILE, json.dumps(coco).encode()))
            files.append(str(out / COCO_FILE))
        for index, path in enumerate(tqdm(paths, desc="predict", disable=not progress)):
            try:
                image = seg.load_image(path)
            except DataError as err:
                failed.append((str(path), str(err)))
                tqdm.write(f"skipped: {err}")
                continue
            result = seg(image, tile=tile, overlap=overlap, tta=tta, crf=crf, batch_size=batch_size,
                         return_probs="coco-rle" in formats)
            if "png" in formats:
                write_mask(out / f"{path.stem}.png", result.labels, seg.palette)
            if "color" in formats:
                write_image(out / f"{path.stem}_color.png", result.colorize())
            if "overlay" in formats:
                write_image(out / f"{path.stem}_overlay.png", result.overlay(seg.display(image)))
            if "coco-rle" in formats:
                coco += coco_rle_entries(result.labels, result.probs, image_id=index, file_name=path.name,
                                         class_names=seg.class_names, ignore_index=ignore_index)
            if csv_writer is not None:
                csv_writer.writerows(csv_rle_rows(result.labels, image_name=path.name,
                                                  num_classes=len(seg.class_names), ignore_index=ignore_index))
                csv_handle.flush()
            written.append(path.stem)
    return {"written": written, "failed": failed, "files": files}
