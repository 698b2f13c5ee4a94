"""Batch prediction for cluster frameworks: a :class:`~pixelwise.Segmenter` as a batch function.

Ray Data (and any framework that maps a callable over dict-of-column batches) constructs the
class once per worker and calls it on batches::

    import ray
    from pixelwise.recipes.batch import SegmentBatch

    ds = ray.data.read_images("s3://bucket/tiles/", include_paths=True, mode="RGB")
    masks = ds.map_batches(SegmentBatch, fn_constructor_kwargs={"model": "hf://my-lab/roads", "tile": 512},
                           batch_size=8, concurrency=4, num_gpus=0)   # num_gpus=1 and device="cuda" on GPUs
    masks.write_parquet("s3://bucket/masks/")

A batch is ``{"image": images, ...}``: a stacked ``(B, H, W, C)`` array, or a sequence of
``(H, W[, C])`` arrays of different sizes (Ray's variable-shaped tensor column); a ``"path"``
column instead of ``"image"`` reads the files. The result keeps the other columns and adds
``"mask"`` (one ``(H, W)`` uint8/int64 label map per row) and ``"areas"`` (a JSON string of the
pixel count per class, for quick statistics without the masks).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..infer.segmenter import Segmenter


class SegmentBatch:
    """Callable ``batch -> batch`` that segments the batch's images with one loaded model.

    Args:
        model: a model folder or ``hf://ORG/NAME`` (loaded once, in the constructor).
        device, amp, channels_last: as :meth:`Segmenter.from_pretrained`.
        tile, overlap, tta: as :meth:`Segmenter.__call__` (sliding window, test-time augmentation).
        column: the batch column holding images (or ``"path"`` for file paths).
    """

    def __init__(self, model: str, *, device: str = "cpu", amp: str = "none", channels_last: bool = False,
                 tile: int | None = None, overlap: float = 0.25, tta: str | bool = False,
                 column: str = "image") -> None:
        self.segmenter = Segmenter.from_pretrained(model, device=device, amp=amp, channels_last=channels_last)
        self.options = {"tile": tile, "overlap": overlap, "tta": tta}
        self.column = column

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        column = self.column if self.column in batch else ("path" if "path" in batch else None)
        if column is None:
            raise KeyError(f"the batch has no {self.column!r} column (columns: {', '.join(batch)}); "
                           f"pass column= naming the images, or a 'path' column of files")
        items = batch[column]
        images = [str(p) for p in items] if column == "path" else [np.asarray(x) for x in items]
        results = self.segmenter(images, **self.options) if images else []
        dtype = np.uint8 if len(self.segmenter.class_names) <= 256 and self.segmenter.mode != "multilabel" \
            else np.int64
        out = dict(batch)
        out["mask"] = [r.labels.astype(dtype) for r in results]
        out["areas"] = [json.dumps(r.areas()) for r in results]
        return out
