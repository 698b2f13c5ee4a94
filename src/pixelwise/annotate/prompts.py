"""What a user gives to ask for a proposal: a box, clicks, scribbles; checked against the image.

A prompt is in image pixel coordinates (x to the right, y down, origin at the top-left
corner of the top-left pixel). A box is ``[x0, y0, x1, y1]`` with exclusive ``x1, y1``
(``mask[y0:y1, x0:x1]``), the convention of :mod:`pixelwise.recipes.weak.boxes`. A click is a point
``(x, y)`` marked positive (on the object) or negative (not on it); a scribble is a
polyline of such points with a width, drawn as a stroke.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..errors import DataError

__all__ = ["Click", "Scribble", "Prompt", "MAX_POINTS"]

# More points than a person clicks; bounds the work one request can ask for.
MAX_POINTS = 2048


@dataclass(frozen=True)
class Click:
    x: float
    y: float
    positive: bool = True


@dataclass(frozen=True)
class Scribble:
    points: tuple[tuple[float, float], ...]
    positive: bool = True
    width: int = 3


@dataclass(frozen=True)
class Prompt:
    """A box and/or clicks and/or scribbles for the object of class ``class_id``.

    Build it with :meth:`parse`, which checks every coordinate against the image size.
    """

    class_id: int
    box: tuple[int, int, int, int] | None = None
    clicks: tuple[Click, ...] = ()
    scribbles: tuple[Scribble, ...] = field(default=())

    @classmethod
    def parse(cls, body: dict, *, height: int, width: int, num_classes: int) -> Prompt:
        """A prompt from a request's JSON ``body`` (see docs/annotate.md); :class:`DataError` names what
        is wrong (a client's 422)."""
        class_id = body.get("class_id", 1)
        if not isinstance(class_id, int) or isinstance(class_id, bool) or not 1 <= class_id < num_classes:
            raise DataError(f"class_id {class_id!r} is not a foreground class of this project; use 1..{num_classes - 1}"
                            f" (0 is the background)")
        box = body.get("box")
        if box is not None:
            if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_number(v) for v in box):
                raise DataError(f"box {box!r} must be [x0, y0, x1, y1] in pixels")
            x0, y0, x1, y1 = (int(round(float(v))) for v in box)
            x0, x1 = sorted((x0, x1))
            y0, y1 = sorted((y0, y1))
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
            if x1 - x0 < 2 or y1 - y0 < 2:
                raise DataError(f"box {list(box)} covers less than 2x2 pixels of the {width}x{height} image; draw it "
                                f"over the object")
            box = (x0, y0, x1, y1)
        clicks = tuple(_click(c, height, width) for c in _list(body, "points"))
        scribbles = tuple(_scribble(s, height, width) for s in _list(body, "scribbles"))
        if sum(len(s.points) for s in scribbles) + len(clicks) > MAX_POINTS:
            raise DataError(f"the prompt has more than {MAX_POINTS} points; simplify the scribbles")
        prompt = cls(class_id=class_id, box=box, clicks=clicks, scribbles=scribbles)
        if box is None and not prompt.positives_given():
            raise DataError("a prompt needs a box or at least one positive click or scribble")
        return prompt

    def positives_given(self) -> bool:
        return any(c.positive for c in self.clicks) or any(s.positive for s in self.scribbles)

    def marks(self, height: int, width: int, *, positive: bool) -> np.ndarray:
        """``(H, W)`` bool: the pixels under the positive (or negative) clicks and scribbles."""
        out = np.zeros((height, width), np.uint8)
        for c in self.clicks:
            if c.positive == positive:
                cv2.circle(out, (int(c.x), int(c.y)), 1, 1, thickness=-1)
        for s in self.scribbles:
            if s.positive == positive:
                pts = np.asarray(s.points, np.float64).astype(np.int32).reshape(-1, 1, 2)
                cv2.polylines(out, [pts], False, 1, thickness=max(1, s.width))
                if len(s.points) == 1:
                    cv2.circle(out, tuple(int(v) for v in s.points[0]), max(1, s.width // 2), 1, thickness=-1)
        return out.astype(bool)

    def points(self, *, limit: int = 16) -> list[tuple[float, float, bool]]:
        """Clicks, then up to ``limit`` points sampled along the scribbles: ``(x, y, positive)``."""
        out = [(c.x, c.y, c.positive) for c in self.clicks]
        along = [(x, y, s.positive) for s in self.scribbles for x, y in s.points]
        if along:
            step = max(1, len(along) // max(1, limit - len(out)))
            out += along[::step]
        return out[:max(limit, len(self.clicks))]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _list(body: dict, key: str) -> list:
    value = body.get(key) or []
    if not isinstance(value, list):
        raise DataError(f"{key!r} must be a list, got {type(value).__name__}")
    return value


def _inside(x, y, height: int, width: int, what: str) -> tuple[float, float]:
    if not (_number(x) and _number(y)) or not (0 <= x < width and 0 <= y < height):
        raise DataError(f"{what} ({x!r}, {y!r}) is outside the {width}x{height} image")
    return float(x), float(y)


def _click(item, height: int, width: int) -> Click:
    if not isinstance(item, dict) or "x" not in item or "y" not in item:
        raise DataError(f"point {item!r} must be {{\"x\": X, \"y\": Y, \"positive\": true|false}}")
    x, y = _inside(item["x"], item["y"], height, width, "point")
    return Click(x, y, bool(item.get("positive", True)))


def _scribble(item, height: int, width: int) -> Scribble:
    if not isinstance(item, dict) or not isinstance(item.get("points"), list) or not item["points"]:
        raise DataError(f"scribble {str(item)[:80]!r} must be {{\"points\": [[x, y], ...], \"positive\": true|false, "
                        f"\"width\": W}}")
    points = []
    for p in item["points"]:
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise DataError(f"scribble point {p!r} must be [x, y]")
        points.append(_inside(p[0], p[1], height, width, "scribble point"))
    width_px = item.get("width", 3)
    if not isinstance(width_px, int) or isinstance(width_px, bool) or not 1 <= width_px <= 256:
        raise DataError(f"scribble width {width_px!r} must be a whole number of pixels, 1..256")
    return Scribble(tuple(points), bool(item.get("positive", True)), width_px)
