"""Ctrl-C during training: finish the step, save a checkpoint, then stop."""
from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["DeferredInterrupt", "StopRequested"]


class DeferredInterrupt:
    """Turns the first Ctrl-C into a flag checked between steps, so that a checkpoint never
    holds a half-finished update; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "DeferredInterrupt":
        # Signal handlers can only be set from the main thread.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


class StopRequested(KeyboardInterrupt):
    """Ctrl-C seen by the deferred handler, acted on between steps by every rank together."""

