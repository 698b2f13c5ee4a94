"""Keypoints of instances: what a keypoint set is (names, flip maps, OKS sigmas, skeleton) and
how keypoints move with an augmented image.

Keypoints follow COCO (Lin et al. 2014) and torchvision's Keypoint R-CNN: per instance an
``(P, 3)`` array of ``x, y, v`` in continuous pixel coordinates (pixel ``i`` spans
``[i, i + 1)``, so its centre is ``i + 0.5``), ``v`` 0 = not labelled, 1 = labelled but not
visible, 2 = visible. A target holds them as ``"keypoints"`` ``(K, P, 3)`` float32.

A flip mirrors the image, so a point named for a side (``left_eye``) must swap with its
partner (``right_eye``): :class:`KeypointSpec` carries one index permutation per flip axis.
Any mirror changes handedness, so for a person both flips swap left and right; the
synthetic shapes' extreme points swap ``left``/``right`` in a horizontal flip and
``top``/``bottom`` in a vertical one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["COCO_PERSON_KEYPOINTS", "COCO_PERSON_SIGMAS", "SHAPE_KEYPOINTS", "KeypointSpec", "flip_keypoints",
           "mask_keypoints", "move_keypoints", "pairs_from_names", "shape_keypoint_spec"]

# The 17 COCO person keypoints, in the order of person_keypoints_*.json.
COCO_PERSON_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle")
# Per-keypoint OKS falloff sigmas of the COCO keypoint challenge (their 5000-image study), as pycocotools uses.
COCO_PERSON_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
                      0.087, 0.087, 0.089, 0.089)
# Keypoints of each synthetic shape (data.args.keypoints: true on synthetic_instances).
SHAPE_KEYPOINTS = ("centre", "left", "right", "top", "bottom")
SHAPE_SIGMA = 0.05  # a little tighter than a person's shoulder: the points are exact pixels


def pairs_from_names(names: list[str] | tuple[str, ...]) -> list[tuple[int, int]]:
    """Index pairs of names that differ only by ``left``/``right`` (``left_eye``, ``right_eye``)."""
    index = {n: i for i, n in enumerate(names)}
    pairs = []
    for i, name in enumerate(names):
        if "left" in name:
            partner = index.get(name.replace("left", "right"))
            if partner is not None:
                pairs.append((i, partner))
    return pairs


def _permutation(pairs: list, count: int, names: list[str], what: str) -> list[int]:
    perm = list(range(count))
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ConfigError(f"{what}: {pair!r} is not a pair; give [a, b] of keypoint names or indices")
        a, b = (names.index(p) if isinstance(p, str) and p in names else p for p in pair)
        if not all(isinstance(v, int) and 0 <= v < count for v in (a, b)):
            raise ConfigError(f"{what}: pair {pair!r} names no keypoint of {names}; use names or indices "
                              f"0..{count - 1}")
        perm[a], perm[b] = b, a
    return perm


@dataclass
class KeypointSpec:
    """A dataset's keypoint set.

    Attributes:
        names: one name per keypoint (``P`` of them).
        sigmas: OKS falloff per keypoint (COCO's 17 for people; :data:`SHAPE_SIGMA` for shapes).
        hflip, vflip: index permutation applied to the keypoint axis by a horizontal / vertical flip.
        skeleton: pairs of 0-based indices drawn as lines on overlays.
    """

    names: list[str]
    sigmas: list[float]
    hflip: list[int]
    vflip: list[int]
    skeleton: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        count = len(self.names)
        for key in ("sigmas", "hflip", "vflip"):
            if len(getattr(self, key)) != count:
                raise ConfigError(f"keypoint {key} has {len(getattr(self, key))} entries for {count} keypoints "
                                  f"{self.names}; give one per keypoint")
        if any(not s > 0 for s in self.sigmas):
            raise ConfigError(f"keypoint sigmas {self.sigmas} must all be > 0 (OKS divides by them)")

    @property
    def count(self) -> int:
        return len(self.names)

    @classmethod
    def build(cls, names: list[str], *, sigmas: list[float] | None = None, flip_pairs: list | None = None,
              skeleton: list | None = None, where: str = "keypoints") -> KeypointSpec:
        """From names: COCO's sigmas when the names are COCO's 17 person keypoints (else ``sigmas`` is
        required), flip pairs from ``left``/``right`` names unless ``flip_pairs`` is given (both flips
        use them: a mirror swaps sides)."""
        names = [str(n) for n in names]
        if sigmas is None:
            if tuple(names) != COCO_PERSON_KEYPOINTS:
                raise ConfigError(f"{where}: OKS sigmas are known for COCO's 17 person keypoints only, and these "
                                  f"{len(names)} are {names}; set data.args.keypoint_sigmas to {len(names)} numbers "
                                  f"(e.g. 0.05 each: the OKS falloff as a fraction of the object's scale)")
            sigmas = list(COCO_PERSON_SIGMAS)
        pairs = pairs_from_names(names) if flip_pairs is None else list(flip_pairs)
        perm = _permutation(pairs, len(names), names, f"{where} flip_pairs")
        return cls(names=names, sigmas=[float(s) for s in sigmas], hflip=perm, vflip=list(perm),
                   skeleton=[[int(a), int(b)] for a, b in (skeleton or [])])

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "sigmas": list(self.sigmas), "hflip": list(self.hflip),
                "vflip": list(self.vflip), "skeleton": [list(s) for s in self.skeleton]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeypointSpec:
        return cls(names=list(data["names"]), sigmas=list(data["sigmas"]), hflip=list(data["hflip"]),
                   vflip=list(data["vflip"]), skeleton=[list(s) for s in data.get("skeleton", [])])


def shape_keypoint_spec() -> KeypointSpec:
    """The synthetic shapes' 5 keypoints: mask centroid and the four extreme points."""
    return KeypointSpec(names=list(SHAPE_KEYPOINTS), sigmas=[SHAPE_SIGMA] * 5, hflip=[0, 2, 1, 3, 4],
                        vflip=[0, 1, 2, 4, 3], skeleton=[[0, 1], [0, 2], [0, 3], [0, 4]])


def mask_keypoints(masks: np.ndarray) -> np.ndarray:
    """:data:`SHAPE_KEYPOINTS` of ``(K, H, W)`` masks as ``(K, 5, 3)`` float32, visible (``v = 2``)
    except for empty masks.

    The centre is the centroid of the mask's pixel centres (off the mask for an occluded shape);
    ``left`` is the leftmost column's pixel nearest to that column's mean row, and so on. Both
    rules commute with flips, so a flip of the mask moves each point exactly onto its partner's
    position in the flipped mask.
    """
    out = np.zeros((len(masks), len(SHAPE_KEYPOINTS), 3), dtype=np.float32)
    for k, mask in enumerate(masks):
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            continue  # unlabelled (v = 0): make_target drops the empty instance anyway
        points = [(cols.mean(), rows.mean())]
        for pick in (cols == cols.min(), cols == cols.max(), rows == rows.min(), rows == rows.max()):
            points.append((_on_mask(cols[pick]), _on_mask(rows[pick])))
        out[k, :, :2] = np.asarray(points) + 0.5
        out[k, :, 2] = 2.0
    return out


def _on_mask(values: np.ndarray) -> float:
    """The value nearest to the mean of ``values``; the mean itself when two are equally near (a flip
    mirrors the values, and this rule with them)."""
    distance = np.abs(values - values.mean())
    return float(values[distance <= distance.min() + 1e-9].mean())


def flip_keypoints(keypoints: np.ndarray, *, size: int, axis: str, perm: list[int]) -> np.ndarray:
    """Mirror ``(K, P, 3)`` keypoints in an image of width (``axis="x"``) or height (``"y"``) ``size``
    and reorder the keypoint axis by ``perm`` (left and right swap names)."""
    out = keypoints[:, perm].copy()
    column = 0 if axis == "x" else 1
    labelled = out[..., 2] > 0
    out[..., column] = np.where(labelled, size - out[..., column], out[..., column])
    return out


def move_keypoints(keypoints: np.ndarray, *, scale: tuple[float, float], offset: tuple[float, float],
                   size: tuple[int, int]) -> np.ndarray:
    """``x * scale_x + offset_x`` (and y) for labelled points; points that leave the
    ``size`` = (width, height) image become unlabelled (``v = 0``, coordinates 0)."""
    out = keypoints.copy()
    labelled = out[..., 2] > 0
    out[..., 0] = out[..., 0] * scale[0] + offset[0]
    out[..., 1] = out[..., 1] * scale[1] + offset[1]
    inside = (out[..., 0] >= 0) & (out[..., 0] < size[0]) & (out[..., 1] >= 0) & (out[..., 1] < size[1])
    gone = ~(labelled & inside)
    out[gone] = 0.0
    return out
