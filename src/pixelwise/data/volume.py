"""3D image + label volumes (NIfTI or NumPy) for volumetric segmentation (3D U-Net).

Layouts (``dataset: volume``), looked for in this order under ``data.root``:

1. Medical Segmentation Decathlon (Antonelli et al., Nature Communications 2022):
   ``imagesTr/NAME.nii.gz`` + ``labelsTr/NAME.nii.gz``; train and val are shared out of
   ``imagesTr`` by a stable hash of NAME (``data.args.val_fraction``, default 0.2).
2. Per-split folders: ``<split>/images/NAME.*`` + ``<split>/labels/NAME.*``.
3. Plain ``images/`` + ``labels/``, shared out like 1.

``data.args.image_dir`` / ``label_dir`` (templates with ``{split}``) override the search.
Files are ``.nii``, ``.nii.gz``, ``.npy`` or ``.npz`` (one array). Several modalities come
either as one 4D file (MSD: NIfTI ``(X, Y, Z, C)``, NumPy ``(C, D, H, W)``) or as one file
per channel ``NAME_0000``, ``NAME_0001``, ... (nnU-Net) with the label ``NAME``.

Axis order: NIfTI arrays are ``(X, Y, Z)`` in voxel order and are transposed to
``(D, H, W) = (Z, Y, X)`` (slices first, like SimpleITK and nnU-Net); NumPy files are
taken as ``(D, H, W)`` already. Orientation and spacing are not resampled: give volumes
of one orientation and similar spacing.

Training items are random patches (``data.args.patch_size``), a ``foreground_ratio`` of
them centred on foreground (see :mod:`pixelwise.data.transforms3d`), augmented; eval
items are whole volumes. Items are ``{"image": (C, D, H, W) float, "mask": (D, H, W) int64,
"name": str}``; batch eval volumes of different sizes with :func:`volume_collate`.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..optional import require
from .reader import reader
from .rle import in_holdout
from .transforms import pad_collate
from .transforms3d import Augment3d, crop_or_pad, normalize_intensity, sample_patch

__all__ = ["read_volume", "find_cases", "VolumeDataset", "volume_collate", "volume_class_names", "VOLUME_SUFFIXES"]

VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".npy", ".npz")
_CHANNEL = re.compile(r"^(.*)_(\d{4})$")


def _stem(path: Path) -> str | None:
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix) and not name.startswith("."):
            return name[: -len(suffix)]
    return None


def read_volume(path: str | Path) -> np.ndarray:
    """Read a volume as ``(D, H, W)`` or, for a 4D file, ``(C, D, H, W)``.

    NIfTI ``(X, Y, Z[, C])`` is transposed to ``([C,] Z, Y, X)``; NumPy arrays are returned
    as stored. Raises :class:`DataError` naming the file if it is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"volume file {str(path)!r} does not exist; check the path")
    name = path.name.lower()
    nifti = name.endswith((".nii", ".nii.gz"))
    # nibabel is the [medical] extra: only NIfTI files need it, NumPy volumes do not.
    nib = require("nibabel", f"reading the NIfTI volume {str(path)!r}") if nifti else None
    corrupt = (OSError, ValueError, EOFError, zipfile.BadZipFile) + ((nib.filebasedimages.ImageFileError,) if nib else ())
    try:
        if nifti:
            array = np.asanyarray(nib.load(str(path)).dataobj)
            # (X, Y, Z) -> (Z, Y, X); a 4D (X, Y, Z, C) -> (C, Z, Y, X).
            array = array.transpose(2, 1, 0) if array.ndim == 3 else (
                array.transpose(3, 2, 1, 0) if array.ndim == 4 else array)
        elif name.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
        elif name.endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if len(keys) != 1:
                    raise DataError(f"volume file {str(path)!r} holds {len(keys)} arrays {keys}; store one array "
                                    f"per .npz file (np.savez(path, volume))")
                array = archive[keys[0]]
        else:
            raise DataError(f"volume file {str(path)!r} has an unknown suffix; use one of {VOLUME_SUFFIXES}")
    except DataError:
        raise
    except corrupt as err:
        raise DataError(f"volume file {str(path)!r} cannot be read ({type(err).__name__}: {err}); it is corrupt "
                        f"or truncated: re-export it") from None
    return np.asarray(array)


def find_cases(image_dir: Path, label_dir: Path) -> list[tuple[str, list[Path], Path]]:
    """Cases ``(name, image files in channel order, label file)``, sorted by name.

    An image ``NAME.*`` pairs with label ``NAME.*``; images ``NAME_0000.*, NAME_0001.*``
    are channels of case ``NAME`` when there is no label ``NAME_0000``.
    """
    for folder, what in ((image_dir, "image"), (label_dir, "label")):
        if not folder.is_dir():
            raise DataError(f"{what} folder {str(folder)!r} does not exist; expected imagesTr/ + labelsTr/, "
                            f"<split>/images/ + <split>/labels/ or images/ + labels/ under data.root, or set "
                            f"data.args.image_dir and data.args.label_dir")
    labels = {s: p for p in sorted(label_dir.iterdir()) if (s := _stem(p)) is not None}
    channels: dict[str, list[tuple[str, Path]]] = {}
    for path in sorted(image_dir.iterdir()):
        stem = _stem(path)
        if stem is None:
            continue
        match = _CHANNEL.match(stem)
        if stem not in labels and match and match.group(1) in labels:
            channels.setdefault(match.group(1), []).append((match.group(2), path))
        elif stem in labels:
            channels.setdefault(stem, []).append(("", path))
        else:
            raise DataError(f"image volume {str(path)!r} has no label {stem}.* in {str(label_dir)!r} (nor "
                            f"is it a channel file NAME_0000 with a label NAME); add the label or move the image")
    if not channels:
        raise DataError(f"no volumes ({', '.join(VOLUME_SUFFIXES)}) in {str(image_dir)!r}")
    cases = []
    for name in sorted(channels):
        found = sorted(channels[name])
        numbers = [n for n, _ in found]
        if len(found) > 1 and numbers != [f"{i:04d}" for i in range(len(found))]:
            raise DataError(f"case {name!r} in {str(image_dir)!r} has channel files {numbers}; number them "
                            f"_0000, _0001, ... without gaps, or give one file NAME.* per case")
        cases.append((name, [p for _, p in found], labels[name]))
    return cases


class VolumeDataset(Dataset):
    """Image/label volume pairs; training yields patches, eval whole volumes.

    Args:
        cases: ``(name, image files, label file)`` from :func:`find_cases`.
        num_classes: labels must lie in ``[0, num_classes)`` or equal ``ignore_index``.
        ignore_index: label of voxels outside the volume (padding, deformation borders).
        train: random patches + augmentation (True) or whole volumes (False).
        patch_size: ``(D, H, W)`` of training patches.
        foreground_ratio: probability that a training patch is centred on foreground.
        samples_per_volume: training items per volume per epoch.
        augment: training augmentation, None for none.
        normalize, window, clip_percentiles, nonzero: see :func:`transforms3d.normalize_intensity`.
        seed: with a seed, item ``i`` of epoch seed ``e`` always gives the same patch
            (``default_rng([seed, e, i])``); None draws from torch's generator.
        cache: keep loaded, normalised volumes in memory (per worker process).

    Each item is ``{"image": FloatTensor (C, D, H, W), "mask": LongTensor (D, H, W), "name": str}``.
    """

    def __init__(self, cases: list[tuple[str, list[Path], Path]], *, num_classes: int, ignore_index: int = 255,
                 train: bool = False, patch_size: tuple[int, int, int] = (64, 64, 64), foreground_ratio: float = 0.33,
                 samples_per_volume: int = 1, augment: Augment3d | None = None, normalize: str = "zscore",
                 window: tuple[float, float] | None = None, clip_percentiles: tuple[float, float] | None = None,
                 nonzero: bool = False, seed: int | None = None, cache: bool = False) -> None:
        if not cases:
            raise DataError("VolumeDataset got no cases; check data.root and the split")
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise DataError(f"data.args.patch_size is {list(patch_size)}; give three positive sizes [D, H, W]")
        if not 0.0 <= foreground_ratio <= 1.0:
            raise DataError(f"data.args.foreground_ratio is {foreground_ratio}; use a value in [0, 1]")
        if samples_per_volume < 1:
            raise DataError(f"data.args.samples_per_volume is {samples_per_volume}; use at least 1")
        self.cases, self.num_classes, self.ignore_index, self.train = cases, num_classes, ignore_index, train
        self.patch_size = tuple(int(s) for s in patch_size)
        self.foreground_ratio, self.samples_per_volume, self.augment = foreground_ratio, samples_per_volume, augment
        self.norm = {"mode": normalize, "window": window, "clip_percentiles": clip_percentiles, "nonzero": nonzero}
        normalize_intensity(np.zeros((1, 1, 1, 1), np.float32), **self.norm)  # fails early on a bad mode
        self.seed, self.epoch_seed, self.cache = seed, 0, cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def set_epoch_seed(self, seed: int) -> None:
        """Patches and augmentations of the coming epoch come from ``(seed, epoch seed, index)``."""
        self.epoch_seed = int(seed)

    def __len__(self) -> int:
        return len(self.cases) * (self.samples_per_volume if self.train else 1)

    def load(self, case: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image ``(C, D, H, W)`` float32 and label ``(D, H, W)`` int64 of case ``case``, checked."""
        if case in self._cache:
            return self._cache[case]
        _, image_paths, label_path = self.cases[case]
        label = read_volume(label_path)
        if label.ndim == 4 and label.shape[0] == 1:
            label = label[0]
        if label.ndim != 3:
            raise DataError(f"label volume {str(label_path)!r} has shape {label.shape}; labels must be 3D (D, H, W) "
                            f"class indices: one label volume per case, not one-hot")
        if label.dtype.kind == "f" and (not np.all(np.isfinite(label)) or np.any(label != np.round(label))):
            raise DataError(f"label volume {str(label_path)!r} holds non-integer values; labels are class indices: "
                            f"is this an image in the label folder?")
        label = label.astype(np.int64)
        bad = ((label < 0) | (label >= self.num_classes)) & (label != self.ignore_index)
        if bad.any():
            raise DataError(f"label volume {str(label_path)!r} has label(s) {np.unique(label[bad])[:10].tolist()} but "
                            f"num_classes is {self.num_classes} (labels 0..{self.num_classes - 1}, ignore_index "
                            f"{self.ignore_index}); set data.num_classes or fix the labels")
        parts = []
        for path in image_paths:
            array = read_volume(path)
            if array.ndim == 3 or (array.ndim == 4 and len(image_paths) == 1):
                parts.append(array[None] if array.ndim == 3 else array)
            else:
                raise DataError(f"image volume {str(path)!r} has shape {array.shape}; expected 3D (D, H, W), or 4D "
                                f"with channels first for NumPy / last for NIfTI when it is the case's only file")
            if parts[-1].shape[1:] != label.shape:
                raise DataError(f"image volume {str(path)!r} is {parts[-1].shape[1:]} (D, H, W) but its label "
                                f"{str(label_path)!r} is {label.shape}; they must match voxel for voxel: resample "
                                f"the label to the image grid (nearest neighbour)")
        image = normalize_intensity(np.concatenate(parts).astype(np.float32, copy=False), **self.norm)
        if self.cache:
            self._cache[case] = (image, label)
        return image, label

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return np.random.default_rng([self.seed, self.epoch_seed, index])

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"VolumeDataset index {index} out of range for {len(self)} items")
        case = index % len(self.cases)
        image, label = self.load(case)
        name = self.cases[case][0]
        if self.train:
            rng = self._rng(index)
            origin = sample_patch(label, self.patch_size, rng, foreground=rng.random() < self.foreground_ratio,
                                  ignore_index=self.ignore_index)
            image = crop_or_pad(image, origin, self.patch_size, 0.0)
            label = crop_or_pad(label, origin, self.patch_size, self.ignore_index)
            if self.augment is not None:
                image, label = self.augment(image, label, rng, ignore_index=self.ignore_index)
        return {"image": torch.from_numpy(np.ascontiguousarray(image)),
                "mask": torch.from_numpy(np.ascontiguousarray(label)), "name": name}


def volume_collate(batch: list[dict], ignore_index: int = 255) -> dict:
    """Stack volume items, padding D, H, W at the far end to the largest in the batch
    (image 0, mask ``ignore_index``): ``{"image": (N, C, D, H, W), "mask": (N, D, H, W), "name": list}``.
    The same as :func:`pixelwise.data.transforms.pad_collate`, which handles any number of axes."""
    return pad_collate(batch, ignore_index=ignore_index)


_ARGS = {"image_dir", "label_dir", "val_fraction", "patch_size", "foreground_ratio", "samples_per_volume",
         "normalize", "window", "clip_percentiles", "nonzero", "augment", "seed", "cache"}


def _split_dirs(cfg, split: str) -> tuple[Path, Path, bool]:
    """(image folder, label folder, whether train/val share it by hash) for ``split``."""
    root = Path(cfg.root)
    args = cfg.args
    if "image_dir" in args or "label_dir" in args:
        image_dir = str(args.get("image_dir", "{split}/images")).format(split=split)
        label_dir = str(args.get("label_dir", "{split}/labels")).format(split=split)
        return root / image_dir, root / label_dir, "val_fraction" in args
    if (root / "imagesTr").is_dir():
        return root / "imagesTr", root / "labelsTr", True
    if (root / split / "images").is_dir():
        return root / split / "images", root / split / "labels", False
    return root / "images", root / "labels", True


def volume_class_names(cfg) -> list[str] | None:
    """Label names from an MSD ``dataset.json`` (``{"labels": {"0": "background", ...}}``), if any."""
    path = Path(cfg.root or ".") / "dataset.json"
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text()).get("labels", {})
    except (json.JSONDecodeError, AttributeError):
        raise DataError(f"{str(path)!r} is not a valid dataset.json; fix it or set data.class_names") from None
    names = {int(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
    if sorted(names) != list(range(cfg.num_classes)):
        return None
    return [names[i] for i in range(cfg.num_classes)]


@reader("volume", class_names=volume_class_names, preflight=False)
def build_volume(cfg, split: str, *, train: bool, transform: Callable | None) -> VolumeDataset:
    """Registry builder (the 2D ``transform`` is not used: volumes have their own steps).

    ``data.args``: ``patch_size`` [D, H, W] (default [64, 64, 64]), ``foreground_ratio`` (0.33),
    ``samples_per_volume`` (1), ``normalize`` (zscore | minmax | none), ``window`` [lo, hi],
    ``clip_percentiles`` [lo, hi], ``nonzero``, ``augment`` (a dict of :class:`Augment3d` fields,
    or false), ``seed`` (default none: patches come from torch's generator, so they change every
    epoch and follow ``torch.manual_seed`` and the DataLoader's worker seeds; with a seed they
    depend only on (seed, epoch seed, index): call ``set_epoch_seed`` every epoch), ``cache``, ``val_fraction`` (0.2),
    ``image_dir`` / ``label_dir``.
    """
    if cfg.root is None:
        raise DataError("data.dataset is 'volume' but data.root is not set; set it to the folder holding "
                        "imagesTr/ + labelsTr/ (or <split>/images + <split>/labels)")
    args = dict(cfg.args)
    unknown = sorted(set(args) - _ARGS)
    if unknown:
        raise DataError(f"unknown data.args {unknown} for dataset 'volume'; valid: {sorted(_ARGS)}")
    image_dir, label_dir, shared = _split_dirs(cfg, cfg.train_split if "val_fraction" in args else split)
    cases = find_cases(image_dir, label_dir)
    if shared:
        fraction = float(args.get("val_fraction", 0.2))
        if not 0.0 < fraction < 1.0:
            raise DataError(f"data.args.val_fraction is {fraction}; use a fraction between 0 and 1")
        held = split != cfg.train_split
        cases = [c for c in cases if in_holdout(c[0], fraction) == held]
        if not cases:
            raise DataError(f"split {split!r} of {str(image_dir)!r} is empty after val_fraction={fraction}; "
                            f"add volumes or change data.args.val_fraction")
    augment_args = args.get("augment", {})
    try:
        augment = Augment3d(**augment_args) if train and augment_args is not False else None
    except TypeError as err:
        raise DataError(f"data.args.augment: {err}; valid keys: {sorted(Augment3d.__dataclass_fields__)}") from None

    def pair(key: str) -> tuple[float, float] | None:
        return None if args.get(key) is None else tuple(float(v) for v in args[key])

    return VolumeDataset(cases, num_classes=cfg.num_classes, ignore_index=cfg.ignore_index, train=train,
                         patch_size=tuple(args.get("patch_size", (64, 64, 64))),
                         foreground_ratio=float(args.get("foreground_ratio", 0.33)),
                         samples_per_volume=int(args.get("samples_per_volume", 1)), augment=augment,
                         normalize=str(args.get("normalize", "zscore")), window=pair("window"),
                         clip_percentiles=pair("clip_percentiles"), nonzero=bool(args.get("nonzero", False)),
                         seed=None if args.get("seed") is None else int(args["seed"]),
                         cache=bool(args.get("cache", False)))
