"""Graceful stop on SIGINT / SIGTERM: finish the current step, save a checkpoint, exit.

A cluster scheduler sends SIGTERM before it kills a job (Slurm, Kubernetes) and ``torchrun``
forwards it to every worker; Ctrl-C sends SIGINT. The first signal only sets a flag that
the training loop reads after each optimiser step, so the checkpoint it then writes is
consistent (never half a step). A second SIGINT interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by the trainer after it saved a checkpoint at the step where a stop was requested."""


class StopRequest:
    """Context manager that turns SIGINT/SIGTERM into ``self.requested = True``.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: the user does not want to wait
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
