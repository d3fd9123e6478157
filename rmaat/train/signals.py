"""SIGINT and SIGTERM during training: routed to the trainer's stop request, then restored.

The trainer finishes the current step, saves ``last.pt`` and ends the session when asked
(:meth:`rmaat.train.trainer.Trainer.request_stop`); this module only installs that handler for
the length of the loop. Python delivers signals to the main thread alone, so a trainer running
in another thread (the experiment runner's in-process jobs) leaves the handlers as they are.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals(handler: Callable[..., Any]) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``handler(signum, frame)`` inside the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
