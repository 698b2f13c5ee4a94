"""Background jobs of the annotation server, and "predict the rest".

A :class:`Job` runs one function at a time in a daemon thread and keeps a status dict the
page polls (``state``: ``idle`` | ``running`` | ``done`` | ``failed``, plus what the job
reports). :class:`ModelSlot` holds the model that proposes, so a retrain can swap it while
requests keep using the old one until the swap.

:func:`predict_rest` is the "predict the rest" job: the current model segments every
unlabelled image; each prediction is saved as a proposal (``.pixelwise-annotate/proposals``)
that the page offers to accept or correct, and its uncertainty (entropy, margin) goes to
``uncertainty.json`` for "next most useful image".
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..errors import PixelwiseError
from .model_proposals import ModelProposer
from .store import AnnotationStore
from .uncertainty import image_uncertainty

__all__ = ["Job", "JobBusy", "ModelSlot", "predict_rest", "UNCERTAINTY_FILE"]

UNCERTAINTY_FILE = "uncertainty.json"


class JobBusy(Exception):
    """The job is already running (the client's 409)."""


class ModelSlot:
    """The current :class:`ModelProposer` (or None), swappable while the server runs."""

    def __init__(self, proposer: ModelProposer | None = None) -> None:
        self._proposer = proposer
        self._lock = threading.Lock()

    def get(self) -> ModelProposer | None:
        with self._lock:
            return self._proposer

    def swap(self, proposer: ModelProposer) -> None:
        with self._lock:
            self._proposer = proposer


class Job:
    """One background task at a time, with a status dict (copied on read)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {"state": "idle"}
        self._thread: threading.Thread | None = None

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._status)

    def update(self, **values: Any) -> None:
        with self._lock:
            self._status.update(values)

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, work: Callable[[Job], dict[str, Any] | None], **initial: Any) -> dict[str, Any]:
        """Run ``work(self)`` in a thread; :class:`JobBusy` if one is running."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise JobBusy(f"{self.name} is already running (started {self._status.get('started')}); wait for it "
                              f"or poll GET /v1/annotate/{self.name}")
            self._status = {"state": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S"), **initial}

            def run() -> None:
                try:
                    result = work(self) or {}
                    self.update(state="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S"), **result)
                except PixelwiseError as err:
                    self.update(state="failed", error=str(err))
                except Exception as err:  # a bug must show on the page, not vanish with the thread
                    self.update(state="failed", error=f"{type(err).__name__}: {err}",
                                traceback=traceback.format_exc(limit=8))

            self._thread = threading.Thread(target=run, name=f"pixelwise-annotate-{self.name}", daemon=True)
            self._thread.start()
            return dict(self._status)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job ends (for tests and scripts); returns the final status."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status()


def predict_rest(store: AnnotationStore, slot: ModelSlot, job: Job, *, overwrite: bool = False) -> dict[str, Any]:
    """Predict every unlabelled image (those without a proposal unless ``overwrite``) with the
    current model; save proposals and uncertainties. Returns a summary."""
    proposer = slot.get()
    if proposer is None:
        raise PixelwiseError("no model to predict with: start `pixelwise annotate` with --model MODEL_DIR, or "
                             "label a few images and retrain")
    labelled = set(store.labelled())
    scores = store.read_state(UNCERTAINTY_FILE, {})
    todo = [e.name for e in store.entries() if e.name not in labelled
            and (overwrite or scores.get(e.name, {}).get("model") != proposer.source
                 or not store.proposal_path(e.name).is_file())]
    job.update(done=0, total=len(todo), model=proposer.source)
    for i, name in enumerate(todo, start=1):
        labels, probs = proposer.predict(store.image(name), name)
        store.save_proposal(name, labels)
        scores[name] = {**image_uncertainty(probs), "model": proposer.source}
        if i % 16 == 0 or i == len(todo):  # a killed server keeps most of the work
            store.write_state(UNCERTAINTY_FILE, scores)
        job.update(done=i)
    return {"predicted": len(todo), "total": len(todo), "done": len(todo)}
