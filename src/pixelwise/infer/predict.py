"""Prediction: images in, label maps (and coloured masks, overlays, run-length files) out.

The pieces: :func:`model_function` wraps a model with device transfer, autocast and
channels_last; :func:`~pixelwise.infer.sliding.sliding_window` and
:func:`~pixelwise.infer.tta.predict_probs` do tiling and test-time augmentation;
:class:`pixelwise.Segmenter` holds a saved model with its preprocessing; :func:`predict_paths`
is ``pixelwise predict``: files and folders in, one set of output files per image out.

Under ``torchrun`` (any number of processes and nodes, an output folder every node can see)
each rank predicts its shard of the inputs (``paths[rank::world_size]``) and rank 0 merges the
run-wide files, so the outputs are the files one process writes. Every finished image leaves a
record in ``OUT/.pixelwise-predict/``; a second run into the same folder with the same model and
settings skips the finished images (an interrupted run resumes), while a different model or
setting predicts everything again.
"""

from __future__ import annotations

import contextlib
import csv
import io
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
from ..train.distributed import DistEnv, barrier, cleanup, setup
from .shards import ShardedRun, signature
from .tta import TTA

FORMATS = ("png", "color", "overlay", "coco-rle", "csv-rle")
COCO_FILE, CSV_FILE = "predictions_coco.json", "predictions_rle.csv"
PER_IMAGE = {"png": "{}.png", "color": "{}_color.png", "overlay": "{}_overlay.png"}


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
                  backend: str = "torch", progress: bool = True, resume: bool = True) -> dict[str, Any]:
    """Segment image files/folders with a saved model. Per image ``NAME`` it writes, by format:

    - ``png``: ``NAME.png``, palette PNG whose pixel values are the class indices;
    - ``color``: ``NAME_color.png``, the class colours; ``overlay``: ``NAME_overlay.png``;
    - ``coco-rle``: records in ``predictions_coco.json`` (see :func:`coco_rle_entries`);
    - ``csv-rle``: rows in ``predictions_rle.csv`` (see :func:`csv_rle_rows`).

    A file that cannot be read is reported and skipped. Images finished by an earlier run into
    ``out_dir`` with the same model and settings are skipped (``resume=False`` predicts them
    again); the run-wide files are written at the end and on an interrupt, from every finished
    image. Under ``torchrun`` each process takes its shard (see the module docstring).

    Returns ``{"written": [names], "failed": [(path, reason)], "files": [summary files],
    "resumed": [names skipped as finished], "rank": r, "world_size": w}`` for this process's shard.
    """
    env = setup(device if device.startswith("cuda") else "cpu")
    try:
        return _predict(env, model_dir, inputs, Path(out_dir), device=device, amp=amp, channels_last=channels_last,
                        tile=tile, overlap=overlap, tta=tta, crf=crf, batch_size=batch_size,
                        formats=parse_formats(formats), backend=backend, progress=progress, resume=resume)
    finally:
        cleanup(env)


def _merge(run: ShardedRun, out: Path, formats: tuple[str, ...]) -> tuple[list[str], int]:
    """Write the run-wide files from the per-image records, in input order; returns
    ``(files written, images without a record)``."""
    coco: list[dict[str, Any]] = []
    rows: list[list[str]] = [["ImageId", "ClassId", "EncodedPixels"]]
    missing = 0
    for index, _, data in run.records():
        if data is None:
            missing += 1
            continue
        coco += [{**entry, "image_id": index} for entry in data.get("coco", [])]
        rows += data.get("csv", [])
    files = []
    if "coco-rle" in formats:
        _atomic_write(out / COCO_FILE, json.dumps(coco).encode())
        files.append(str(out / COCO_FILE))
    if "csv-rle" in formats:
        text = io.StringIO(newline="")
        csv.writer(text).writerows(rows)
        _atomic_write(out / CSV_FILE, text.getvalue().encode())
        files.append(str(out / CSV_FILE))
    return files, missing


def _predict(env: DistEnv, model_dir: str | Path, inputs: Iterable[str | Path], out: Path, *, device: str,
             amp: str, channels_last: bool, tile: int | None, overlap: float, tta: Any, crf: bool, batch_size: int,
             formats: tuple[str, ...], backend: str, progress: bool, resume: bool) -> dict[str, Any]:
    from .segmenter import Segmenter

    seg = Segmenter.from_pretrained(model_dir, device=str(env.device) if env.distributed else device, amp=amp,
                                    channels_last=channels_last, backend=backend)
    if seg.mode == "multilabel" and {"coco-rle", "csv-rle"} & set(formats):
        raise ConfigError(f"{str(model_dir)!r} is a multilabel model (overlapping classes, bit-packed label PNGs); "
                          f"the coco-rle and csv-rle outputs hold one class per pixel: use png, color, overlay")
    ignore_index = int(seg.config.get("data", {}).get("ignore_index", 255))
    paths = expand_inputs(inputs, RAW_IMAGE_SUFFIXES if seg.raw else IMAGE_SUFFIXES)
    run = ShardedRun(env, out, paths, signature(model_dir, amp=amp, backend=backend, tile=tile, overlap=overlap,
                                                tta=tta, crf=crf), resume=resume, progress=progress)
    written: list[str] = []
    resumed: list[str] = []
    failed: list[tuple[str, str]] = []
    summary = bool({"coco-rle", "csv-rle"} & set(formats))
    files: list[str] = []
    with contextlib.ExitStack() as stack:
        if summary and not env.distributed:  # on every exit, an interrupt included: finished images are kept
            stack.callback(lambda: files.extend(_merge(run, out, formats)[0]))
        for index, path in tqdm(run.shard, desc="predict", disable=not progress or not env.is_main):
            per_image = [out / PER_IMAGE[f].format(path.stem) for f in formats if f in PER_IMAGE]
            if run.finished(path, per_image, formats):
                resumed.append(path.stem)
                continue
            try:
                image = seg.load_image(path)
            except DataError as err:
                failed.append((str(path), str(err)))
                tqdm.write(f"skipped: {err}")
                continue
            result = seg(image, tile=tile, overlap=overlap, tta=tta, crf=crf, batch_size=batch_size,
                         return_probs="coco-rle" in formats)
            if "png" in formats:
                write_mask(out / PER_IMAGE["png"].format(path.stem), result.labels, seg.palette)
            if "color" in formats:
                write_image(out / PER_IMAGE["color"].format(path.stem), result.colorize())
            if "overlay" in formats:
                write_image(out / PER_IMAGE["overlay"].format(path.stem), result.overlay(seg.display(image)))
            record = {"formats": list(formats), "coco": [], "csv": []}
            if "coco-rle" in formats:
                record["coco"] = coco_rle_entries(result.labels, result.probs, image_id=index, file_name=path.name,
                                                  class_names=seg.class_names, ignore_index=ignore_index)
            if "csv-rle" in formats:
                record["csv"] = csv_rle_rows(result.labels, image_name=path.name, num_classes=len(seg.class_names),
                                             ignore_index=ignore_index)
            run.record(path, record)  # last: the image is finished
            written.append(path.stem)
    if env.distributed:
        barrier(env)
        if env.is_main and summary:
            files, missing = _merge(run, out, formats)
            if missing:
                tqdm.write(f"{missing} of {len(paths)} images have no prediction in {out} (unreadable, or the "
                           f"folder is not shared by every node); their lines are missing from {', '.join(files)}")
    return {"written": written, "failed": failed, "files": files, "resumed": resumed, "rank": env.rank,
            "world_size": env.world_size}
