"""Per-transaction timer handles (RFC 3261 17: A..M) on the event loop's call_later."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Timers:
    """Named call_later handles owned by one transaction."""

    __slots__ = ("_handles", "_loop")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._handles: dict[str, asyncio.TimerHandle] = {}

    def start(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self.stop(name)
        self._handles[name] = self._loop.call_later(delay, callback)

    def stop(self, name: str) -> None:
        handle = self._handles.pop(name, None)
        if handle is not None:
            handle.cancel()

    def stop_all(self) -> None:
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()
