"""Turn SIGTERM/SIGINT (Ctrl-C, Ctrl-Break on Windows) into setting an asyncio.Event."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


__all__ = ["stop_on_signals"]


@contextmanager
def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Iterator[list[int]]:
    """Set ``stop`` when the process is asked to terminate, for the duration of the block.

    POSIX uses the loop's signal handlers (SIGTERM, SIGINT). Windows has no
    ``add_signal_handler``: plain handlers for SIGINT and SIGBREAK hand over to
    the loop with ``call_soon_threadsafe``.

    Yields:
        The numbers of the signals received, in order (for an exit code).

    """
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()

    if sys.platform == "win32":
        names = ("SIGINT", "SIGBREAK", "SIGTERM")
        previous: dict[int, Any] = {}

        def handler(signum: int, frame: object) -> None:
            loop.call_soon_threadsafe(on_signal, signum)

        for name in names:
            signum = getattr(signal, name, None)
            if signum is not None:
                previous[signum] = signal.signal(signum, handler)
        try:
            yield received
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)
        return
    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
        installed.append(signum)
    try:
        yield received
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
