"""Plain image/mask folders: ``ROOT/images/NAME.ext`` + ``ROOT/masks/NAME.png`` matched by stem.

With ``data.image_mode: raw`` the images are read as stored (16-bit, float, N channels, and
``.npy`` arrays too) and normalised by :class:`~pixelwise.data.intensity.Preprocess`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError
from .intensity import IMAGE_MODES
from .io import read_image, read_mask, read_raw_image
from .labelled import LabelledDataset
from .reader import reader

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
# data.image_mode: raw also reads NumPy arrays (H, W) / (H, W, C) saved with np.save.
RAW_IMAGE_SUFFIXES = IMAGE_SUFFIXES | {".npy"}
MASK_SUFFIXES = frozenset({".png", ".tif", ".tiff"})
LAYOUT = "ROOT/images/NAME.(png|jpg|tif...) and ROOT/masks/NAME.png"


def _by_stem(folder: Path, suffixes: frozenset[str], what: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        # Dot files are editor/OS leftovers (macOS "._x.png", our own ".x.png.*.tmp").
        if path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith("."):
            if path.stem in found:
                raise DataError(f"two {what} files share the name {path.stem!r}: {found[path.stem].name} and "
                                f"{path.name} in {str(folder)!r}; keep one")
            found[path.stem] = path
    return found


class FolderDataset(LabelledDataset):
    """Images and masks in two folders, paired by file stem.

    Masks are index PNGs or palette PNGs (the palette index is the class). Pairing is
    checked when the dataset is built; image/mask sizes and label values are checked when
    a sample is read (by :class:`~pixelwise.data.labelled.LabelledDataset`), each failure
    naming the file and the fix.

    Args:
        root: folder holding ``image_dir`` and ``mask_dir``.
        num_classes: labels must lie in ``[0, num_classes)`` or equal ``ignore_index``.
        ignore_index: label that marks pixels excluded from losses and metrics.
        transform: ``(image, mask) -> (FloatTensor (3, H, W), LongTensor (H, W))``.
        image_mode: ``"rgb"`` (8-bit RGB) or ``"raw"`` (stored dtype and channels, ``.npy`` too).

    Each item is ``{"image": FloatTensor (3, H, W), "mask": LongTensor (H, W), "name": stem}``.
    """

    def __init__(self, root: str | Path, *, num_classes: int, ignore_index: int = 255,
                 transform: Callable | None = None, image_dir: str = "images", mask_dir: str = "masks",
                 image_mode: str = "rgb") -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, transform=transform)
        root = Path(root)
        if image_mode not in IMAGE_MODES:
            raise DataError(f"image_mode is {image_mode!r}; valid: {', '.join(IMAGE_MODES)}")
        self.read = read_raw_image if image_mode == "raw" else read_image
        suffixes = RAW_IMAGE_SUFFIXES if image_mode == "raw" else IMAGE_SUFFIXES
        images_path, masks_path = root / image_dir, root / mask_dir
        for path in (root, images_path, masks_path):
            if not path.is_dir():
                raise DataError(f"dataset folder {str(path)!r} does not exist; expected the layout {LAYOUT}")
        images = _by_stem(images_path, suffixes, "image")
        masks = _by_stem(masks_path, MASK_SUFFIXES, "mask")
        if not images:
            raise DataError(f"empty dataset folder: {str(images_path)!r} holds no images "
                            f"({', '.join(sorted(suffixes))}); expected the layout {LAYOUT}"
                            + ("; .npy images need data.image_mode: raw" if any(images_path.glob("*.npy")) else ""))
        unmatched = [stem for stem in images if stem not in masks]
        if unmatched:
            shown = ", ".join(images[s].name for s in unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
            raise DataError(f"{len(unmatched)} image(s) have no mask: {shown} (looked in {str(masks_path)!r} for "
                            f"files with the same stem and suffix {'/'.join(sorted(MASK_SUFFIXES))}); add the masks "
                            f"or remove those images from {str(images_path)!r}")
        orphans = sorted(set(masks) - set(images))
        if orphans:
            warnings.warn(f"{len(orphans)} mask(s) in {str(masks_path)!r} have no image (e.g. {orphans[:5]}); "
                          f"they are not used", stacklevel=2)
        self.pairs = [(images[s], masks[s]) for s in images]

    def __len__(self) -> int:
        return len(self.pairs)

    def files(self, index: int) -> tuple[Path, Path]:
        return self.pairs[index]

    def sample_name(self, index: int) -> str:
        return self.pairs[index][0].stem

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair ``index`` unchecked: image ``(H, W, 3)`` uint8 (raw: ``(H, W, C)`` as stored),
        mask ``(H, W)`` int64."""
        image_path, mask_path = self.pairs[index]
        return self.read(image_path), read_mask(mask_path)


# Class names come from data.class_names (or class_0..); the checker scans the layout itself,
# since FolderDataset refuses to build on unmatched files.
@reader("folder", raw_images=True, folder_layout=True)
def build_folder(cfg, split: str, *, train: bool, transform: Callable | None) -> FolderDataset:
    """Registry builder: ``cfg.root/<split>/images`` + ``cfg.root/<split>/masks``."""
    if cfg.root is None:
        raise DataError("data.dataset is 'folder' but data.root is not set; set data.root to the folder "
                        f"holding the splits ({LAYOUT} inside ROOT/<split>/)")
    return FolderDataset(Path(cfg.root) / split, num_classes=cfg.num_classes, ignore_index=cfg.ignore_index,
                         transform=transform, image_mode=getattr(cfg, "image_mode", "rgb"))

