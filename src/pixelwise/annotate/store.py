"""The annotation folder on disk: which images there are, their masks, the class list.

Layout of ``DATA_DIR`` (the folder ``pixelwise annotate`` is given)::

    DATA_DIR/images/NAME.png|jpg|...   the images (or directly DATA_DIR/NAME.png ...)
    DATA_DIR/masks/NAME.png            one index PNG per labelled image (palette = class colours)
    DATA_DIR/.pixelwise-annotate/      the tool's own state:
        classes.json                   the class list (index = class id), fixed once masks exist
        proposals/NAME.png             model predictions of unlabelled images ("predict the rest")
        uncertainty.json               per-image uncertainty of those predictions
        model.json                     which model folder proposes (after a retrain swap)
        retrain/, exports/             retrain runs and exports

``DATA_DIR/images`` + ``DATA_DIR/masks`` is one split of the layout the ``folder`` reader
reads (``ROOT/<split>/images`` + ``ROOT/<split>/masks``), so labelled images can be trained on
as they are; :mod:`pixelwise.annotate.exports` writes the complete dataset with a config.

Saving loses nothing: every mask is written to a temporary file in the same folder, synced,
and renamed over the old one (:func:`pixelwise.data.io.write_mask`), so a killed server leaves
either the previous or the new complete mask, never half of one. Names that come from a
client are never joined to a path: they are looked up among the files found on disk, so
``../x`` or ``a/b`` cannot reach anything outside the folder.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.folder import IMAGE_SUFFIXES
from ..data.io import default_palette, read_image, read_mask, write_mask
from ..errors import ConfigError, DataError

__all__ = ["STATE_DIR", "AnnotationStore", "ImageEntry", "parse_classes", "check_name"]

STATE_DIR = ".pixelwise-annotate"
# Longest accepted name and the characters a client may send: whatever the folder holds is
# looked up, but a name with a separator or a leading dot is refused outright.
_NAME = re.compile(r"^[^/\\\x00]{1,255}$")


def parse_classes(text: str | list[str] | None) -> list[str] | None:
    """``"background,cat,dog"`` (or a list) -> ``["background", "cat", "dog"]``; None stays None.

    The first class is the background: what the eraser paints and what unlabelled pixels are.
    """
    if text is None:
        return None
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    if len(names) < 2 or any(not n for n in names):
        raise ConfigError(f"--classes {text!r} must name at least two classes, background first, separated by "
                          f"commas, e.g. --classes background,cat,dog")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--classes {text!r} names {duplicates} more than once; each class once")
    if len(names) > 255:
        raise ConfigError(f"--classes has {len(names)} classes; masks are 8-bit PNGs, at most 255 classes")
    return names


def check_name(name: str) -> str:
    """``name`` if it can name an image of the folder, else :class:`DataError` (a client's 400)."""
    if not _NAME.match(name) or name.startswith(".") or name in (".", ".."):
        raise DataError(f"image name {name!r} is not valid: names are file stems without '/', '\\' or a leading "
                        f"dot (as listed by GET /v1/annotate/images)")
    return name


@dataclass(frozen=True)
class ImageEntry:
    """One image of the folder: its stem ``name`` and file ``path``."""

    name: str
    path: Path


class AnnotationStore:
    """The images, masks, proposals and class list of one annotation folder.

    Args:
        root: ``DATA_DIR``.
        classes: class names, background first; None = the saved list, else the model's
            (``model_classes``), else ``["background", "foreground"]``.
        model_classes: the proposing model's class names, used when no list is given or saved.

    Thread-safe: the server calls it from several worker threads.
    """

    def __init__(self, root: str | os.PathLike, *, classes: list[str] | None = None,
                 model_classes: list[str] | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DataError(f"annotation folder {str(self.root)!r} does not exist; give the folder holding your "
                            f"images (DATA_DIR/images/*.png or DATA_DIR/*.png)")
        nested = self.root / "images"
        self.images_dir = nested if nested.is_dir() else self.root
        self.masks_dir = self.root / "masks"
        self.state_dir = self.root / STATE_DIR
        self.proposals_dir = self.state_dir / "proposals"
        self._lock = threading.RLock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # a few decoded images, for proposals
        self._listing: tuple[int, list[ImageEntry]] | None = None
        self.classes = self._resolve_classes(classes, model_classes)
        self.palette = default_palette(256)
        self.remove_stale_temporaries()
        if not self.entries():
            raise DataError(f"{str(self.images_dir)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); put "
                            f"the images to label in DATA_DIR/images/ or DATA_DIR/")

    @staticmethod
    def recorded_model(root: str | os.PathLike, file: str) -> Path | None:
        """The model folder a retrain swapped in (``STATE_DIR/file``), if it still exists."""
        path = Path(root).expanduser() / STATE_DIR / file
        try:
            folder = Path(json.loads(path.read_text())["path"]) if path.is_file() else None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return folder if folder is not None and (folder / "config.json").is_file() else None

    # -- classes --------------------------------------------------------------------------------

    def _resolve_classes(self, given: list[str] | None, model_classes: list[str] | None) -> list[str]:
        path = self.state_dir / "classes.json"
        saved = json.loads(path.read_text()) if path.is_file() else None
        # Appending classes keeps every saved index meaningful; anything else would relabel the masks.
        if given and saved and given[:len(saved)] != saved and self._any_mask():
            raise ConfigError(f"--classes {','.join(given)} differs from the classes the masks in "
                              f"{str(self.masks_dir)!r} were saved with ({','.join(saved)}); new classes may only "
                              f"be appended: --classes {','.join(saved)},NEW")
        classes = given or saved or (list(model_classes) if model_classes else ["background", "foreground"])
        if classes != saved:
            _write_json(path, classes)
        return list(classes)

    def _any_mask(self) -> bool:
        return self.masks_dir.is_dir() and any(p.suffix == ".png" and not p.name.startswith(".")
                                               for p in self.masks_dir.iterdir())

    # -- images ---------------------------------------------------------------------------------

    def entries(self) -> list[ImageEntry]:
        """Every image of the folder, sorted by name (rescanned when the folder changes)."""
        stamp = self.images_dir.stat().st_mtime_ns
        with self._lock:
            if self._listing is not None and self._listing[0] == stamp:
                return self._listing[1]
        found: dict[str, Path] = {}
        for path in sorted(self.images_dir.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                found.setdefault(path.stem, path)  # two files with one stem: the first wins, as listed
        listing = [ImageEntry(name, path) for name, path in found.items()]
        with self._lock:
            self._listing = (stamp, listing)
        return listing

    def entry(self, name: str) -> ImageEntry:
        """The image called ``name``; :class:`KeyError` if the folder has none (a client's 404)."""
        check_name(name)
        found = {e.name: e for e in self.entries()}.get(name)
        if found is not None:
            return found
        raise KeyError(f"no image named {name!r} in {str(self.images_dir)!r}; GET /v1/annotate/images lists them")

    def image(self, name: str) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB of image ``name`` (the last few are kept decoded)."""
        entry = self.entry(name)
        with self._lock:
            if name in self._cache:
                self._cache.move_to_end(name)
                return self._cache[name]
        rgb = read_image(entry.path)
        with self._lock:
            self._cache[name] = rgb
            while len(self._cache) > 4:
                self._cache.popitem(last=False)
        return rgb

    def mask_path(self, name: str) -> Path:
        return self.masks_dir / f"{self.entry(name).name}.png"

    def proposal_path(self, name: str) -> Path:
        return self.proposals_dir / f"{self.entry(name).name}.png"

    def labelled(self) -> list[str]:
        """Names of the images that have a saved mask."""
        have = {p.stem for p in self.masks_dir.glob("*.png") if not p.name.startswith(".")} \
            if self.masks_dir.is_dir() else set()
        return [e.name for e in self.entries() if e.name in have]

    def progress(self) -> dict[str, int]:
        total, done = len(self.entries()), len(self.labelled())
        return {"labelled": done, "total": total, "remaining": total - done}

    # -- masks ----------------------------------------------------------------------------------

    def check_mask(self, name: str, labels: np.ndarray) -> np.ndarray:
        """``labels`` as ``(H, W)`` uint8 if it fits image ``name`` and the classes, else :class:`DataError`."""
        height, width = self.image(name).shape[:2]
        labels = np.asarray(labels)
        if labels.shape != (height, width):
            shape = "x".join(str(s) for s in labels.shape[::-1])
            raise DataError(f"the mask for {name!r} is {shape} (WxH) but the image is {width}x{height}; send one "
                            f"class index per image pixel")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
            bad = np.unique(labels[(labels < 0) | (labels >= len(self.classes))])[:10].tolist()
            raise DataError(f"the mask for {name!r} has class(es) {bad}, outside 0..{len(self.classes) - 1} "
                            f"({', '.join(self.classes)}); send class indices of this project")
        return labels.astype(np.uint8)

    def save_mask(self, name: str, labels: np.ndarray) -> Path:
        """Check and write the mask of ``name`` atomically (temporary file + rename, synced)."""
        labels = self.check_mask(name, labels)
        path = self.mask_path(name)
        write_mask(path, labels, self.palette[:256])
        _sync_dir(path.parent)  # the rename itself survives a power cut, not only a killed process
        return path

    def read_mask(self, name: str, *, source: str = "saved") -> np.ndarray | None:
        """The saved mask (``source="saved"``) or the model's proposal (``"proposal"``) of ``name``,
        ``(H, W)`` uint8, or None when there is none."""
        path = self.mask_path(name) if source == "saved" else self.proposal_path(name)
        if not path.is_file():
            return None
        labels = read_mask(path)
        height, width = self.image(name).shape[:2]
        if labels.shape != (height, width):
            raise DataError(f"{str(path)!r} is {labels.shape[1]}x{labels.shape[0]} (WxH) but its image is "
                            f"{width}x{height}; the image was replaced after labelling: delete the mask")
        return np.clip(labels, 0, 255).astype(np.uint8)

    def save_proposal(self, name: str, labels: np.ndarray) -> None:
        write_mask(self.proposal_path(name), labels.astype(np.uint8), self.palette[:256])

    # -- small state files ----------------------------------------------------------------------

    def read_state(self, file: str, default):
        path = self.state_dir / file
        try:
            return json.loads(path.read_text()) if path.is_file() else default
        except (OSError, json.JSONDecodeError):
            return default  # written atomically, so only a hand-edited file ends here

    def write_state(self, file: str, value) -> None:
        with self._lock:
            _write_json(self.state_dir / file, value)

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporary files a killed process left (``.NAME.png.PID.XXXX.tmp``)."""
        removed = []
        for folder in (self.masks_dir, self.proposals_dir, self.state_dir):
            if folder.is_dir():
                for path in folder.glob(".*.tmp"):
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed


def _write_json(path: Path, value) -> None:
    """Atomic JSON write (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open folders; its renames are durable through NTFS journaling
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
