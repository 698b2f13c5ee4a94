"""Dataset checker: read every pair once and report what would break or skew training.

``check_dataset(cfg, splits=..., workers=N)`` reads each split in parallel and collects,
without stopping at the first bad file: unmatched images/masks, unreadable files (with
the reason), image/mask size mismatches, label values outside ``[0, num_classes)`` and
``ignore_index`` (with counts and the first files they occur in), all-void masks, class
pixel frequencies, two suggested class-weight vectors, images per class and the exact
per-channel image mean/std. Heuristics flag masks that look like they need
``reduce_zero_label`` or a colour-to-index conversion.

A dataset reader takes part through a small protocol (any object with these):

- ``__len__()`` and ``load(index) -> (image uint8 (H, W, 3), mask int (H, W))``, the pair
  before any transform (``generate(index)`` is accepted too, as in the synthetic set);
- optionally ``load_raw(index)``, the same without the size/label checks that ``load`` may
  raise on, so that a bad pair still contributes its statistics (preferred when present);
- optionally ``files(index) -> (image_path, mask_path)``, so problems name the files
  (``items[index][:2]``, as :class:`~pixelwise.data.pairs.PairedDataset` keeps them, works too);
- optionally ``unmatched() -> {"images_without_mask": [...], "masks_without_image": [...]}``.

Readers that declare ``folder_layout`` (:class:`~pixelwise.data.reader.Reader`; the
``folder`` reader does) are scanned here directly, because
:class:`~pixelwise.data.folder.FolderDataset` refuses to build on unmatched images.
Readers that declare ``preflight=False`` (generated or 3D data) are skipped by
:func:`preflight`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from ..config import DataCfg
from ..errors import ConfigError, DataError
from .check_report import CheckReport, PairStats, Problem, RawStats, SplitReport
from .folder import IMAGE_SUFFIXES, MASK_SUFFIXES, RAW_IMAGE_SUFFIXES
from .reader import get_reader

__all__ = ["check_dataset", "check_split", "inspect_pair", "analyse_pair", "scan_folder", "PairStats", "CheckReport",
           "SplitReport", "Problem"]


def scan_folder(root: str | Path, image_mode: str = "rgb") -> tuple[list[tuple[Path, Path]], list[Problem]]:
    """Pair ``root/images/*`` with ``root/masks/*`` by stem, reporting every pairing problem
    (``image_mode="raw"`` also takes ``.npy`` images).

    Returns:
        ``(pairs, problems)``: matched ``(image_path, mask_path)`` sorted by stem, and
        problems for images without masks, masks without images, duplicate stems and
        missing folders.
    """
    root = Path(root)
    problems: list[Problem] = []
    found: list[dict[str, Path]] = []
    image_suffixes = RAW_IMAGE_SUFFIXES if image_mode == "raw" else IMAGE_SUFFIXES
    for sub, suffixes, what in (("images", image_suffixes, "image"), ("masks", MASK_SUFFIXES, "mask")):
        folder, by_stem = root / sub, {}
        if not folder.is_dir():
            problems.append(Problem("error", "missing_folder", str(folder),
                                    f"folder {str(folder)!r} does not exist; expected ROOT/<split>/images and "
                                    f"ROOT/<split>/masks"))
        else:
            for path in sorted(folder.iterdir()):
                if not path.is_file() or path.name.startswith("."):
                    continue  # editor/OS leftovers, as FolderDataset skips them
                if path.suffix.lower() not in suffixes:
                    hint = ("; NumPy images are read with data.image_mode: raw"
                            if what == "image" and path.suffix.lower() == ".npy" else "")
                    problems.append(Problem("warning", "ignored_file", str(path),
                                            f"{what} folder holds {path.name!r} whose suffix is not one of "
                                            f"{'/'.join(sorted(suffixes))}; it is ignored{hint}"))
                elif path.stem in by_stem:
                    problems.append(Problem("error", "duplicate_name", str(path),
                                            f"two {what} files share the name {path.stem!r}: "
                                            f"{by_stem[path.stem].name} and {path.name}; keep one"))
                else:
                    by_stem[path.stem] = path
        found.append(by_stem)
    images, masks = found
    for stem in sorted(set(images) - set(masks)):
        problems.append(Problem("error", "image_without_mask", str(images[stem]),
                                f"image {str(images[stem])!r} has no mask (no {stem}.png/.tif in "
                                f"{str(root / 'masks')!r}); add the mask or remove the image"))
    for stem in sorted(set(masks) - set(images)):
        problems.append(Problem("warning", "mask_without_image", str(masks[stem]),
                                f"mask {str(masks[stem])!r} has no image; it is not used"))
    pairs = [(images[s], masks[s]) for s in sorted(set(images) & set(masks))]
    return pairs, problems


def _label_counts(mask: np.ndarray) -> dict[int, int]:
    flat = mask.ravel()
    if flat.size == 0:
        return {}
    if flat.min() >= 0 and flat.max() < 1 << 16:
        # bincount is linear; np.unique sorts, which is several times slower on big masks.
        counts = np.bincount(flat)
        values = np.flatnonzero(counts)
        return dict(zip(values.tolist(), counts[values].tolist()))
    values, counts = np.unique(flat, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def analyse_pair(image: np.ndarray | None, mask: np.ndarray | None, *, name: str, image_path: str, mask_path: str,
                 num_classes: int, ignore_index: int, raw: bool = False) -> PairStats:
    """Statistics and problems of one decoded pair (either array may be None if unreadable).

    An ``(H, W, 3)`` uint8 image gets the exact RGB histogram; stored values (``raw``, or any
    other dtype/channel count) get per-channel :class:`RawStats`."""
    stats = PairStats(name=name)
    if image is not None and (image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or raw):
        stats.raw = RawStats.of(image if image.ndim == 3 else image[:, :, None])
    elif image is not None:
        offsets = np.arange(3, dtype=np.intp) * 256
        hist = np.bincount((image.reshape(-1, 3) + offsets).ravel(), minlength=768)
        stats.channel_hist = hist.reshape(3, 256).astype(np.int64)
    if mask is None:
        return stats
    mask = np.asarray(mask)
    stats.labels = _label_counts(mask)
    if image is not None and image.shape[:2] != mask.shape:
        stats.problems.append(Problem("error", "size_mismatch", mask_path,
                                      f"mask {mask_path!r} is {mask.shape[1]}x{mask.shape[0]} (WxH) but image "
                                      f"{image_path!r} is {image.shape[1]}x{image.shape[0]}; re-export the mask or "
                                      f"resize it with nearest-neighbour"))
    bad = sorted(v for v in stats.labels if not (0 <= v < num_classes or v == ignore_index))
    if bad:
        stats.problems.append(Problem("error", "label_out_of_range", mask_path,
                                      f"mask {mask_path!r} has label(s) {bad[:10]} but num_classes is {num_classes} "
                                      f"(ignore_index {ignore_index}); set num_classes or ignore_index, or fix "
                                      f"the mask"))
    if mask.size and set(stats.labels) == {ignore_index}:
        stats.problems.append(Problem("warning", "all_void", mask_path,
                                      f"mask {mask_path!r} is all ignore_index ({ignore_index}); the pair "
                                      f"teaches nothing: label it or remove it"))
    return stats


def _colour_mask(path: str) -> list[tuple[int, ...]] | None:
    """The distinct colours of an RGB(A) mask if it has at most 256, else None."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("RGB", "RGBA"):
                return None
            colours = img.convert("RGB").getcolors(maxcolors=256)
    except Exception:  # unreadable files are reported by read_mask already
        return None
    return None if colours is None else sorted(c for _, c in colours)


def _rgb_findings(stored: np.ndarray, path: str) -> list[Problem]:
    """What RGB reading loses of a stored image: 16-bit values crushed to a few grey levels."""
    if stored.dtype != np.uint16:
        return []
    high = int(stored.max()) if stored.size else 0
    levels = (high + 128) // 257 + 1
    channels = stored.shape[2]
    fix = (f"set data.image_mode: raw to read the stored values (and model.in_channels: "
           f"{1 if channels == 1 else channels})")
    if high < 4096:
        return [Problem("error", "crushed_16bit", path,
                        f"image {path!r} is 16-bit with values up to {high}: RGB reading scales 65535 -> 255, "
                        f"which leaves it {levels} grey level(s) and destroys the image; {fix}")]
    return [Problem("warning", "scaled_16bit", path,
                    f"image {path!r} is 16-bit (values up to {high}); RGB reading scales it to 8 bits and loses "
                    f"precision; {fix} to keep it")]


def inspect_pair(image_path: str, mask_path: str, num_classes: int, ignore_index: int,
                 image_mode: str = "rgb") -> PairStats:
    """Read one image/mask pair from disk and analyse it; never raises on bad files.

    With ``image_mode="rgb"`` the image is read as training reads it (8-bit RGB), and a 16-bit
    file whose values RGB reading would crush is an error. A module-level function, so a
    process pool can pickle it (benchmarks/bench_data.py times one).
    """
    from .io import raw_to_rgb, read_mask, read_raw_image

    problems: list[Problem] = []
    image = mask = colours = None
    try:
        image = read_raw_image(image_path)
        if image_mode != "raw":
            problems += _rgb_findings(image, image_path)
            image = raw_to_rgb(image, image_path)
    except DataError as err:
        image = None
        problems.append(Problem("error", "unreadable_image", image_path, str(err)))
    try:
        mask = read_mask(mask_path)
    except DataError as err:
        colours = _colour_mask(mask_path)
        kind = "colour_mask" if colours is not None else "unreadable_mask"
        problems.append(Problem("error", kind, mask_path, str(err)))
    stats = analyse_pair(image, mask, name=Path(image_path).stem, image_path=image_path, mask_path=mask_path,
                         num_classes=num_classes, ignore_index=ignore_index, raw=image_mode == "raw")
    stats.problems[:0] = problems
    stats.colours = colours
    return stats


def _inspect_loaded(dataset, index: int, num_classes: int, ignore_index: int) -> PairStats:
    """Analyse pair ``index`` of a reader that follows the ``load``/``files`` protocol."""
    image_path = mask_path = f"sample {index}"
    files = getattr(dataset, "files", None)
    if callable(files):
        image_path, mask_path = (str(p) for p in files(index))
    elif isinstance(getattr(dataset, "items", None), (list, tuple)):
        image_path, mask_path = (str(p) for p in dataset.items[index][:2])
    read = getattr(dataset, "load_raw", None) or getattr(dataset, "load", None) or getattr(dataset, "generate")
    try:
        image, mask = read(index)
    except DataError as err:
        stats = PairStats(name=Path(image_path).stem)
        stats.problems.append(Problem("error", "unreadable_pair", image_path, str(err)))
        return stats
    return analyse_pair(np.asarray(image), np.asarray(mask), name=Path(image_path).stem, image_path=image_path,
                        mask_path=mask_path, num_classes=num_classes, ignore_index=ignore_index)


def _run(fn: Callable, args: list[tuple], *, workers: int) -> Iterable[PairStats]:
    if workers <= 1:
        return [fn(*a) for a in args]
    # Threads, not processes: OpenCV and PIL release the GIL while decoding, nothing is
    # pickled, and no process is forked after OpenCV's/torch's thread pools have run (a
    # forked child can inherit a held lock and hang). benchmarks/bench_data.py measures
    # a process pool against this.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, *zip(*args))) if args else []


def check_split(cfg: DataCfg, split: str, *, workers: int = 0) -> SplitReport:
    """Check one split of the dataset ``cfg`` describes (see :func:`check_dataset`)."""
    report = SplitReport(split=split, num_classes=cfg.num_classes, ignore_index=cfg.ignore_index)
    k, ignore = cfg.num_classes, cfg.ignore_index
    if get_reader(cfg.dataset).folder_layout:
        if cfg.root is None:
            raise ConfigError(f"data.dataset is {cfg.dataset!r} but data.root is not set; set data.root "
                              "(or --set data.root=...)")
        mode = getattr(cfg, "image_mode", "rgb")
        pairs, problems = scan_folder(Path(cfg.root) / split, mode)
        report.problems.extend(problems)
        results = _run(inspect_pair, [(str(i), str(m), k, ignore, mode) for i, m in pairs], workers=workers)
    else:
        from . import build_dataset

        try:
            dataset = build_dataset(cfg, split, train=False)
        except DataError as err:
            report.problems.append(Problem("error", "unreadable_split", f"{cfg.root}/{split}", str(err)))
            return report
        if not (hasattr(dataset, "load") or hasattr(dataset, "generate")):
            raise ConfigError(f"data.dataset {cfg.dataset!r}: its reader has no load(index) method, so the checker "
                              f"cannot read raw pairs; add load(index) -> (image, mask) to the reader")
        unmatched = getattr(dataset, "unmatched", None)
        if callable(unmatched):
            lost = unmatched()
            for path in lost.get("images_without_mask", []):
                report.problems.append(Problem("error", "image_without_mask", str(path),
                                               f"image {str(path)!r} has no mask; add it or remove the image"))
            for path in lost.get("masks_without_image", []):
                report.problems.append(Problem("warning", "mask_without_image", str(path),
                                               f"mask {str(path)!r} has no image; it is not used"))
        results = _run(_inspect_loaded, [(dataset, i, k, ignore) for i in range(len(dataset))], workers=workers)
    for stats in results:
        report.add(stats)
    report.finish()
    if report.pairs == 0:
        report.problems.append(Problem("error", "empty_split", f"{cfg.root}/{split}",
                                       f"split {split!r} has no image/mask pairs"))
    return report


def check_dataset(cfg, splits: list[str] | tuple[str, ...] | None = None, *,
                  workers: int | None = None) -> CheckReport:
    """Read every pair of the given splits once and report problems and statistics.

    Args:
        cfg: an :class:`~pixelwise.config.ExperimentCfg` or its ``DataCfg``.
        splits: split names; default ``[data.train_split, data.val_split]``.
        workers: parallel reader threads (default: CPU count); 0 or 1 reads in this thread.

    Returns:
        :class:`CheckReport`; ``report.ok`` is False when any split has an error.
    """
    data = cfg.data if hasattr(cfg, "data") else cfg
    if splits is None or len(splits) == 0:
        splits = list(dict.fromkeys([data.train_split, data.val_split]))
    workers = (os.cpu_count() or 1) if workers is None else workers
    reports = [check_split(data, s, workers=workers) for s in splits]
    in_channels = getattr(getattr(cfg, "model", None), "in_channels", None)
    _check_raw_channels(data, reports, in_channels)
    read_as_rgb = next((r for r in reports if int(r.channel_hist.sum())), None)  # 2D images, read as RGB
    if in_channels is not None and in_channels != 3 and read_as_rgb is not None:
        read_as_rgb.problems.append(Problem(
            "error", "channel_mismatch", read_as_rgb.split,
            f"model.in_channels is {in_channels} but the images are read as RGB (3 channels; grey files are "
            f"replicated), so training would fail at its first step; set model.in_channels: 3, or "
            f"data.image_mode: raw to read the stored channels"))
    return CheckReport(splits=reports)


def _check_raw_channels(data: DataCfg, reports: list[SplitReport], in_channels: int | None) -> None:
    """Raw mode: the images' channel count against model.in_channels and data.mean/std."""
    if getattr(data, "image_mode", "rgb") != "raw":
        return
    found = next((r for r in reports if r.raw is not None), None)
    if found is None:
        return
    channels = found.raw.channels
    for r in reports:
        if r.raw is not None and r.raw.channels != channels:
            r.problems.append(Problem("error", "channel_count", r.split,
                                      f"split {r.split!r} has {r.raw.channels}-channel images but split "
                                      f"{found.split!r} has {channels}; every split needs the same channels"))
    if in_channels is not None and in_channels != channels:
        found.problems.append(Problem("error", "channel_mismatch", found.split,
                                      f"model.in_channels is {in_channels} but the images have {channels} "
                                      f"channel(s); set model.in_channels: {channels}"))
    defaults = DataCfg()
    if getattr(data, "normalize", "dataset") == "dataset" and (data.mean, data.std) != (defaults.mean, defaults.std) \
            and len(data.mean) != channels:
        found.problems.append(Problem("error", "channel_mismatch", found.split,
                                      f"data.mean/data.std have {len(data.mean)} value(s) but the images have "
                                      f"{channels} channel(s); paste the statistics this report prints"))


def preflight(cfg, *, workers: int | None = None) -> CheckReport | None:
    """The check ``pixelwise train`` runs before step 1: every pair of the train and validation
    splits is read once, in parallel, so a bad file stops the run before any work is lost.

    Returns the report (None for generated datasets and readers the checker cannot read raw);
    raises :class:`DataError` listing the errors, each with its file and fix."""
    data = cfg.data if hasattr(cfg, "data") else cfg
    if not get_reader(data.dataset).preflight:
        return None  # e.g. generated from a seed, or 3D volumes (the checker reads 2D image/mask pairs)
    try:
        report = check_dataset(cfg, workers=workers)
    except ConfigError as err:
        if "no load(index)" in str(err):
            return None  # a reader without raw access: the first epoch reads it anyway
        raise
    if not report.ok:
        errors = [p for split in report.splits for p in split.errors]
        shown = "\n".join(f"  {p.kind}: {p.message}" for p in errors[:10])
        more = (f"\n  ... and {len(errors) - 10} more (pixelwise check CONFIG --json FILE lists all)"
                if len(errors) > 10 else "")
        raise DataError(f"the pre-flight data check found {len(errors)} error(s) before training started:\n{shown}"
                        f"{more}\nFix them (pixelwise check CONFIG shows the whole report), or skip this check with "
                        f"--no-preflight")
    return report


def preflight_summary(report: CheckReport, seconds: float) -> str:
    """The one line ``pixelwise train`` prints after a passed :func:`preflight`."""
    pairs = sum(split.pairs for split in report.splits)
    warnings = sum(len(split.problems) - len(split.errors) for split in report.splits)
    return (f"pre-flight: {pairs} image/mask pairs read in {seconds:.1f} s, no errors"
            + (f", {warnings} warning(s) (pixelwise check shows them)" if warnings else "")
            + "; --no-preflight skips this")
