"""Per-request memory budget: what decoding and segmenting an image will cost, known before it is decoded.

A 590-byte PNG can declare 2048 × 2048 pixels, and segmenting those pixels can cost a
gigabyte. The server reads the width and height from the header, estimates the bytes that
decode + inference will allocate, and refuses the request (HTTP 413) when the estimate is
over ``--max-memory-mb``, before it allocates anything.

The model's part is measured, not guessed: at startup the model runs on three small inputs
(64², 128², 256²) under :class:`PeakTensorBytes`, which records the peak bytes of the tensors
alive during the forward. ``a + b·p + c·p²`` (``p`` pixels after padding to the network
stride) is fitted through those three peaks, with ``a, b, c >= 0``; attention layers make
``c`` positive, convolutions leave it near 0. The rest (decoded pixels, the normalised input,
probabilities, TTA copies, sliding-window buffers, the label map) is counted from the tensor
shapes the pipeline makes. ``docs/serving.md`` writes the whole formula out.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..errors import ConfigError
from .uploads import RequestError

__all__ = ["MemoryBudget", "PeakTensorBytes", "fit_growth"]

MiB = 1024 * 1024
PROBE_SIDES = (64, 128, 256)
# cv2.imdecode of a 16-bit RGBA PNG holds 8 B/pixel, its uint8 conversion 4 and the RGB copy 3.
DECODE_BYTES_PER_PIXEL = 16
# the uint8 label map, the palette PNG's buffers and one RLE mask at a time (bool + Fortran copy).
RESPONSE_BYTES_PER_PIXEL = 4
TTA_SCALES = {"none": (1.0,), "flip": (1.0,), "flip+scales": (0.75, 1.0, 1.25)}
TTA_VARIANTS = {"none": 1, "flip": 2, "flip+scales": 6}
# The sum is raised by this much for what the formula leaves out (small tensors, allocator rounding).
MARGIN = 1.10
SLIDING_BATCH = 4  # tiles per forward in Segmenter's sliding window (its batch_size default)


class PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensors created inside this context and alive at the same time.

    Every ATen op's outputs are recorded by their storage (views and in-place results share
    an input's storage and are not counted again); a storage leaves the count once nothing
    refers to it. Tensors made before the context (weights, the input) are not counted.

        with torch.no_grad(), PeakTensorBytes() as meter:
            model(x)
        meter.peak  # bytes
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        seen = {_storage_id(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            self.current -= self._live.pop(key)[1]
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            key = _storage_id(t)
            if key is None or key in seen or key in self._live:
                continue
            storage = t.untyped_storage()
            self._live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def _storage_id(t: torch.Tensor) -> int | None:
    try:
        return StorageWeakRef(t.untyped_storage()).cdata
    except (RuntimeError, NotImplementedError):  # tensors without storage (meta, some subclasses)
        return None


def fit_growth(pixels: list[float], peaks: list[float]) -> tuple[float, float, float]:
    """``(a, b, c)`` with ``a, b, c >= 0`` and ``a + b·p + c·p² >= peak`` at every probe, through the
    two largest probes: the quadratic through all three when its coefficients are all >= 0, else
    the line through the two largest with ``a`` raised until every probe lies under it."""
    p = np.asarray(pixels, np.float64)
    m = np.asarray(peaks, np.float64)
    a, b, c = np.linalg.solve(np.stack([np.ones_like(p), p, p * p], 1), m)
    if min(a, b, c) >= 0:
        return float(a), float(b), float(c)
    b = max(0.0, (m[-1] - m[-2]) / (p[-1] - p[-2]))
    a = max(0.0, float(np.max(m - b * p)))
    return a, float(b), 0.0


@dataclass(frozen=True)
class _Curve:
    a: float
    b: float
    c: float
    multiple: int

    def __call__(self, height: float, width: float, batch: int = 1) -> float:
        m = self.multiple
        p = math.ceil(height / m) * m * math.ceil(width / m) * m
        return batch * (self.a + self.b * p + self.c * p * p)


def _tiles(size: int, tile: int, overlap: float) -> int:
    """Tiles along one axis, as the sliding window lays them out (the step is at most tile·(1 - overlap))."""
    if size <= tile:
        return 1
    return math.ceil((size - tile) / max(1, math.floor(tile * (1.0 - overlap)))) + 1


def _forward_peak(fn, x: torch.Tensor) -> int:
    with torch.no_grad(), PeakTensorBytes() as meter:
        out = fn(x)
        del out
    return meter.peak


class MemoryBudget:
    """Estimates one request's decode + inference bytes and refuses (413) those over ``limit_mb``.

    Args:
        segmenter: a :class:`~pixelwise.infer.segmenter.Segmenter` or an
            :class:`~pixelwise.serve.instance.InstanceSegmenter`; its model is probed once, here.
        limit_mb: the per-request budget in MiB (``--max-memory-mb``).
    """

    def __init__(self, segmenter: Any, limit_mb: int) -> None:
        self.limit = int(limit_mb) * MiB
        self.task = getattr(segmenter, "task", "semantic")
        self.classes = len(segmenter.class_names)
        config = getattr(segmenter.model, "config", {})
        self.in_channels = int(config.get("in_channels", 3))
        self.default_tile = getattr(segmenter, "tile", None)  # what a request without tile= runs with
        device = getattr(segmenter, "device", torch.device("cpu"))
        try:
            if self.task == "instance":
                self._init_instance(segmenter, config, device)
            else:
                self._init_semantic(segmenter, device)
        except Exception as err:  # a model that cannot run a small probe cannot serve either
            raise ConfigError(f"the memory probe of {config.get('name', type(segmenter.model).__name__)} failed "
                              f"({type(err).__name__}: {err}); check that the model runs on {device}") from err

    def _init_semantic(self, segmenter: Any, device: torch.device) -> None:
        model = segmenter.model
        # A plain function is PyTorch's model_function (device, autocast, channels_last); anything
        # else (an ONNX Runtime session) allocates where the meter cannot see: the PyTorch model
        # it was exported from stands in for it.
        fn = getattr(segmenter, "model_fn", None)
        run = fn if inspect.isfunction(fn) else (lambda x: model(x.to(device)))
        peaks = [_forward_peak(run, torch.randn(1, self.in_channels, s, s, device=device)) for s in PROBE_SIDES]
        self.probes = dict(zip(PROBE_SIDES, peaks))
        self.act = _Curve(*fit_growth([s * s for s in PROBE_SIDES], peaks),
                          multiple=int(getattr(model, "pad_multiple", 1) or 1))
        self.crf_per_pixel = self._crf_per_pixel()

    def _crf_per_pixel(self) -> float:
        from ..postprocess.crf import dense_crf

        rng = np.random.default_rng(0)
        worst = 0.0
        for side in (48, 96):  # noise: the most distinct colours, so the largest permutohedral lattice
            rgb = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            probs = torch.softmax(torch.randn(self.classes, side, side), 0)
            with torch.no_grad(), PeakTensorBytes() as meter:
                dense_crf(rgb, probs, iterations=2)
            worst = max(worst, meter.peak / (side * side))
        return 1.25 * worst  # lattice occupancy varies with the image; keep a margin

    def _init_instance(self, segmenter: Any, config: dict, device: torch.device) -> None:
        from ..infer.instance import detect_instances

        low = int(config.get("min_size") or 800)
        high = int(config.get("max_size") or 1333)
        probe = np.random.default_rng(0).integers(0, 256, (low, high, 3), dtype=np.uint8)
        with torch.no_grad(), PeakTensorBytes() as meter:
            detect_instances(segmenter.model, probe, device=device, amp=getattr(segmenter, "amp", "none"))
        self.probes = {f"{low}x{high}": meter.peak}
        self.detector_bytes = float(meter.peak)  # the detector resizes every image to this size range
        self.detections = int(config.get("box_detections_per_img") or 100)

    def estimate(self, height: int, width: int, *, tile: int | None = None, overlap: float = 0.25,
                 tta: str = "none", crf: bool = False) -> int:
        """Bytes that decoding and segmenting an ``height`` × ``width`` image will allocate at most."""
        p = float(height) * width
        decode = DECODE_BYTES_PER_PIXEL * p
        response = RESPONSE_BYTES_PER_PIXEL * p + 8 * p  # and the int64 argmax
        if self.task == "instance":
            # masks (D, H, W) float32 at image size, the thresholded bool copy, and the two (D, H, W)
            # float32 buffers of instances_to_semantic.
            per_detection = 4 + 1 + 1 + 4 + 4
            return int(MARGIN * (decode + 4 * 3 * p + self.detector_bytes + self.detections * per_detection * p
                                 + response))
        c, ci = self.classes, self.in_channels
        x = 4 * ci * p + (p if ci == 1 else 0)
        variants = TTA_VARIANTS[tta]
        worst = 0.0
        for s in TTA_SCALES[tta]:
            h, w = max(1, round(height * s)), max(1, round(width * s))
            ps = float(h) * w
            for flipped in ((False, True) if tta != "none" else (False,)):
                # the resized and / or flipped input (both, for a moment, when both apply)
                copy = 4 * ci * ps * ((s != 1.0) + flipped)
                back = 4 * c * ps * flipped + 4 * c * p * (s != 1.0)  # logits flipped back, resized back
                if tile is None:
                    net = self.act(h, w)  # the forward's own peak, its logits included
                    after = back + 4 * c * p  # softmax makes a new tensor
                else:
                    t = tile  # every tile is tile × tile; a shorter image is padded up to it
                    n = min(SLIDING_BATCH, _tiles(h, t, overlap) * _tiles(w, t, overlap))
                    net = self.act(t, t, n) + n * 4 * (ci + 2 * c) * t * t  # stacked tiles, weighted outputs
                    after = 4 * c * max(h, t) * max(w, t) + back  # the output buffer (softmax runs in place)
                worst = max(worst, copy + net + after)
        total = 4 * c * p if variants > 1 else 0.0  # the running sum of the variants
        refine = self.crf_per_pixel * p if crf else 0.0
        return int(MARGIN * (decode + x + worst + total + refine + response))

    def check(self, height: int, width: int, *, tile: int | None = None, overlap: float = 0.25,
              tta: str = "none", crf: bool = False) -> int:
        """The estimate, or :class:`RequestError` 413 ``over_memory_budget`` when it is over the limit."""
        need = self.estimate(height, width, tile=tile, overlap=overlap, tta=tta, crf=crf)
        if need <= self.limit:
            return need
        advice = "resize the image"
        if self.task == "semantic":
            cost = {t: self.estimate(height, width, tile=t, overlap=overlap, tta=tta, crf=crf) for t in (1024, 512, 256)
                    if t < max(height, width)}
            fits = [t for t, bytes_ in cost.items() if bytes_ <= self.limit]
            if fits and tile is None:
                advice = f"send tile={fits[0]} (about {cost[fits[0]] / MiB:.0f} MiB), or resize the image"
            if tta != "none" or crf:
                advice += ", or drop tta/crf"
        raise RequestError(413, "over_memory_budget",
                           f"segmenting this {width}×{height} image would take about {need / MiB:.0f} MiB; the "
                           f"per-request limit is {self.limit / MiB:.0f} MiB (--max-memory-mb); {advice}")

    def largest_side(self) -> int:
        """The largest ``s`` for which an ``s`` × ``s`` image with the default options fits the limit
        (0: none does). The estimate grows with the side, so a bisection finds it."""
        tile = self.default_tile if self.task == "semantic" else None

        def fits(side: int) -> bool:
            return self.estimate(side, side, tile=tile) <= self.limit

        if not fits(1):
            return 0
        low, high = 1, 2
        while fits(high) and high < 2**20:
            low, high = high, high * 2
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        return low

    def describe(self) -> dict[str, Any]:
        """The measured model figures, for the model card."""
        out: dict[str, Any] = {"limit_mb": self.limit // MiB, "probe_peak_bytes": self.probes,
                               "largest_square_side": self.largest_side()}
        if self.task == "semantic":
            out.update(bytes_per_pixel=round(self.act.b, 1), fixed_bytes=round(self.act.a),
                       quadratic=self.act.c, crf_bytes_per_pixel=round(self.crf_per_pixel, 1))
        return out
