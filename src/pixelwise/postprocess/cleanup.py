"""Connected-component cleanup of label maps: small components, holes, largest component.

Segmentation networks leave speckles (a few pixels of a wrong class) and pinholes; the
usual remedy is morphological post-processing on connected components (e.g. the nnU-Net
"keep the largest component" step). Every function takes a label map ``(H, W)`` or a
batch ``(N, H, W)`` of integers, as a NumPy array or a tensor, and returns the same type,
dtype, shape and device. Pixels equal to ``ignore_index`` are never changed, never form
components, and never serve as replacement labels.

Removed pixels take the label they border most unless ``fill_label`` is given: all
removed pixels of one call are grouped into connected regions (whatever their class, so
a speck inside a removed speck goes with it), and each region takes the most frequent
label among the pixels just outside it, ties going to the smaller label. A region with
nothing around it to take a label from (it covers the whole image) is kept.

Connectivity: ``8`` (default) joins diagonal neighbours into one component, ``4`` does
not. Holes use the complementary connectivity (a hole of an 8-connected region is a
4-connected set of other pixels), the pairing under which "inside" is well defined.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from ..errors import PixelwiseError

__all__ = ["clean_mask", "fill_holes", "keep_largest_component", "remove_small_components"]

_STRUCTURES = {4: ndimage.generate_binary_structure(2, 1), 8: ndimage.generate_binary_structure(2, 2)}


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in _STRUCTURES:
        raise PixelwiseError(f"cleanup: connectivity must be 4 or 8, got {connectivity}")
    return _STRUCTURES[connectivity]


def _to_numpy(mask: Tensor | np.ndarray) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if array.ndim not in (2, 3) or not np.issubdtype(array.dtype, np.integer):
        raise PixelwiseError(f"cleanup: expects an integer label map (H, W) or batch (N, H, W), got "
                             f"{array.dtype} of shape {array.shape}; take the argmax of the logits first")
    return array.astype(np.int64, copy=True)


def _like(result: np.ndarray, mask: Tensor | np.ndarray) -> Tensor | np.ndarray:
    if isinstance(mask, Tensor):
        return torch.from_numpy(result).to(device=mask.device, dtype=mask.dtype)
    return result.astype(np.asarray(mask).dtype, copy=False)


def _batched(mask: Tensor | np.ndarray, one) -> Tensor | np.ndarray:
    """Apply ``one(labels (H, W) int64, in place)`` to every map of ``mask``."""
    labels = _to_numpy(mask)
    for plane in labels.reshape(-1, *labels.shape[-2:]):
        one(plane)
    return _like(labels, mask)


def _classes(labels: np.ndarray, classes: Iterable[int] | None, skip: tuple) -> list[int]:
    if classes is not None:
        return [int(c) for c in classes]
    return [int(c) for c in np.unique(labels) if c not in skip]


def _small_pixels(labels: np.ndarray, cls: int, structure: np.ndarray, *, min_size: int | None) -> np.ndarray:
    """Pixels of the components of ``cls`` below ``min_size`` pixels, or (``None``) of all
    but its largest component (the first in scan order on a tie, so it is deterministic)."""
    components, count = ndimage.label(labels == cls, structure=structure)
    if count == 0:
        return np.zeros(labels.shape, dtype=bool)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    if min_size is None:
        drop = np.ones(count + 1, dtype=bool)
        drop[int(sizes[1:].argmax()) + 1] = False
    else:
        drop = sizes < min_size
    drop[0] = False
    return drop[components]


def _absorb(labels: np.ndarray, removed: np.ndarray, structure: np.ndarray, fill_label: int | None,
            ignore_index: int | None) -> None:
    """Relabel the ``removed`` pixels in place.

    Removed pixels are grouped into connected regions regardless of their class, so a
    speck inside another removed speck goes with it; each region takes the most frequent
    label just outside it (ties: the smaller label).
    """
    if not removed.any():
        return
    if fill_label is not None:
        labels[removed] = fill_label
        return
    groups, _ = ndimage.label(removed, structure=structure)
    for index, box in enumerate(ndimage.find_objects(groups), start=1):
        # One pixel of frame so that the ring around the region fits in the window.
        box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, labels.shape))
        window, inside = labels[box], groups[box] == index
        ring = ndimage.binary_dilation(inside, structure=structure) & ~inside
        around = window[ring]
        if ignore_index is not None:
            around = around[around != ignore_index]
        around = around[around >= 0]  # bincount counts non-negative labels only
        if around.size:
            window[inside] = int(np.bincount(around).argmax())


def _remove_small(labels: np.ndarray, *, min_size: int, structure: np.ndarray, classes: Iterable[int] | None,
                  fill_label: int | None, ignore_index: int | None) -> None:
    removed = np.zeros(labels.shape, dtype=bool)
    for cls in _classes(labels, classes, (ignore_index,)):
        removed |= _small_pixels(labels, cls, structure, min_size=min_size)
    _absorb(labels, removed, structure, fill_label, ignore_index)


def _keep_largest(labels: np.ndarray, *, structure: np.ndarray, classes: Iterable[int] | None,
                  fill_label: int | None, background: int | None, ignore_index: int | None) -> None:
    removed = np.zeros(labels.shape, dtype=bool)
    for cls in _classes(labels, classes, (ignore_index, background)):
        removed |= _small_pixels(labels, cls, structure, min_size=None)
    _absorb(labels, removed, structure, fill_label, ignore_index)


def _fill_holes(labels: np.ndarray, *, connectivity: int, classes: Iterable[int] | None,
                max_hole_size: int | None, background: int | None, ignore_index: int | None) -> None:
    dual = _structure(12 - connectivity)  # 8 <-> 4
    for cls in _classes(labels, classes, (ignore_index, background)):
        others, count = ndimage.label(labels != cls, structure=dual)
        if count == 0:
            continue
        # A region of other labels touching the image border is outside, not a hole.
        edge = np.unique(np.concatenate([others[0], others[-1], others[:, 0], others[:, -1]]))
        sizes = np.bincount(others.ravel(), minlength=count + 1)
        is_hole = np.ones(count + 1, dtype=bool)
        is_hole[0] = False
        is_hole[edge] = False
        if max_hole_size is not None:
            is_hole &= sizes <= max_hole_size
        fill = is_hole[others]
        if ignore_index is not None:
            fill &= labels != ignore_index
        labels[fill] = cls


def _check_size(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, (int, np.integer)) or value < 0):
        raise PixelwiseError(f"cleanup: {name} must be a non-negative pixel count, got {value!r}")


def remove_small_components(mask: Tensor | np.ndarray, *, min_size: int, connectivity: int = 8,
                            classes: Iterable[int] | None = None, fill_label: int | None = None,
                            ignore_index: int | None = 255) -> Tensor | np.ndarray:
    """Relabel every connected component with fewer than ``min_size`` pixels.

    Args:
        mask: integer labels ``(H, W)`` or ``(N, H, W)``, NumPy or tensor.
        min_size: components strictly smaller than this many pixels are removed.
        connectivity: 4 or 8.
        classes: labels to clean; ``None`` = every label present (background included,
            so specks of background inside an object go too).
        fill_label: give removed pixels this label instead of the most-bordering one.
        ignore_index: label left untouched (see the module docstring).

    Returns:
        the cleaned map, same type, dtype and shape as ``mask``.
    """
    _check_size("min_size", min_size)
    structure = _structure(connectivity)
    return _batched(mask, lambda plane: _remove_small(plane, min_size=min_size, structure=structure,
                                                      classes=classes, fill_label=fill_label,
                                                      ignore_index=ignore_index))


def keep_largest_component(mask: Tensor | np.ndarray, *, connectivity: int = 8,
                           classes: Iterable[int] | None = None, fill_label: int | None = None,
                           background: int | None = 0, ignore_index: int | None = 255) -> Tensor | np.ndarray:
    """Keep only the largest connected component of each class; relabel the others.

    Args:
        mask: integer labels ``(H, W)`` or ``(N, H, W)``.
        connectivity: 4 or 8.
        classes: labels to reduce to one component; ``None`` = every label present except
            ``background`` (a background split in two by an object is normal).
        fill_label: label for removed components (e.g. the background) instead of the
            most-bordering one.
        background: label skipped when ``classes`` is ``None``; ``None`` skips nothing.
        ignore_index: label left untouched.
    """
    structure = _structure(connectivity)
    return _batched(mask, lambda plane: _keep_largest(plane, structure=structure, classes=classes,
                                                      fill_label=fill_label, background=background,
                                                      ignore_index=ignore_index))


def fill_holes(mask: Tensor | np.ndarray, *, connectivity: int = 8, classes: Iterable[int] | None = None,
               max_hole_size: int | None = None, background: int | None = 0,
               ignore_index: int | None = 255) -> Tensor | np.ndarray:
    """Give each class the pixels it completely encloses.

    A hole of class ``c`` is a connected region of other labels that does not touch the
    image border and is surrounded by ``c`` alone. Anything inside is overwritten, an
    object of another class included: limit that with ``max_hole_size``.

    Args:
        mask: integer labels ``(H, W)`` or ``(N, H, W)``.
        connectivity: connectivity of the class regions (holes use the other one).
        classes: classes whose holes are filled, in this order; ``None`` = every label
            present except ``background`` (filling the background's holes would erase
            every object).
        max_hole_size: fill only holes of at most this many pixels; ``None`` = any size.
        background: label skipped when ``classes`` is ``None``; ``None`` skips nothing.
        ignore_index: label left untouched, also inside holes.
    """
    _structure(connectivity)
    _check_size("max_hole_size", max_hole_size)
    return _batched(mask, lambda plane: _fill_holes(plane, connectivity=connectivity, classes=classes,
                                                    max_hole_size=max_hole_size, background=background,
                                                    ignore_index=ignore_index))


def clean_mask(mask: Tensor | np.ndarray, *, min_size: int = 0, fill_holes: bool = False,
               max_hole_size: int | None = None, largest_only: bool = False, connectivity: int = 8,
               fill_label: int | None = None, background: int | None = 0,
               ignore_index: int | None = 255) -> Tensor | np.ndarray:
    """The three cleanups combined, applied in the order: largest component per class
    (``largest_only``), small components (``min_size`` > 0), holes (``fill_holes``).

    Keeping the largest component first means the pieces it drops are relabelled before
    speck removal looks at sizes; filling holes last closes what both left behind. The
    arguments mean what they mean in :func:`keep_largest_component`,
    :func:`remove_small_components` and :func:`fill_holes` (with ``classes=None``).
    """
    _check_size("min_size", min_size)
    _check_size("max_hole_size", max_hole_size)
    structure = _structure(connectivity)

    def one(plane: np.ndarray) -> None:
        if largest_only:
            _keep_largest(plane, structure=structure, classes=None, fill_label=fill_label,
                          background=background, ignore_index=ignore_index)
        if min_size > 0:
            _remove_small(plane, min_size=min_size, structure=structure, classes=None,
                          fill_label=fill_label, ignore_index=ignore_index)
        if fill_holes:
            _fill_holes(plane, connectivity=connectivity, classes=None, max_hole_size=max_hole_size,
                        background=background, ignore_index=ignore_index)

    return _batched(mask, one)
