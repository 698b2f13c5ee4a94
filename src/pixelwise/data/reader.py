"""The :class:`Reader` protocol: what every entry of ``registry.DATASETS`` answers.

A dataset reader is one file plus its registration. The registration says what the
rest of pixelwise asks about the dataset, so no other module keeps a list of dataset
names::

    @reader("voc", class_names=voc_class_names)
    def build_voc(cfg, split, *, train, transform) -> Dataset: ...

:func:`reader` registers a :class:`RegisteredReader` (the builder plus its answers) under
the name and returns the builder unchanged, so module code and tests call it as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

from torch.utils.data import Dataset

from ..config import DataCfg
from ..errors import ConfigError
from ..registry import DATASETS, lookup, register

__all__ = ["Reader", "RegisteredReader", "as_reader", "get_reader", "reader"]

Builder = Callable[..., Dataset]
ClassNames = Callable[[DataCfg], "list[str] | None"]


@runtime_checkable
class Reader(Protocol):
    """A registered dataset reader.

    Attributes:
        name: its key in ``registry.DATASETS`` (``data.dataset``).
        raw_images: it reads stored pixel values (``data.image_mode: raw``: 16-bit,
            float, N channels); otherwise it reads 8-bit RGB and ``build_dataset``
            refuses ``raw``.
        preflight: ``pixelwise train``'s pre-flight check reads its image/mask pairs;
            False for generated data (nothing on disk to break) and 3D volumes.
        folder_layout: its splits are ``ROOT/<split>/images`` + ``ROOT/<split>/masks``,
            which ``pixelwise check`` scans itself to report unmatched files (the
            dataset would refuse to build on them).
    """

    name: str
    raw_images: bool
    preflight: bool
    folder_layout: bool

    def __call__(self, cfg: DataCfg, split: str, *, train: bool, transform: Callable | None) -> Dataset:
        """The ``split`` of the dataset, each sample passed through ``transform``."""

    def class_names(self, cfg: DataCfg) -> list[str] | None:
        """The dataset's own class names for ``cfg`` (one per class), or None when it has none."""


@dataclass(frozen=True)
class RegisteredReader:
    """A builder function and its answers to :class:`Reader` (what :func:`reader` registers)."""

    name: str
    build: Builder
    names: Sequence[str] | ClassNames | None = None
    raw_images: bool = False
    preflight: bool = True
    folder_layout: bool = False

    def __call__(self, cfg: DataCfg, split: str, *, train: bool, transform: Callable | None) -> Dataset:
        return self.build(cfg, split, train=train, transform=transform)

    def class_names(self, cfg: DataCfg) -> list[str] | None:
        if self.names is None:
            return None
        names = self.names(cfg) if callable(self.names) else self.names
        return None if names is None else [str(n) for n in names]


def reader(name: str, *, class_names: Sequence[str] | ClassNames | None = None, raw_images: bool = False,
           preflight: bool = True, folder_layout: bool = False) -> Callable[[Builder], Builder]:
    """Decorator: register a builder in ``registry.DATASETS`` as a :class:`Reader`.

    Args:
        name: the ``data.dataset`` value; registering it twice is an error.
        class_names: the dataset's class names, a fixed sequence or ``cfg -> names``
            (None: it has none, and ``data.class_names`` or ``class_0..`` are used).
        raw_images, preflight, folder_layout: see :class:`Reader`.
    """

    def add(build: Builder) -> Builder:
        register(DATASETS, name)(RegisteredReader(name, build, class_names, raw_images, preflight, folder_layout))
        return build

    return add


def as_reader(name: str, entry: Callable) -> Reader:
    """``entry`` if it is a :class:`Reader`, else a plain builder function put into
    ``DATASETS`` by hand (a plugin, a test) as one with the defaults, except for the
    ``class_names`` and ``raw_images`` attributes the function may carry."""
    if isinstance(entry, Reader):
        return entry
    return RegisteredReader(name, entry, getattr(entry, "class_names", None),
                            raw_images=bool(getattr(entry, "raw_images", False)))


def get_reader(name: str) -> Reader:
    """The reader registered as ``name``, or a ConfigError listing the valid names."""
    try:
        return as_reader(name, lookup(DATASETS, name, "dataset"))
    except KeyError as err:
        raise ConfigError(f"data.dataset: {err.args[0]}") from None
