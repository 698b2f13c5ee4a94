"""Proposals from a trained pixelwise model: its prediction, restricted to what the prompt points at.

The model's classes are matched to the project's by name (a model trained on this
folder has the same list). For a prompt of class ``k`` the candidate region is where the
model's most probable class is ``k``; when ``k`` is not one of the model's classes it is
where the model sees any object (most probable class not the background). Then:

- a box keeps the part of the region inside the box;
- positive clicks/scribbles keep only the connected pieces (8-connected) that they touch
  (if the class region has none there, the object region is tried);
- negative clicks/scribbles drop the pieces they touch.

:meth:`ModelProposer.refine` ("model+grabcut" on the page) seeds GrabCut with that proposal.

The probabilities of the last few images are cached, so a series of prompts on one image
costs one forward pass.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
from scipy import ndimage

from ..infer.segmenter import Segmenter
from .prompts import Prompt

__all__ = ["ModelProposer"]

_EIGHT = np.ones((3, 3), bool)


class ModelProposer:
    """Wraps a :class:`~pixelwise.infer.segmenter.Segmenter` for the project's classes.

    Args:
        segmenter: the loaded model.
        classes: the project's class names (index = project class id).
        source: where the model came from (shown on the page).
    """

    def __init__(self, segmenter: Segmenter, classes: list[str], *, source: str = "") -> None:
        self.segmenter, self.source = segmenter, source
        names = list(segmenter.class_names)
        # project id -> model channel, and model channel -> project id (unknown names -> background 0)
        self.to_model = {i: names.index(n) for i, n in enumerate(classes) if n in names}
        self.to_project = np.array([classes.index(n) if n in classes else 0 for n in names], np.uint8)
        self._lock = threading.Lock()  # one forward pass at a time: the CPU has no spare cores for two
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def probs(self, image: np.ndarray, key: str) -> np.ndarray:
        """``(C_model, H, W)`` float32 probabilities of ``image`` (cached under ``key``)."""
        cache_key = (key, image.shape, id(self.segmenter))
        with self._lock:
            if cache_key in self._cache:
                self._cache.move_to_end(cache_key)
                return self._cache[cache_key]
            probs = self.segmenter(image, return_probs=True).probs
            self._cache[cache_key] = probs
            while len(self._cache) > 4:
                self._cache.popitem(last=False)
            return probs

    def predict(self, image: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(labels (H, W) uint8 in project ids, probabilities (C_model, H, W))``."""
        probs = self.probs(image, key)
        return self.to_project[probs.argmax(0)], probs

    def propose(self, image: np.ndarray, prompt: Prompt, key: str) -> np.ndarray:
        """``(H, W)`` bool object mask for ``prompt`` (see the module docstring)."""
        height, width = image.shape[:2]
        argmax = self.probs(image, key).argmax(0)
        objects = argmax != 0
        region = argmax == self.to_model[prompt.class_id] if prompt.class_id in self.to_model else objects
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            inbox = np.zeros((height, width), bool)
            inbox[y0:y1, x0:x1] = True
            region, objects = region & inbox, objects & inbox
            if region.sum() < 0.5 * objects.sum():
                # The box holds an object the model gives another class: the user's box and class say
                # what it is, so the model's object pixels are the proposal (its class is the prompt's).
                region = objects
        positive, negative = prompt.marks(height, width, positive=True), prompt.marks(height, width, positive=False)
        if positive.any():
            picked = _touching(region, positive)
            region = picked if picked.any() else _touching(objects, positive)
        if negative.any():
            region = region & ~_touching(region, negative)
        return region


    def refine(self, image: np.ndarray, prompt: Prompt, key: str) -> np.ndarray:
        """``(H, W)`` bool mask: GrabCut inside ``prompt.box`` seeded with :meth:`propose` (the model's
        object is "probably object", the rest of the box "probably background", its confident core
        fixed), so the image's colours correct the model's border and the model separates what
        colour alone cannot. Without a box it is :meth:`propose`."""
        from .classical import grabcut

        region = self.propose(image, prompt, key)
        if prompt.box is None:
            return region
        confident = self.probs(image, key).max(0) > 0.9
        core = ndimage.binary_erosion(region, structure=_EIGHT, iterations=2) & confident
        return grabcut(image, prompt, iterations=3, prior=region, sure=core)


def _touching(region: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """The connected pieces of ``region`` that share a pixel with ``marks``."""
    pieces, count = ndimage.label(region, structure=_EIGHT)
    if count == 0:
        return np.zeros_like(region)
    keep = np.zeros(count + 1, bool)
    keep[np.unique(pieces[marks])] = True
    keep[0] = False
    return keep[pieces]
