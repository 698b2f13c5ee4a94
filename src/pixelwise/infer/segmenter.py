"""``Segmenter``: a saved model with its preprocessing, class names and colours, ready to use.

    seg = Segmenter.from_pretrained("runs/demo/best")
    result = seg("photo.jpg", tile=512, tta="flip")
    result.labels            # (H, W) int64 class per pixel
    result.areas()           # {"background": 812345, "road": 1234, ...}
    write_image("color.png", result.colorize())

A model folder is ``config.json`` + ``model.safetensors`` (optionally ``README.md``, a model
card, and ``model.onnx`` for the ONNX Runtime backend): the same layout as a Hugging Face hub
model repository, read and written with no network and no pickle.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.intensity import Preprocess
from ..data.io import colorize, default_palette, overlay, read_image
from ..errors import ConfigError, DataError
from ..hub import load_model, resolve, save_model, split_provenance, write_card
from ..postprocess.decision import activation, check_mode, labels_from_probs
from ..registry import BACKENDS, PREDICTORS, lookup, register
from ..remote import push
from .runtime import model_function, normalize
from .tta import TTA, predict_probs

ImageLike = np.ndarray | Image.Image | str | os.PathLike

__all__ = ["SegmentResult", "Segmenter"]


@dataclass
class SegmentResult:
    """One image's segmentation.

    Attributes:
        labels: ``(H, W)`` int64 class index per pixel (binary: 0/1; multilabel: the present
            classes packed as bits, ``sum_c 2**c``; see :mod:`pixelwise.postprocess.decision`).
        probs: ``(C, H, W)`` float32 class probabilities (``return_probs=True``), else None.
        class_names: the ``C`` class names.
        palette: ``(K, 3)`` uint8 colours used by :meth:`colorize` and :meth:`overlay`.
    """

    labels: np.ndarray
    probs: np.ndarray | None
    class_names: list[str]
    palette: np.ndarray
    mode: str = "multiclass"

    def colorize(self) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB image of the class colours."""
        return colorize(self.labels, self.palette)

    def overlay(self, image: ImageLike, alpha: float = 0.5) -> np.ndarray:
        """Class colours blended over ``image`` (array, PIL image or path); class 0 stays clear."""
        return overlay(to_rgb(image), self.labels, self.palette, alpha)

    def areas(self) -> dict[str, int]:
        """Pixel count of every class (zero for absent classes), keyed by class name; for a
        multilabel model a pixel counts for every class present in it."""
        if self.mode == "multilabel":
            return {name: int(((self.labels >> i) & 1).sum()) for i, name in enumerate(self.class_names)}
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        return {name: int(counts[i]) for i, name in enumerate(self.class_names)}


def to_rgb(image: ImageLike) -> np.ndarray:
    """An image given as a path, PIL image or array -> ``(H, W, 3)`` uint8 RGB.

    Grey ``(H, W)`` / ``(H, W, 1)`` arrays are replicated to three channels, an alpha channel is dropped.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"), dtype=np.uint8)
    if not isinstance(image, np.ndarray):
        raise DataError(f"cannot segment a {type(image).__name__}; pass a NumPy array (H, W, 3) uint8, "
                        f"a PIL image, a file path, or a list of these")
    if image.dtype != np.uint8:
        raise DataError(f"image array has dtype {image.dtype}; pass uint8 pixels 0..255 "
                        f"(e.g. (x * 255).round().astype(np.uint8) for floats in 0..1)")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return np.ascontiguousarray(np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2))
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[:, :, :3])
    raise DataError(f"image array has shape {image.shape}; expected (H, W) grey or (H, W, 3) RGB")


@register(PREDICTORS, "semantic")  # the semantic task's predictor (Task.predictor)
class Segmenter:
    """A segmentation model plus everything needed to turn images into label maps.

    Args:
        model: a pixelwise model (built with ``create_model``) taking ``(N, C_in, H, W)``.
        mean, std: per-channel normalisation of pixels scaled to 0..1.
        class_names: one name per output channel.
        palette: ``(K, 3)`` uint8 class colours (default: the PASCAL VOC colour map).
        tile: default sliding-window tile (None: the model sees whole images).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        amp: ``"none"``, ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA) autocast.
        channels_last: run convolutions in NHWC memory layout (faster with oneDNN / tensor cores).
        config: the rest of the saved ``config.json`` (kept by :meth:`save_pretrained`).
        model_fn: replaces the PyTorch forward (e.g. an ONNX Runtime session): ``(N, C_in, H, W)``
            float32 tensor -> ``(N, C, H, W)`` logits.
        mode: ``"multiclass"`` (softmax, argmax), ``"binary"`` (one logit, sigmoid, ``z > 0``;
            ``class_names`` then names background and foreground) or ``"multilabel"``
            (a sigmoid per class, bit-packed labels).
        preprocessing: how images are read and normalised
            (:class:`~pixelwise.data.intensity.Preprocess`); None is RGB with ``mean``/``std``.
            A model trained with ``data.image_mode: raw`` takes images as stored (16-bit,
            float, N channels, ``.npy``), which :meth:`load_image` reads.
    """

    def __init__(self, model: nn.Module, *, mean: Sequence[float], std: Sequence[float], class_names: Sequence[str],
                 palette: np.ndarray | None = None, tile: int | None = None, device: str | torch.device = "cpu",
                 amp: str = "none", channels_last: bool = False, config: dict[str, Any] | None = None,
                 model_fn=None, mode: str = "multiclass", preprocessing: Preprocess | None = None) -> None:
        self.mode = check_mode(mode)
        self.preprocessing = preprocessing if preprocessing is not None else Preprocess(mean=mean, std=std)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.mean, self.std = list(mean), list(std)
        self.class_names = list(class_names)
        self.palette = default_palette(max(256, len(self.class_names))) if palette is None else \
            np.asarray(palette, dtype=np.uint8)
        self.tile = tile
        self.amp, self.channels_last = amp, channels_last
        self.config = dict(config or {})
        self.in_channels = int(getattr(model, "config", {}).get("in_channels", 3))
        self.model_fn = model_fn or model_function(self.model, device=self.device, amp=amp,
                                                   channels_last=channels_last)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, device: str = "cpu", amp: str = "none",
                        channels_last: bool = False, backend: str = "torch") -> Segmenter:
        """Load a saved model folder (``config.json`` + ``model.safetensors``).

        ``folder`` may be a Hub source, ``"hf://ORG/NAME[/FOLDER][@REVISION]"``: it is read from the
        local huggingface_hub cache, and downloaded first only when the cache lacks it (never with
        ``HF_HUB_OFFLINE=1``); see :mod:`pixelwise.remote`.

        ``backend="onnxruntime"`` runs the network with ONNX Runtime (CPU) instead of
        PyTorch, exporting ``model.onnx`` into the folder first if it is not there.
        ``backend="onnxruntime-int8"`` runs ``model.int8.onnx``, which
        ``pixelwise export FOLDER --int8 --calibrate IMAGES`` writes (it needs calibration
        images, so it is never made implicitly; see :mod:`pixelwise.export.quantize`).
        """
        if backend != "torch" and backend not in BACKENDS:
            raise ConfigError(f"backend={backend!r} is not known; use 'torch' or one of {', '.join(sorted(BACKENDS))}")
        folder = resolve(folder)
        model, config = load_model(folder, device=device)
        model_fn = None
        if backend != "torch":
            # Registered by pixelwise.export (imported with pixelwise): ONNX Runtime, its int8 file.
            model_fn = lookup(BACKENDS, backend, "backend")(model, folder)
        return cls.from_model(model, config, device=device, amp=amp, channels_last=channels_last,
                              model_fn=model_fn, where=repr(str(folder / "config.json")))

    @classmethod
    def from_model(cls, model: nn.Module, meta: dict[str, Any], *, device: str | torch.device = "cpu",
                   amp: str = "none", channels_last: bool = False, model_fn=None,
                   where: str = "the model's meta") -> Segmenter:
        """A model in memory (one just trained) with the ``meta`` a model folder records
        besides its weights (:meth:`SemanticTask.model_meta
        <pixelwise.tasks.semantic.SemanticTask.model_meta>`, or ``config.json``): its
        ``data`` section gives the class names, preprocessing and mode. ``where`` names
        ``meta``'s origin in the error for a missing ``data`` section."""
        data = meta.get("data")
        if not data or "mean" not in data or "num_classes" not in data:
            raise ConfigError(f"{where} has no 'data' section with num_classes, mean, std; "
                              f"save the model with save_model(model, folder, meta={{'data': {{...}}}})")
        names = data.get("class_names") or [f"class_{i}" for i in range(data["num_classes"])]
        mode = data.get("mode", "multiclass")
        if mode == "binary" and len(names) == 1:
            names = ["background", names[0]]
        rest = {k: v for k, v in meta.items() if k != "model"}
        return cls(model, mean=data["mean"], std=data["std"], class_names=names, palette=meta.get("palette"),
                   tile=meta.get("tile"), device=device, amp=amp, channels_last=channels_last, config=rest,
                   model_fn=model_fn, mode=mode, preprocessing=Preprocess.from_dict(data))

    def save_pretrained(self, folder: str | os.PathLike, *, model_card: bool = True, push_to_hub: bool = False,
                        repo_id: str | None = None, private: bool | None = None, token: str | None = None,
                        commit_message: str | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (and a ``README.md`` model card) to ``folder``.

        ``push_to_hub=True`` then uploads the folder to the Hugging Face Hub repository ``repo_id``
        (``"ORG/NAME"``, created when missing; ``private``, ``token`` and ``commit_message`` go to
        huggingface_hub), from where ``Segmenter.from_pretrained("hf://ORG/NAME")`` loads it
        (:mod:`pixelwise.remote`). The local folder is written first, so a failed upload loses nothing.
        """
        if push_to_hub and not repo_id:
            raise ConfigError("push_to_hub=True needs repo_id='ORG/NAME', the Hub repository to upload to")
        meta = dict(self.config)
        meta["data"] = {**meta.get("data", {}), "num_classes": self.num_outputs,
                        "class_names": self.class_names, **self.preprocessing.to_dict(), "mode": self.mode}
        meta["data"].setdefault("ignore_index", 255)
        if not np.array_equal(self.palette, default_palette(len(self.palette))):
            meta["palette"] = self.palette.tolist()
        if self.tile is not None:
            meta["tile"] = self.tile
        model = self.model.to(memory_format=torch.contiguous_format)
        folder = save_model(model, folder, meta)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if model_card:
            write_card(folder, split_provenance(getattr(model, "config", {}))[0], meta)
        if push_to_hub:
            push(folder, repo_id, private=private, token=token, commit_message=commit_message)
        return Path(folder)

    @property
    def raw(self) -> bool:
        """True for a model trained on stored pixel values (``data.image_mode: raw``)."""
        return self.preprocessing.raw

    def load_image(self, image: ImageLike) -> np.ndarray:
        """An image as this model reads it: ``(H, W, 3)`` uint8 RGB, or for a raw-mode model the
        stored ``(H, W, C)`` values (a path is read with every channel, an array is kept)."""
        if not self.raw:
            return to_rgb(image)
        if isinstance(image, (str, os.PathLike)):
            array = self.preprocessing.read(image)
        elif isinstance(image, Image.Image):
            array = np.asarray(image)
        elif isinstance(image, np.ndarray):
            array = image
        else:
            raise DataError(f"cannot segment a {type(image).__name__}; pass a NumPy array (H, W) or (H, W, C), "
                            f"a PIL image, a file path, or a list of these")
        array = array[:, :, None] if array.ndim == 2 else array
        if array.ndim != 3 or array.dtype.kind not in "biuf":
            raise DataError(f"image array has shape {array.shape} and dtype {array.dtype}; this model takes "
                            f"(H, W, {self.in_channels}) numbers")
        return array

    def decode(self, data: bytes, name: str = "upload") -> np.ndarray:
        """Encoded bytes (an upload) -> :meth:`load_image`'s array."""
        return self.preprocessing.decode(data, name)

    def display(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 to draw overlays on: the RGB image itself, or for a raw-mode model
        the first three channels (or the first, in grey), each stretched between its 1st and
        99th percentile."""
        if not self.raw:
            return image
        x = image[:, :, :3] if image.shape[2] >= 3 else np.repeat(image[:, :, :1], 3, axis=2)
        x = x.astype(np.float32)
        low, high = np.percentile(x.reshape(-1, 3), (1, 99), axis=0)
        x = (x - low) / np.maximum(high - low, 1e-12)
        return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``(H, W, 3)`` uint8 RGB (raw mode: the stored ``(H, W, C)``) -> ``(1, C_in, H, W)``
        normalised float32 on the device."""
        if self.raw:
            if image.shape[2] != self.in_channels:
                raise DataError(f"the image has {image.shape[2]} channel(s) but this model takes "
                                f"{self.in_channels} (it was trained on {self.in_channels}-channel images)")
            return self.preprocessing.tensor(image)[None].to(self.device)
        if self.in_channels == 1:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
        elif self.in_channels != 3:
            raise ConfigError(f"Segmenter handles 1- or 3-channel images; this model takes {self.in_channels} "
                              f"channels: call sliding_window / predict_probs on your own tensors")
        return normalize(image, self.mean, self.std)[None].to(self.device)

    @torch.no_grad()
    def __call__(self, image: ImageLike | list[ImageLike], *, tile: int | None = None, overlap: float = 0.25,
                 tta: bool | str | dict | TTA | None = False, crf: bool = False, return_probs: bool = False,
                 batch_size: int = 4, blend: str = "gaussian") -> SegmentResult | list[SegmentResult]:
        """Segment one image or a list of images (a list gives a list of results).

        Args:
            image: ``(H, W, 3)`` uint8 RGB or ``(H, W)`` grey array, PIL image, or file path (a
                raw-mode model: ``(H, W, C)`` stored values, or a file of them).
            tile: sliding-window tile size (None: the saved ``tile`` hint, else the whole image).
            overlap, blend, batch_size: sliding-window settings (see ``sliding_window``).
            tta: ``False``, ``"flip"``, ``"flip+scales"`` or ``dict(flips="hv", scales=[...])``.
            crf: refine the probabilities with a dense CRF (``pixelwise.postprocess.crf``).
            return_probs: also return the ``(C, H, W)`` probabilities.
        """
        if isinstance(image, (list, tuple)):
            return [self(im, tile=tile, overlap=overlap, tta=tta, crf=crf, return_probs=return_probs,
                         batch_size=batch_size, blend=blend) for im in image]
        rgb = self.load_image(image)
        if crf and self.raw:
            raise ConfigError("crf compares the colours of neighbouring RGB pixels; this model reads stored "
                              "pixel values (data.image_mode: raw): drop crf")
        x = self.preprocess(rgb)
        probs = predict_probs(self.model_fn, x, tta=tta, tile=tile if tile is not None else self.tile,
                              overlap=overlap, blend=blend, batch_size=batch_size,
                              num_classes=self.num_outputs, out_device="cpu", activation=activation(self.mode))[0]
        del x
        if probs.shape[0] != self.num_outputs:
            raise ConfigError(f"the model returns {probs.shape[0]} channels but a {self.mode} model with classes "
                              f"{self.class_names} has {self.num_outputs}; fix data.class_names in config.json")
        if crf and self.mode != "multiclass":
            raise ConfigError(f"crf refines softmax class probabilities; this model is {self.mode}: drop crf")
        if crf:
            # Imported here: pixelwise.postprocess loads SciPy, which must not be in the process
            # of every `import pixelwise` (with it, oneDNN backward crashed in the FCN-8s recipe test).
            from ..postprocess.crf import dense_crf

            probs = torch.as_tensor(dense_crf(rgb, probs, iterations=5), dtype=torch.float32)
        labels = labels_from_probs(probs[None], self.mode)[0].numpy()
        return SegmentResult(labels=labels, probs=probs.numpy() if return_probs else None,
                             class_names=self.class_names, palette=self.palette, mode=self.mode)

    @property
    def num_outputs(self) -> int:
        """Output channels of the network: 1 for a binary model, else one per class."""
        return 1 if self.mode == "binary" else len(self.class_names)

    def __repr__(self) -> str:
        name = getattr(self.model, "config", {}).get("name", type(self.model).__name__)
        return (f"Segmenter({name}, classes={self.class_names}, device={self.device}, amp={self.amp!r}, "
                f"channels_last={self.channels_last}, tile={self.tile})")
