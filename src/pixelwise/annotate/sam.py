"""Promptable proposals from a Segment Anything model (Kirillov et al., "Segment Anything", ICCV 2023)
through Hugging Face transformers' ``SamModel``, when its weights are on disk.

``SAM_DIR`` is a folder as ``SamModel.save_pretrained`` writes it (``config.json`` +
``model.safetensors``, and the processor's ``preprocessor_config.json`` /
``processor_config.json``); it is loaded with ``local_files_only=True``, so nothing is
downloaded. Without a saved processor, one is built for the model's input size (longest
side resized to ``vision_config.image_size``, padded square, ImageNet normalisation).

The image embedding (the expensive ViT pass) is computed once per image and reused for
every prompt on it. A box goes in as ``input_boxes``, clicks and scribble points as
``input_points`` with labels 1 (positive) / 0 (negative). With several candidate masks
(a lone click is ambiguous: part, object or group), the one with the highest predicted IoU
is returned; the mask is then kept inside the box, if one was drawn.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .prompts import Prompt

__all__ = ["SamProposer", "load_sam"]


def load_sam(folder: str | Path, *, device: str = "cpu") -> SamProposer:
    """The SAM model saved in ``folder``; :class:`ConfigError` if the folder holds no SAM model,
    :class:`~pixelwise.errors.MissingDependencyError` (naming ``pixelwise[sam]``) without transformers."""
    from ..optional import require

    transformers = require("transformers", "SAM proposals (--sam)")
    SamModel, SamProcessor = transformers.SamModel, transformers.SamProcessor
    SamImageProcessor = require("transformers.models.sam.image_processing_sam", "SAM proposals").SamImageProcessor
    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"--sam {str(folder)!r} has no config.json; give a folder written by "
                          f"SamModel.save_pretrained (e.g. a local copy of facebook/sam-vit-base)")
    try:
        model = SamModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--sam {str(folder)!r} cannot be loaded as a SamModel ({err})") from None
    try:
        processor = SamProcessor.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError):
        side = int(model.config.vision_config.image_size)
        processor = SamProcessor(image_processor=SamImageProcessor(size={"longest_edge": side},
                                                                   pad_size={"height": side, "width": side}))
    return SamProposer(model.to(device).eval(), processor, device=device, source=str(folder))


class SamProposer:
    """``propose(image, prompt, key)`` with a ``SamModel`` and its ``SamProcessor``."""

    def __init__(self, model, processor, *, device: str = "cpu", source: str = "") -> None:
        self.model, self.processor, self.device, self.source = model, processor, torch.device(device), source
        self._lock = threading.Lock()
        self._embedded: tuple[tuple, dict] | None = None  # (image key, embeddings + sizes) of the last image

    def _embed(self, image: np.ndarray, key: str) -> dict:
        cache_key = (key, image.shape)
        if self._embedded is not None and self._embedded[0] == cache_key:
            return self._embedded[1]
        inputs = self.processor(images=image, return_tensors="pt")
        with torch.no_grad():
            embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device))
        entry = {"embeddings": embeddings, "original_sizes": inputs["original_sizes"],
                 "reshaped_input_sizes": inputs["reshaped_input_sizes"]}
        self._embedded = (cache_key, entry)
        return entry

    @torch.no_grad()
    def propose(self, image: np.ndarray, prompt: Prompt, key: str) -> np.ndarray:
        """``(H, W)`` bool object mask for ``prompt``."""
        with self._lock:
            entry = self._embed(image, key)
            points = prompt.points()
            kwargs = {}
            if prompt.box is not None:
                kwargs["input_boxes"] = [[list(map(float, prompt.box))]]
            if points:
                kwargs["input_points"] = [[[[x, y] for x, y, _ in points]]]
                kwargs["input_labels"] = [[[1 if positive else 0 for _, _, positive in points]]]
            encoded = self.processor(images=image, return_tensors="pt", **kwargs)
            call = {name: encoded[name].to(self.device) for name in ("input_boxes", "input_points", "input_labels")
                    if name in encoded}
            # One box says which object; a lone click does not, so ask for SAM's three candidates.
            multimask = prompt.box is None and len(points) == 1
            out = self.model(image_embeddings=entry["embeddings"], multimask_output=multimask, **call)
            masks = self.processor.image_processor.post_process_masks(
                out.pred_masks.cpu(), entry["original_sizes"], entry["reshaped_input_sizes"])[0]
            scores = out.iou_scores.cpu()[0, 0]
            best = int(scores.argmax()) if multimask else 0
            mask = masks[0, best].numpy().astype(bool)
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            inbox = np.zeros_like(mask)
            inbox[y0:y1, x0:x1] = True
            mask &= inbox
        return mask
