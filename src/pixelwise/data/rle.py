"""Run-length encoded masks in a CSV file, the convention of segmentation competitions.

A mask is written as ``"start length start length ..."``: ``start`` is the 1-based index of
the first pixel of a run of foreground pixels and ``length`` its number of pixels. Pixels
are numbered in column-major (Fortran) order, top to bottom and then left to right, so
pixel ``(row r, column c)`` of an ``H x W`` mask is number ``c * H + r + 1``. An empty
string (or ``NaN`` as pandas writes a missing value) is an empty mask. Severstal steel
defects, Airbus ship detection, SIIM pneumothorax (after its own conversion) and
HuBMAP use this order; Carvana numbered row-major, hence ``order="C"``.

Example, a 3 x 3 mask (pixel numbers in brackets)::

    1 [1]  0 [4]  0 [7]
    1 [2]  1 [5]  0 [8]        -> "1 2 5 1 9 1"
    0 [3]  0 [6]  1 [9]

Dataset layout (``dataset: rle_csv``): ``ROOT/<csv>`` with one row per (image, mask) and
``ROOT/<image_dir>/`` holding the images. Several rows for the same image are OR-ed into
class 1, or, with ``class_column`` set, each row paints its own class (later rows on top).
"""

from __future__ import annotations

import csv
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from torch.utils.data import Dataset

from ..errors import DataError
from ..optional import require
from .folder import IMAGE_SUFFIXES
from .io import read_image
from .reader import reader
from .transforms import make_sample

__all__ = ["coco_rle", "rle_encode", "rle_decode", "RleCsvDataset", "in_holdout", "EMPTY_VALUES"]

# How a missing mask is spelled by pandas, R and spreadsheet exports.
EMPTY_VALUES = frozenset({"", "nan", "NaN", "NAN", "None", "null", "-"})


def rle_encode(mask: np.ndarray, *, order: str = "F") -> str:
    """Encode a binary mask as a ``"start length ..."`` string.

    Args:
        mask: ``(H, W)`` array; non-zero pixels are foreground.
        order: ``"F"`` column-major (the competition convention) or ``"C"`` row-major.

    Returns:
        runs with 1-based starts, in increasing order; ``""`` for an empty mask.
    """
    if order not in ("F", "C"):
        raise ValueError(f"rle_encode: order must be 'F' (column-major) or 'C' (row-major), got {order!r}")
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects an (H, W) mask, got shape {mask.shape}")
    flat = mask.astype(bool).ravel(order=order)
    # Zeros on both ends make every run have a rising and a falling edge in the difference.
    edges = np.flatnonzero(np.diff(np.concatenate(([False], flat, [False])).astype(np.int8)))
    starts, stops = edges[0::2], edges[1::2]
    runs = np.empty(2 * len(starts), dtype=np.int64)
    runs[0::2] = starts + 1
    runs[1::2] = stops - starts
    return " ".join(map(str, runs.tolist()))


def coco_rle(masks: np.ndarray) -> list[dict]:
    """``(K, H, W)`` binary masks (non-zero is foreground) -> ``K`` COCO RLE dicts
    ``{"size": [H, W], "counts": str}``: pycocotools' compressed counts as ASCII text, so the
    records are valid JSON and every pycocotools function reads them back. The one COCO-RLE
    encoder of pixelwise (COCO metrics, predictions, the server, annotation exports)."""
    mask_utils = require("pycocotools.mask", "COCO run-length encoding")
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"coco_rle expects (K, H, W) masks, got shape {masks.shape}")
    if len(masks) == 0:
        return []
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0) != 0, dtype=np.uint8))
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in encoded]


def rle_decode(rle: str | float | None, shape: tuple[int, int], *, order: str = "F", where: str = "RLE") -> np.ndarray:
    """Decode a ``"start length ..."`` string into a binary mask.

    Args:
        rle: the encoded runs; ``""``, ``None``, ``NaN`` or ``"nan"`` is an empty mask.
        shape: ``(H, W)`` of the mask (the image size).
        order: ``"F"`` column-major (the competition convention) or ``"C"`` row-major.
        where: what to call the string in errors (e.g. ``"train.csv row 7 (image 0a1b.jpg)"``).

    Returns:
        ``(H, W)`` bool array.

    Raises:
        DataError: the string is malformed: not integers, an odd count, a start below 1 or
            a length below 1, runs that overlap or are out of order, or a run past the end.
    """
    if order not in ("F", "C"):
        raise ValueError(f"rle_decode: order must be 'F' (column-major) or 'C' (row-major), got {order!r}")
    height, width = (int(s) for s in shape)
    size = height * width
    if rle is None or (isinstance(rle, float) and np.isnan(rle)) or str(rle).strip() in EMPTY_VALUES:
        return np.zeros((height, width), dtype=bool)
    tokens = str(rle).split()
    try:
        runs = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        bad = next((t for t in tokens if not t.lstrip("+-").isdigit()), rle)
        raise DataError(f"{where}: run-length value {bad!r} is not an integer; an RLE string is space-separated "
                        f"integers 'start length start length ...'") from None
    if len(runs) % 2:
        raise DataError(f"{where}: {len(runs)} numbers, an odd count; an RLE string is (start, length) pairs, "
                        f"so one number is missing or extra: re-export the mask")
    starts, lengths = runs[0::2] - 1, runs[1::2]
    _check_runs(starts, lengths, size=size, shape=(height, width), where=where)
    # Runs are disjoint and sorted, so +1 at each start and -1 after each end, summed, is the mask.
    marks = np.zeros(size + 1, dtype=np.int8)
    marks[starts] += 1
    marks[starts + lengths] -= 1
    # int8 accumulation is exact (the running sum is 0 or 1) and avoids a widening cast.
    return np.cumsum(marks[:size], dtype=np.int8).astype(bool).reshape((height, width), order=order)


def _check_runs(starts: np.ndarray, lengths: np.ndarray, *, size: int, shape: tuple[int, int], where: str) -> None:
    if len(starts) == 0:
        return
    if starts.min() < 0:
        i = int(np.argmax(starts < 0))
        raise DataError(f"{where}: run {i} starts at pixel {int(starts[i]) + 1}; starts are 1-based (the first "
                        f"pixel is 1): if the file is 0-based add 1 to every start")
    if lengths.min() < 1:
        i = int(np.argmax(lengths < 1))
        raise DataError(f"{where}: run {i} has length {int(lengths[i])}; lengths must be at least 1")
    ends = starts + lengths
    if ends.max() > size:
        i = int(np.argmax(ends > size))
        raise DataError(f"{where}: run {i} (start {int(starts[i]) + 1}, length {int(lengths[i])}) ends at pixel "
                        f"{int(ends[i])}, past the last pixel {size} of the {shape[0]}x{shape[1]} (HxW) image; "
                        f"the RLE belongs to another image size or to a different CSV row")
    if len(starts) > 1 and np.any(starts[1:] < ends[:-1]):
        i = int(np.argmax(starts[1:] < ends[:-1])) + 1
        raise DataError(f"{where}: run {i} starts at pixel {int(starts[i]) + 1}, before the end of run {i - 1} "
                        f"(pixel {int(ends[i - 1])}); runs must be sorted and must not overlap: re-encode the mask")


class RleCsvDataset(Dataset):
    """Images in a folder with their masks as run-length strings in a CSV file.

    Args:
        csv_path: the CSV file; its header names the columns.
        image_dir: folder holding the images; ``id_column`` is a file name in it, with or
            without its suffix.
        num_classes: labels must lie in ``[0, num_classes)``.
        ignore_index: passed to the transform (padding value); never written by the reader.
        transform: ``(image uint8 (H, W, 3), mask int64 (H, W)) -> (image, mask)`` tensors.
        id_column, rle_column: column names of the image id and the encoded pixels.
        class_column: column holding each row's class (1..num_classes-1). None: every row
            is class 1 and rows of the same image are OR-ed (binary segmentation).
        order: ``"F"`` column-major (default, the competition convention) or ``"C"``.
        all_images: also use images of ``image_dir`` that have no CSV row (empty masks;
            Severstal lists only images with defects). False: only images named in the CSV.

    Each item is ``{"image": FloatTensor (3, H, W), "mask": LongTensor (H, W), "name": id}``.
    """

    def __init__(self, csv_path: str | Path, image_dir: str | Path, *, num_classes: int, ignore_index: int = 255,
                 transform: Callable | None = None, id_column: str = "ImageId", rle_column: str = "EncodedPixels",
                 class_column: str | None = None, order: str = "F", all_images: bool = False) -> None:
        self.csv_path, self.image_dir = Path(csv_path), Path(image_dir)
        if not self.csv_path.is_file():
            raise DataError(f"RLE CSV file {str(self.csv_path)!r} does not exist; set data.args.csv to the CSV "
                            f"(relative to data.root)")
        if not self.image_dir.is_dir():
            raise DataError(f"image folder {str(self.image_dir)!r} does not exist; set data.args.image_dir")
        if order not in ("F", "C"):
            raise DataError(f"data.args.order is {order!r}; use 'F' (column-major, the usual convention) or 'C'")
        if num_classes < 2:
            raise DataError(f"num_classes is {num_classes}; an RLE dataset has background + at least one class")
        self.num_classes, self.ignore_index, self.transform, self.order = num_classes, ignore_index, transform, order
        self.class_column = class_column
        files = {p.name: p for p in sorted(self.image_dir.iterdir())
                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}
        stems = {p.stem: p for p in files.values()}
        # rows[image id] = [(CSV line number, rle, class)], in file order.
        self.rows: dict[str, list[tuple[int, str, int]]] = {}
        for line, record in self._read_csv(id_column, rle_column, class_column):
            self.rows.setdefault(record[0], []).append((line, record[1], record[2]))
        missing = [i for i in self.rows if i not in files and i not in stems]
        if missing:
            raise DataError(f"{len(missing)} image id(s) of {str(self.csv_path)!r} have no image in "
                            f"{str(self.image_dir)!r}, e.g. {missing[:5]}; fix data.args.image_dir or "
                            f"data.args.id_column, or add the images")
        self.paths = {i: files.get(i, stems.get(i)) for i in self.rows}
        if all_images:
            listed = {p for p in self.paths.values()}
            for path in files.values():
                if path not in listed:
                    self.paths[path.name] = path
                    self.rows[path.name] = []
        self.ids = list(self.paths)
        if not self.ids:
            raise DataError(f"no images to read: {str(self.csv_path)!r} has no rows; check the CSV, or set "
                            f"data.args.all_images to use every image of {str(self.image_dir)!r}")

    def _read_csv(self, id_column: str, rle_column: str, class_column: str | None):
        with self.csv_path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            wanted = [id_column, rle_column] + ([class_column] if class_column else [])
            absent = [c for c in wanted if c not in header]
            if absent:
                raise DataError(f"CSV {str(self.csv_path)!r} has no column(s) {absent}; its header is {header}: set "
                                f"data.args.id_column / rle_column / class_column to the right names")
            for record in reader:
                line = reader.line_num
                image_id = (record[id_column] or "").strip()
                if not image_id:
                    raise DataError(f"{str(self.csv_path)!r} line {line}: empty {id_column!r}; every row needs "
                                    f"an image id")
                label = 1
                if class_column:
                    raw = (record[class_column] or "").strip()
                    try:
                        label = int(float(raw))
                    except ValueError:
                        raise DataError(f"{str(self.csv_path)!r} line {line} (image {image_id}): class {raw!r} in "
                                        f"column {class_column!r} is not an integer") from None
                    if not 1 <= label < self.num_classes:
                        raise DataError(f"{str(self.csv_path)!r} line {line} (image {image_id}): class {label} is "
                                        f"outside 1..{self.num_classes - 1} (0 is background); set "
                                        f"data.num_classes to at least {label + 1}")
                yield line, (image_id, record[rle_column] or "", label)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``(H, W, 3)`` uint8 and mask ``(H, W)`` int64 of sample ``index``."""
        image_id = self.ids[index]
        image = read_image(self.paths[image_id])
        mask = np.zeros(image.shape[:2], dtype=np.int64)
        for line, rle, label in self.rows[image_id]:
            where = f"{str(self.csv_path)!r} line {line} (image {image_id})"
            mask[rle_decode(rle, image.shape[:2], order=self.order, where=where)] = label
        return image, mask

    def __getitem__(self, index: int) -> dict:
        image, mask = self.load(index)
        return make_sample(image, mask, self.ids[index], self.transform)


def in_holdout(name: str, fraction: float) -> bool:
    """Whether ``name`` falls in the held-out ``fraction``: a stable hash, the same on every run."""
    return zlib.crc32(name.encode()) % 10_000 < round(fraction * 10_000)


@reader("rle_csv")
def build_rle_csv(cfg, split: str, *, train: bool, transform: Callable | None) -> RleCsvDataset:
    """Registry builder. ``data.args``: ``csv`` (default ``"{split}.csv"``), ``image_dir`` (default
    ``"{split}_images"``), ``id_column``, ``rle_column``, ``class_column``, ``order``, ``all_images``,
    ``val_fraction`` (when set, the train and val splits both read the train split's files and
    share its images out by a stable hash of the image id)."""
    if cfg.root is None:
        raise DataError("data.dataset is 'rle_csv' but data.root is not set; set it to the folder holding the CSV")
    args = dict(cfg.args)
    known = {"csv", "image_dir", "id_column", "rle_column", "class_column", "order", "all_images", "val_fraction"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise DataError(f"unknown data.args {unknown} for dataset 'rle_csv'; valid: {sorted(known)}")
    fraction = args.get("val_fraction")
    source = split
    if fraction is not None:
        if not 0.0 < float(fraction) < 1.0:
            raise DataError(f"data.args.val_fraction is {fraction}; use a fraction between 0 and 1")
        source = cfg.train_split
    root = Path(cfg.root)
    csv_path = root / str(args.get("csv", "{split}.csv")).format(split=source)
    image_dir = root / str(args.get("image_dir", "{split}_images")).format(split=source)
    dataset = RleCsvDataset(csv_path, image_dir, num_classes=cfg.num_classes, ignore_index=cfg.ignore_index,
                            transform=transform, id_column=args.get("id_column", "ImageId"),
                            rle_column=args.get("rle_column", "EncodedPixels"), class_column=args.get("class_column"),
                            order=args.get("order", "F"), all_images=bool(args.get("all_images", False)))
    if fraction is not None:
        held = split != cfg.train_split
        dataset.ids = [i for i in dataset.ids if in_holdout(i, float(fraction)) == held]
        if not dataset.ids:
            raise DataError(f"split {split!r} is empty after data.args.val_fraction={fraction}; use more images "
                            f"or another fraction")
    return dataset
