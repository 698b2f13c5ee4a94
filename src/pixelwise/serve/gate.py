"""Admission and the worker pool: a request holds a place before its body is read, or gets 503.

A request to ``/v1/segment`` first takes a :class:`Ticket` from the :class:`Gate`. There are
``workers + max_queue`` tickets; without one the server answers 503 at once, before reading
a byte of the upload, so uploads in memory never exceed ``(workers + max_queue) * max_bytes``
however many clients send at the same time. With a ticket the request reads its body,
waits for one of ``workers`` threads and runs there.

A job that outlives its request's deadline (HTTP 504) keeps its thread until it ends,
because a thread cannot be killed; it also keeps its ticket until then, so the count of
images in memory stays within the bound, and ``/healthz`` reports it as busy.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .uploads import RequestError

__all__ = ["Gate", "Ticket"]


class Ticket:
    """One admitted request's place in the gate; :meth:`release` gives it back (once)."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self._job: asyncio.Future | None = None
        self._released = False

    def release(self) -> None:
        """Give the place back now, or, if this request's job still runs in a thread, when it ends."""
        if self._job is not None and not self._job.done():
            self._job.add_done_callback(lambda _: self._give_back())
        else:
            self._give_back()

    def _give_back(self) -> None:
        if not self._released:
            self._released = True
            self._gate.held -= 1

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Gate:
    """At most ``workers`` jobs run and at most ``max_queue`` more requests are admitted; the rest get 503.

    Counters (read by ``/healthz``): ``held`` tickets (admitted requests plus jobs that outlived
    their request), ``busy`` worker threads running a job now, and :attr:`queued` admitted
    requests not running (uploading or waiting for a worker).
    """

    def __init__(self, workers: int, max_queue: int, *,
                 hint: str = "use a smaller image or fewer options (tta, crf)") -> None:
        self.hint = hint  # what the 504 message suggests
        self.workers = workers
        self.capacity = workers + max_queue
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pixelwise-serve")
        self._slots: asyncio.Semaphore | None = None
        self._lock = threading.Lock()
        self.held = 0
        self.busy = 0

    @property
    def queued(self) -> int:
        """Admitted requests that are not running in a worker (reading their upload or waiting)."""
        return max(0, self.held - self.busy)

    @property
    def pending(self) -> int:
        """Requests in the server: running plus queued (the number the 503 message quotes)."""
        return max(self.held, self.busy)

    def admit(self) -> Ticket:
        """A place for one request, or :class:`RequestError` 503 when all are taken."""
        if self.held >= self.capacity:
            raise RequestError(503, "busy", f"the server is busy ({self.busy} of {self.workers} workers running, "
                                            f"{self.queued} requests queued); retry in a moment")
        self.held += 1
        return Ticket(self)

    def _counted(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        def job() -> Any:
            with self._lock:
                self.busy += 1
            try:
                return fn()
            finally:
                with self._lock:
                    self.busy -= 1
        return job

    async def execute(self, ticket: Ticket, fn: Callable[[], Any], *, deadline: float, timeout_s: float) -> Any:
        """Run ``fn`` in a worker thread for ``ticket``'s request; 503 if no worker frees up and
        504 if ``fn`` is not done by ``deadline`` (``time.monotonic()`` seconds, ``timeout_s``
        after the request arrived)."""
        if self._slots is None:  # made here, inside the running loop, not at app creation
            self._slots = asyncio.Semaphore(self.workers)
        try:
            if self._slots.locked():
                await asyncio.wait_for(self._slots.acquire(), timeout=max(0.0, deadline - time.monotonic()))
            else:
                await self._slots.acquire()  # free: take it even when the deadline has just passed
        except asyncio.TimeoutError:
            raise RequestError(503, "busy", "no worker became free before the request's deadline; retry later") \
                from None
        future = asyncio.get_running_loop().run_in_executor(self.pool, self._counted(fn))
        slots = self._slots
        future.add_done_callback(lambda _: slots.release())
        ticket._job = future
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise RequestError(504, "timeout", f"segmentation took longer than {timeout_s:.0f} s; {self.hint}") \
                from None

    async def run(self, fn: Callable[[], Any], timeout_s: float) -> Any:
        """Admit, run ``fn`` within ``timeout_s`` and release: :meth:`admit` + :meth:`execute`."""
        with self.admit() as ticket:
            return await self.execute(ticket, fn, deadline=time.monotonic() + timeout_s, timeout_s=timeout_s)
