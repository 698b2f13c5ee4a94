"""Dynamic batching: the forwards of concurrent requests of similar size run as one batch.

As in Triton's dynamic batcher and Ray Serve's ``@serve.batch``: a request's forward waits
at most ``max_wait_s`` for others to join it, and a batch holds at most ``max_batch``
images. "Similar size" means the same size once padded to the network stride
(``model.pad_multiple``): a pixelwise model zero-pads its input to that multiple anyway, so
padding here first gives the model the very tensor it would have made itself, and each
image's logits are cropped back to its own size. Tiles of a sliding window (all the same
size) and TTA variants batch the same way, since every forward goes through here.

The worker threads that decode images and post-process results call the :class:`Batcher`
instead of the model; one batching thread runs the batched forwards. So ``workers`` should
be at least ``max_batch``, else a batch can never fill.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import torch
import torch.nn.functional as F

__all__ = ["Batcher"]


class _Item:
    __slots__ = ("x", "key", "future", "arrived")

    def __init__(self, x: torch.Tensor, key: tuple) -> None:
        self.x, self.key, self.future, self.arrived = x, key, Future(), time.monotonic()


class Batcher:
    """A model function that batches calls made at the same time from many threads.

    Args:
        model_fn: ``(N, C_in, H, W) -> (N, K, H, W)`` logits (e.g. ``Segmenter.model_fn``).
        max_batch: most images in one forward.
        max_wait_s: longest time the first request of a batch waits for company.
        pad_multiple: inputs are zero-padded to a multiple of this before grouping (the
            model's own padding; 1 groups identical sizes only).

    Calling the batcher, ``batcher(x)``, blocks until ``x``'s batch has run and returns its
    logits. ``forwards`` and ``batched`` count the forwards run and the images in them.
    """

    def __init__(self, model_fn: Callable[[torch.Tensor], torch.Tensor], *, max_batch: int, max_wait_s: float,
                 pad_multiple: int = 1) -> None:
        self.model_fn = model_fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.multiple = max(1, int(pad_multiple))
        self.forwards = 0
        self.batched = 0
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="pixelwise-batcher", daemon=True)
        self._thread.start()

    def _key(self, x: torch.Tensor) -> tuple:
        """``(C, H, W)`` padded to the stride, plus dtype and device: what must agree within a batch."""
        m = self.multiple
        return (x.shape[1], math.ceil(x.shape[2] / m) * m, math.ceil(x.shape[3] / m) * m, str(x.dtype), str(x.device))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[0] >= self.max_batch:  # a volume, or already a full batch of tiles
            return self.model_fn(x)
        item = _Item(x, self._key(x))
        self._queue.put(item)
        return item.future.result()

    def close(self) -> None:
        """Stop the batching thread once the queued forwards have run."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        waiting: list[_Item] = []  # taken from the queue but not of the batch being formed
        while True:
            first = waiting.pop(0) if waiting else self._queue.get()
            if first is None:
                return
            batch, size = [first], first.x.shape[0]
            for other in [w for w in waiting if w.key == first.key]:
                if size + other.x.shape[0] <= self.max_batch:
                    waiting.remove(other)
                    batch.append(other)
                    size += other.x.shape[0]
            stop = False
            while size < self.max_batch:
                left = first.arrived + self.max_wait_s - time.monotonic()
                try:
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                if item.key == first.key and size + item.x.shape[0] <= self.max_batch:
                    batch.append(item)
                    size += item.x.shape[0]
                else:
                    waiting.append(item)
            self._run(batch)
            if stop:
                for item in waiting:
                    self._run([item])
                return

    def _run(self, batch: list[_Item]) -> None:
        try:
            _, height, width, _, _ = batch[0].key
            inputs = [F.pad(i.x, (0, width - i.x.shape[-1], 0, height - i.x.shape[-2])) for i in batch]
            out = self.model_fn(torch.cat(inputs) if len(inputs) > 1 else inputs[0])
            self.forwards += 1
            self.batched += len(batch)
            start = 0
            for item in batch:
                n, h, w = item.x.shape[0], item.x.shape[-2], item.x.shape[-1]
                item.future.set_result(out[start:start + n, ..., :h, :w])
                start += n
        except BaseException as err:  # every waiting request learns of the failure; the loop goes on
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
