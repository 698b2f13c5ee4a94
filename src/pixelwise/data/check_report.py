"""The dataset checker's report: problems, class statistics, weights, heuristics, table, JSON.

Class weights (both computed from labelled pixels, i.e. without ``ignore_index``):

- median-frequency balancing, Eigen & Fergus, "Predicting Depth, Surface Normals and
  Semantic Labels with a Common Multi-Scale Convolutional Architecture" (ICCV 2015):
  ``w_c = median(freq) / freq_c`` with ``freq_c`` = pixels of class c / labelled pixels of
  the images in which c occurs (the weighting SegNet uses);
- inverse log, Paszke et al., "ENet" (2016): ``w_c = 1 / ln(1.02 + p_c)`` with ``p_c`` the
  share of class c among all labelled pixels; bounded by 1/ln(1.02) ~ 50.5.

Classes that never occur get weight 0 in both (they contribute nothing to a loss anyway).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EXAMPLES = 5  # files named per bad label value
SAMPLE_PIXELS = 4096  # pixels per image kept for the raw-mode percentile estimate
PERCENTILES = (0.5, 99.5)


@dataclass
class RawStats:
    """Per-channel statistics of stored pixel values (``data.image_mode: raw``), mergeable.

    Mean and variance are combined with Chan et al.'s pairwise update (count, mean, M2),
    stable where a sum of squares of 16-bit values would lose digits; the percentiles come
    from an evenly strided subsample of every image (``SAMPLE_PIXELS`` each).
    """

    dtype: str
    channels: int
    count: int
    mean: np.ndarray
    m2: np.ndarray
    low: np.ndarray
    high: np.ndarray
    sample: np.ndarray  # (n, C) float64

    @classmethod
    def of(cls, image: np.ndarray) -> RawStats:
        flat = image.reshape(-1, image.shape[2])
        values = flat.astype(np.float64)
        mean = values.mean(axis=0) if len(values) else np.zeros(flat.shape[1])
        stride = max(1, len(values) // SAMPLE_PIXELS)
        return cls(dtype=str(image.dtype), channels=int(image.shape[2]), count=len(values), mean=mean,
                   m2=((values - mean) ** 2).sum(axis=0), low=values.min(axis=0) if len(values) else mean,
                   high=values.max(axis=0) if len(values) else mean, sample=values[::stride].copy())

    def merge(self, other: RawStats) -> None:
        """Fold ``other`` (same channel count) into this one."""
        n = self.count + other.count
        if n:
            delta = other.mean - self.mean
            self.m2 = self.m2 + other.m2 + delta ** 2 * self.count * other.count / n
            self.mean = self.mean + delta * other.count / n
        self.count = n
        self.low, self.high = np.minimum(self.low, other.low), np.maximum(self.high, other.high)
        self.sample = np.concatenate([self.sample, other.sample])
        if other.dtype != self.dtype and other.dtype not in self.dtype.split("/"):
            self.dtype = f"{self.dtype}/{other.dtype}"

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1))

    def to_dict(self) -> dict:
        low_p, high_p = np.percentile(self.sample, PERCENTILES, axis=0) if len(self.sample) else (self.low, self.high)
        return {"dtype": self.dtype, "channels": self.channels, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "min": self.low.tolist(), "max": self.high.tolist(),
                "percentiles": {str(PERCENTILES[0]): np.atleast_1d(low_p).tolist(),
                                str(PERCENTILES[1]): np.atleast_1d(high_p).tolist()}}


@dataclass
class Problem:
    """One finding: ``severity`` is ``"error"`` (training would fail or be wrong) or ``"warning"``."""

    severity: str
    kind: str
    path: str
    message: str


@dataclass
class PairStats:
    """What one image/mask pair contributes to its split's report.

    ``labels`` maps each mask value to its pixel count; ``channel_hist`` is the ``(3, 256)``
    histogram of the RGB image values (exact integer sums for the mean and std).
    """

    name: str
    problems: list[Problem] = field(default_factory=list)
    labels: dict[int, int] = field(default_factory=dict)
    channel_hist: np.ndarray | None = None
    colours: list[tuple[int, ...]] | None = None
    raw: RawStats | None = None


def median_frequency_weights(class_pixels: np.ndarray, present_pixels: np.ndarray) -> np.ndarray:
    """Eigen & Fergus (2015) median-frequency balancing; 0 for classes that never occur.

    Args:
        class_pixels: ``(K,)`` pixels of each class.
        present_pixels: ``(K,)`` labelled pixels of the images in which each class occurs.
    """
    class_pixels = np.asarray(class_pixels, np.float64)
    present = class_pixels > 0
    weights = np.zeros_like(class_pixels)
    if present.any():
        freq = class_pixels[present] / np.asarray(present_pixels, np.float64)[present]
        weights[present] = np.median(freq) / freq
    return weights


def inverse_log_weights(class_pixels: np.ndarray, c: float = 1.02) -> np.ndarray:
    """ENet (Paszke et al. 2016) weights ``1 / ln(c + p_class)``; 0 for classes that never occur."""
    class_pixels = np.asarray(class_pixels, np.float64)
    total = class_pixels.sum()
    if total == 0:
        return np.zeros_like(class_pixels)
    return np.where(class_pixels > 0, 1.0 / np.log(c + class_pixels / total), 0.0)


@dataclass
class SplitReport:
    """Problems and statistics of one split, accumulated pair by pair with :meth:`add`."""

    split: str
    num_classes: int
    ignore_index: int
    pairs: int = 0
    problems: list[Problem] = field(default_factory=list)
    labels: dict[int, int] = field(default_factory=dict)        # value -> pixels, every value seen
    images_with: dict[int, int] = field(default_factory=dict)   # value -> images containing it
    present_pixels: dict[int, int] = field(default_factory=dict)  # value -> labelled pixels of those images
    bad_files: dict[int, list[str]] = field(default_factory=dict)  # out-of-range value -> first files
    channel_hist: np.ndarray = field(default_factory=lambda: np.zeros((3, 256), np.int64))
    colours: set = field(default_factory=set)
    colour_masks: int = 0
    raw: RawStats | None = None  # stored-value statistics of the images with the usual channel count
    raw_by_channels: dict[int, RawStats] = field(default_factory=dict)
    names_by_channels: dict[int, list[str]] = field(default_factory=dict)

    def add(self, stats: PairStats) -> None:
        """Fold one pair's :class:`~pixelwise.data.check.PairStats` into the totals."""
        self.pairs += 1
        self.problems.extend(stats.problems)
        if stats.raw is not None:
            found = self.raw_by_channels.get(stats.raw.channels)
            if found is None:
                self.raw_by_channels[stats.raw.channels] = stats.raw
            else:
                found.merge(stats.raw)
            self.names_by_channels.setdefault(stats.raw.channels, []).append(stats.name)
        if stats.channel_hist is not None:
            self.channel_hist += stats.channel_hist
        if stats.colours is not None:
            self.colour_masks += 1
            self.colours.update(stats.colours)
        labelled = sum(n for v, n in stats.labels.items() if v != self.ignore_index)
        bad_path = next((p.path for p in stats.problems if p.kind == "label_out_of_range"), stats.name)
        for value, count in stats.labels.items():
            self.labels[value] = self.labels.get(value, 0) + count
            self.images_with[value] = self.images_with.get(value, 0) + 1
            self.present_pixels[value] = self.present_pixels.get(value, 0) + labelled
            if not self._valid(value):
                self.bad_files.setdefault(value, []).append(bad_path)

    def finish(self) -> None:
        """Split-level problems, once every pair is in: masks saved black/white (0/255), images
        whose channel count differs from the split's usual one."""
        if self.raw_by_channels:
            usual = max(self.names_by_channels, key=lambda c: len(self.names_by_channels[c]))
            self.raw = self.raw_by_channels[usual]
            for channels, names in sorted(self.names_by_channels.items()):
                if channels != usual:
                    shown = ", ".join(names[:EXAMPLES]) + (", ..." if len(names) > EXAMPLES else "")
                    self.problems.append(Problem(
                        "error", "channel_count", names[0],
                        f"{len(names)} image(s) of split {self.split!r} have {channels} channel(s) ({shown}) but "
                        f"{len(self.names_by_channels[usual])} have {usual}: every image needs the same channels, "
                        f"in the same order; re-export them or remove them"))
        if (self.num_classes >= 2 and self.ignore_index == 255 and self.labels and 255 in self.labels
                and set(self.labels) <= {0, 255}):
            self.problems.append(Problem(
                "error", "binary_255", self.split,
                f"every mask of split {self.split!r} holds only 0 and 255 (a binary mask saved black/white), and "
                f"255 is ignore_index: every foreground pixel would be ignored and the model would learn only "
                f"background. Save the foreground as 1 (mask // 255), or set data.ignore_index to a value the "
                f"masks do not use and remap 255 to 1"))

    def _valid(self, value: int) -> bool:
        return 0 <= value < self.num_classes or value == self.ignore_index

    @property
    def class_pixels(self) -> np.ndarray:
        """``(K,)`` int64 pixel count of each class."""
        return np.array([self.labels.get(c, 0) for c in range(self.num_classes)], np.int64)

    @property
    def images_per_class(self) -> np.ndarray:
        """``(K,)`` number of masks in which each class occurs."""
        return np.array([self.images_with.get(c, 0) for c in range(self.num_classes)], np.int64)

    def weights(self) -> dict[str, list[float]]:
        """``{"median_frequency": [...], "inverse_log": [...]}``, one weight per class."""
        present = np.array([self.present_pixels.get(c, 0) for c in range(self.num_classes)], np.int64)
        return {"median_frequency": median_frequency_weights(self.class_pixels, present).tolist(),
                "inverse_log": inverse_log_weights(self.class_pixels).tolist()}

    def mean_std(self) -> tuple[list[float], list[float]] | None:
        """Per-channel RGB mean and (population) std on the 0..1 scale, from exact integer sums."""
        hist = self.channel_hist
        count = int(hist[0].sum())
        if count == 0:
            return None
        values = np.arange(256, dtype=np.int64)
        # Integer sums are exact; only the final division and subtraction are rounded.
        total = [int(s) for s in (hist * values).sum(axis=1)]
        squares = [int(s) for s in (hist * values * values).sum(axis=1)]
        mean = [t / count / 255.0 for t in total]
        # n^2 var = n*sum(x^2) - sum(x)^2 computed in Python integers: no cancellation.
        std = [math.sqrt((count * q - t * t) / count ** 2) / 255.0 for t, q in zip(total, squares)]
        return mean, std

    def suggestions(self) -> list[str]:
        """Heuristic advice: reduce_zero_label, binary 0/255 masks, colour masks, unseen classes."""
        out = []
        k, bad = self.num_classes, {v for v in self.labels if not self._valid(v)}
        if k == 1 and bad == {1}:
            out.append("num_classes is 1 but the masks hold 0 and 1: background and one class are "
                       "num_classes: 2 (softmax over background and foreground)")
        elif self.pairs and self.images_with.get(0, 0) >= 0.9 * self.pairs and k in bad and max(bad) == k:
            out.append(f"labels run 1..{k} and 0 is in {self.images_with[0]}/{self.pairs} masks: 0 looks like "
                       f"'void/other' and the classes are shifted by one; set data.args.reduce_zero_label: true "
                       f"(0 -> ignore, c -> c-1) if the reader supports it, or remap the masks")
        if self.labels and set(self.labels) <= {0, 255} and 255 in self.labels and self.ignore_index != 255:
            out.append("masks hold only the values 0 and 255 (a binary mask saved black/white): 255 is not a "
                       "class index; save the foreground as 1 (mask // 255)")
        if self.colour_masks:
            shown = ", ".join(str(c) for c in sorted(self.colours)[:12])
            out.append(f"{self.colour_masks} mask(s) are RGB colour images with {len(self.colours)} distinct "
                       f"colour(s) ({shown}{', ...' if len(self.colours) > 12 else ''}): a palette conversion is "
                       f"needed, map each colour to its class index and save index/palette PNGs")
        absent = [c for c in range(k) if self.labels.get(c, 0) == 0]
        if self.pairs and absent:
            out.append(f"class(es) {absent} never occur in split {self.split!r}")
        return out

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def to_dict(self, names: list[str]) -> dict:
        """JSON-serialisable summary (plain lists, ints and floats)."""
        pixels, total = self.class_pixels, int(self.class_pixels.sum())
        weights, ms = self.weights(), self.mean_std()
        bad = {str(v): {"pixels": self.labels[v], "files": len(self.bad_files[v]),
                        "examples": self.bad_files[v][:EXAMPLES]} for v in sorted(self.bad_files)}
        return {
            "split": self.split, "pairs": self.pairs, "errors": len(self.errors),
            "warnings": len(self.problems) - len(self.errors),
            "problems": [vars(p) for p in self.problems],
            "classes": [{"index": c, "name": names[c], "pixels": int(pixels[c]),
                         "frequency": pixels[c] / total if total else 0.0,
                         "images": int(self.images_per_class[c]),
                         "weight_median_frequency": weights["median_frequency"][c],
                         "weight_inverse_log": weights["inverse_log"][c]} for c in range(self.num_classes)],
            "ignore_pixels": self.labels.get(self.ignore_index, 0),
            "labels_out_of_range": bad,
            "mean": ms[0] if ms else None, "std": ms[1] if ms else None,
            "raw": self.raw.to_dict() if self.raw is not None else None,
            "suggestions": self.suggestions(),
        }


@dataclass
class CheckReport:
    """The checker's result over several splits; ``ok`` is False when any error was found."""

    splits: list[SplitReport]

    def __post_init__(self) -> None:
        # Classes the validation split has and training never shows: the model cannot learn them.
        if len(self.splits) >= 2 and self.splits[0].pairs:
            train, k = self.splits[0], self.splits[0].num_classes
            for other in self.splits[1:]:
                unseen = [c for c in range(k) if other.labels.get(c, 0) and not train.labels.get(c, 0)]
                if unseen:
                    other.problems.append(Problem(
                        "warning", "class_not_in_train", other.split,
                        f"class(es) {unseen} occur in split {other.split!r} but never in {train.split!r}: the "
                        f"model cannot learn them, and their IoU will be 0; move some of those images to "
                        f"{train.split!r}"))

    @property
    def ok(self) -> bool:
        return not any(s.errors for s in self.splits)

    def to_dict(self, names: list[str] | None = None) -> dict:
        if names is None:
            names = [f"class_{i}" for i in range(self.splits[0].num_classes)] if self.splits else []
        return {"ok": self.ok, "splits": [s.to_dict(names) for s in self.splits]}

    def write_json(self, path: str | Path, names: list[str] | None = None) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` (parent folders created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(names), indent=2) + "\n")
        return path

    def format(self, names: list[str] | None = None, max_problems: int = 20) -> str:
        """A readable text report: problems, then classes x (pixels %, weights, images) per split."""
        lines: list[str] = []
        for split in self.splits:
            d = split.to_dict(names or [f"class_{i}" for i in range(split.num_classes)])
            lines.append(f"== split {split.split!r}: {d['pairs']} pairs, {d['errors']} error(s), "
                         f"{d['warnings']} warning(s)")
            for p in split.problems[:max_problems]:
                lines.append(f"  {p.severity.upper():7s} {p.kind}: {p.message}")
            if len(split.problems) > max_problems:
                lines.append(f"  ... {len(split.problems) - max_problems} more (see the JSON report)")
            if not split.pairs:
                lines.append("  no pairs were read from this split: no class statistics")
                continue
            for value, info in d["labels_out_of_range"].items():
                lines.append(f"  label {value}: {info['pixels']} pixels in {info['files']} file(s), e.g. "
                             + ", ".join(Path(f).name for f in info["examples"]))
            width = max(5, *(len(c["name"]) for c in d["classes"]))
            lines.append(f"  {'class':<{width}}  {'pixels %':>8}  {'w medfreq':>9}  {'w enet':>7}  {'images':>6}")
            for c in d["classes"]:
                lines.append(f"  {c['name']:<{width}}  {100 * c['frequency']:8.3f}  "
                             f"{c['weight_median_frequency']:9.3f}  {c['weight_inverse_log']:7.3f}  {c['images']:6d}")
            if d["mean"] is not None:
                lines.append("  image mean " + ", ".join(f"{v:.4f}" for v in d["mean"]) + "  std "
                             + ", ".join(f"{v:.4f}" for v in d["std"]) + " (RGB, 0..1: data.mean / data.std)")
            if d["raw"] is not None:
                r = d["raw"]

                def nums(values: list[float]) -> str:
                    return ", ".join(f"{v:.6g}" for v in values)

                low, high = (r["percentiles"][str(p)] for p in PERCENTILES)
                lines += [f"  images: {r['channels']} channel(s), stored as {r['dtype']}, values {nums(r['min'])} .. "
                          f"{nums(r['max'])} (per channel)",
                          f"  percentiles {PERCENTILES[0]} / {PERCENTILES[1]}: [{nums(low)}] / [{nums(high)}] "
                          f"(data.clip, or data.clip_percentiles: [{PERCENTILES[0]}, {PERCENTILES[1]}])",
                          "  stored-value statistics for data.normalize: dataset:",
                          f"    data.mean: [{nums(r['mean'])}]", f"    data.std: [{nums(r['std'])}]"]
            lines += [f"  hint: {s}" for s in d["suggestions"]]
        lines.append("dataset OK" if self.ok else "dataset has ERRORS (exit status 1)")
        return "\n".join(lines)
