"""What goes over the wire: the response schemas (OpenAPI), the request body description, the
label-map encodings (palette PNG, COCO RLE) and colour strings."""

from __future__ import annotations

import base64
import io
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel

from ..data.rle import coco_rle

__all__ = ["ERROR_RESPONSES", "REQUEST_BODY", "SegmentResponse", "ErrorResponse", "png_base64", "rle", "hex_color"]

IMAGE_BODY = {"type": "string", "format": "binary"}
REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {"image": IMAGE_BODY},
                                           "required": ["image"]}},
        "application/octet-stream": {"schema": IMAGE_BODY},
        "image/png": {"schema": IMAGE_BODY},
        "image/jpeg": {"schema": IMAGE_BODY},
    },
}


class ClassArea(BaseModel):
    id: int
    name: str
    color: str
    pixels: int
    fraction: float


class EncodedMask(BaseModel):
    format: Literal["png"] = "png"
    encoding: Literal["base64"] = "base64"
    data: str


class ClassRle(BaseModel):
    id: int
    name: str
    size: list[int]
    counts: str


class MaskRle(BaseModel):
    size: list[int]
    counts: str


class InstanceItem(BaseModel):
    id: int
    class_id: int
    class_name: str
    score: float
    box: list[float]
    area: int
    color: str
    rle: MaskRle
    keypoints: list[float] | None = None  # [x1, y1, score1, ...], keypoint models only


class SegmentResponse(BaseModel):
    width: int
    height: int
    classes: list[ClassArea]
    mask: EncodedMask | None = None
    rle: list[ClassRle] | None = None
    instances: list[InstanceItem] | None = None
    options: dict[str, Any]
    timing_ms: dict[str, float]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


ERROR_RESPONSES = {status: {"model": ErrorResponse}
                   for status in (400, 401, 403, 404, 408, 413, 415, 422, 500, 503, 504)}


def png_base64(labels: np.ndarray, palette: np.ndarray) -> str:
    """Labels as a palette PNG (browsers show the class colours directly), base64."""
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), np.uint8)
    flat[: min(256, len(palette))] = palette[:256]
    img.putpalette(flat.ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def rle(labels: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    classes = np.unique(labels)
    encoded = coco_rle(labels[None] == classes[:, None, None])
    out = []
    for cls, enc in zip(classes, encoded):
        out.append({"id": int(cls), "name": names[int(cls)], "size": enc["size"], "counts": enc["counts"]})
    return out


def hex_color(color: np.ndarray) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in color[:3])
