"""Shared pieces of the standard-dataset readers (VOC, Cityscapes, CamVid, KITTI, ADE20K, LabelMe).

A reader turns a dataset's official layout into a list of ``(image file, label file, name)``
triples plus a function that decodes one label file into ``(H, W)`` class indices;
:class:`PairedDataset` then reads, checks and transforms the pairs. Keeping the layout
knowledge (which folder, which suffix, which colour means what) in each reader and the
reading/checking here means every reader gives the same errors for the same faults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .io import read_image
from .labelled import LabelledDataset

__all__ = ["PairedDataset", "require_dir", "require_root", "check_num_classes", "read_id_list",
           "deterministic_split", "colours_to_index", "arg", "check_args"]


def require_root(cfg, dataset: str, point_at: str) -> Path:
    """``cfg.root`` as a Path, or a DataError saying which folder ``data.root`` must name."""
    if cfg.root is None:
        raise DataError(f"data.dataset is {dataset!r} but data.root is not set; set data.root to {point_at}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r} does not exist (or is not a folder); for {dataset!r} set "
                        f"data.root to {point_at}")
    return root


def require_dir(path: Path, dataset: str, point_at: str) -> Path:
    """``path`` if it is a folder, else a DataError naming it and where ``data.root`` should point."""
    if not path.is_dir():
        raise DataError(f"{dataset}: folder {str(path)!r} does not exist; data.root must be {point_at}")
    return path


def check_num_classes(cfg, dataset: str, expected: int, why: str = "") -> None:
    """Fail early, with the value to set, when ``data.num_classes`` disagrees with the dataset."""
    if cfg.num_classes != expected:
        raise ConfigError(f"data.num_classes is {cfg.num_classes} but {dataset!r} has {expected} classes"
                          f"{' (' + why + ')' if why else ''}; set data.num_classes: {expected}")


def arg(cfg, name: str, default, kinds: tuple[type, ...], dataset: str):
    """Reader option ``cfg.args[name]`` (or ``default``), type-checked so a wrong value fails here."""
    if name not in cfg.args:
        return default
    value = cfg.args[name]
    # bool is an int subclass: a YAML "true" must not pass as a count or a fraction.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise ConfigError(f"data.args.{name} for {dataset!r} must be {names}, got {value!r}")
    return value


def check_args(cfg, dataset: str, known: Sequence[str]) -> None:
    """Refuse unknown ``data.args`` keys: a misspelt option must not be silently ignored."""
    unknown = sorted(set(cfg.args) - set(known))
    if unknown:
        raise ConfigError(f"data.args has unknown key(s) {unknown} for dataset {dataset!r}; valid keys: "
                          f"{', '.join(known) or '(none)'}")


def read_id_list(path: Path, dataset: str, point_at: str) -> list[str]:
    """Non-empty lines of a split file (``2007_000032`` or ``/JPEGImages/x.jpg /Seg/x.png``), first token."""
    if not path.is_file():
        raise DataError(f"{dataset}: split file {str(path)!r} does not exist; data.root must be {point_at} "
                        f"and the split name must match a file there")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{dataset}: split file {str(path)!r} is empty; list one image id per line")
    return ids


def deterministic_split(names: Sequence[str], split: str, *, val_fraction: float, seed: int,
                        dataset: str) -> list[str]:
    """``train`` / ``val`` / ``trainval`` subset of ``names`` for datasets without an official val split.

    The names are sorted, then shuffled with ``numpy.random.default_rng(seed)``; the first
    ``round(len * val_fraction)`` (at least 1 when ``val_fraction > 0`` and there are 2+ names)
    are ``val`` and the rest ``train``. The result depends only on the set of names, the
    fraction and the seed, not on file-system order. Each returned list keeps sorted order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"data.args.val_fraction for {dataset!r} must be in [0, 1), got {val_fraction}")
    ordered = sorted(names)
    if split in ("trainval", "all"):
        return ordered
    if split not in ("train", "val"):
        raise DataError(f"{dataset} has no split {split!r}; use train, val or trainval (train and val are a "
                        f"deterministic split of the labelled images, see data.args.val_fraction and seed)")
    n_val = int(round(len(ordered) * val_fraction))
    if val_fraction > 0 and n_val == 0 and len(ordered) > 1:
        n_val = 1
    order = np.random.default_rng(seed).permutation(len(ordered))
    val = {ordered[i] for i in order[:n_val]}
    return [n for n in ordered if (n in val) == (split == "val")]


def colours_to_index(rgb: np.ndarray, colours: np.ndarray, ids: np.ndarray, *, path: Path,
                     unknown: int | None, fix: str) -> np.ndarray:
    """Map a colour-coded label image to class ids.

    Args:
        rgb: ``(H, W, 3)`` uint8 label image.
        colours: ``(K, 3)`` uint8 colour table.
        ids: ``(K,)`` class id of each colour.
        unknown: id for colours not in the table, or None to raise a DataError naming the colour.
        fix: what the user can do about an unknown colour (goes into the message).

    Returns:
        ``(H, W)`` int64 ids.
    """
    # One int per pixel (R << 16 | G << 8 | B), then a sorted lookup: no loop over classes.
    keys = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    table = (colours[:, 0].astype(np.int64) << 16) | (colours[:, 1].astype(np.int64) << 8) | colours[:, 2]
    order = np.argsort(table)
    table, ids = table[order], np.asarray(ids, dtype=np.int64)[order]
    pos = np.clip(np.searchsorted(table, keys), 0, len(table) - 1)
    found = table[pos] == keys
    out = ids[pos]
    if not found.all():
        if unknown is None:
            key = int(keys[~found][0])
            count = int((~found).sum())
            raise DataError(f"label file {str(path)!r} has colour {(key >> 16, (key >> 8) & 255, key & 255)} (RGB) "
                            f"in {count} pixel(s), which is not in the class colour table; {fix}")
        out = np.where(found, out, unknown)
    return out


class PairedDataset(LabelledDataset):
    """Image/label pairs with a per-dataset label decoder; the reader behind every standard dataset.

    Sizes and label ids are checked by :class:`~pixelwise.data.labelled.LabelledDataset`.

    Args:
        items: ``(image file, label file, name)`` triples, in dataset order.
        decode: label file -> ``(H, W)`` int64 ids already mapped to training ids
            (void pixels set to ``ignore_index``).
        num_classes: labels must lie in ``[0, num_classes)`` or equal ``ignore_index``.
        ignore_index: label of pixels left out of loss and metrics.
        transform: ``(image, mask) -> (FloatTensor (3, H, W), LongTensor (H, W))``.
        read: image file -> ``(H, W, 3)`` uint8 RGB (default :func:`read_image`).
        dataset: dataset name, used in error messages.
        point_at: the folder ``data.root`` should name, for error messages.

    Each item is ``{"image": FloatTensor (3, H, W), "mask": LongTensor (H, W), "name": str}``.
    """

    mask_word = "label"
    size_fix = "the pair does not belong together or one file was resized: restore the original files"
    label_fix = "the file is not from this dataset's official release, or data.num_classes is wrong"

    def __init__(self, items: Sequence[tuple[Path, Path, str]], *, decode: Callable[[Path], np.ndarray],
                 num_classes: int, ignore_index: int, transform: Callable | None, dataset: str, point_at: str,
                 read: Callable[[Path], np.ndarray] = read_image) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, transform=transform, dataset=dataset)
        if not items:
            raise DataError(f"{dataset}: the split holds no images; data.root must be {point_at}")
        # Stat every file now (cheap) so a broken download fails before training starts, not hours in.
        missing = [str(path) for image, label, _ in items for path in (image, label) if not path.is_file()]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise DataError(f"{dataset}: {len(missing)} file(s) of the split are missing: {shown}; every listed "
                            f"image needs its label file (an unmatched pair or an incomplete download); data.root "
                            f"must be {point_at}")
        self.items = list(items)
        self.decode = decode
        self.read = read

    def __len__(self) -> int:
        return len(self.items)

    def files(self, index: int) -> tuple[Path, Path]:
        return self.items[index][0], self.items[index][1]

    def sample_name(self, index: int) -> str:
        return self.items[index][2]

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index`` decoded but unchecked (for ``data.check``, which reports rather than raises)."""
        image_path, label_path, _ = self.items[index]
        return self.read(image_path), self.decode(label_path)
