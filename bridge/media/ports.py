"""Even RTP port allocation within a configured range."""

from __future__ import annotations

import time

from .errors import MediaError

QUARANTINE_S = 60.0  # long enough for a stream aimed at a dead call's port to give up


class PortAllocator:
    """Hands out even ports in ``[start, end)``; ``release`` returns them.

    Allocation rotates through the range so a just-released port is not reused at once
    (late packets of the previous call would land in the next one).
    """

    def __init__(self, host: str, start: int, end: int) -> None:
        if start < 0 or end > 65536 or start >= end:
            raise ValueError(f"invalid RTP port range [{start}, {end})")
        first = start + (start % 2)
        self.host = host
        self._ports = list(range(first, end, 2))
        if not self._ports:
            raise ValueError(f"RTP port range [{start}, {end}) holds no even port")
        self._used: set[int] = set()
        self._quarantined: dict[int, float] = {}  # port -> monotonic time it may be handed out again
        self._next = 0

    @property
    def in_use(self) -> frozenset[int]:
        return frozenset(self._used)

    @property
    def capacity(self) -> int:
        return len(self._ports)

    def allocate(self) -> int:
        for _ in range(len(self._ports)):
            port = self._ports[self._next]
            self._next = (self._next + 1) % len(self._ports)
            if port not in self._used and not self._is_quarantined(port):
                self._used.add(port)
                return port
        raise MediaError(f"no free RTP port in {self._ports[0]}-{self._ports[-1]} ({len(self._used)} in use)")

    def release(self, port: int) -> None:
        self._used.discard(port)

    def quarantine(self, port: int, seconds: float = QUARANTINE_S) -> None:
        """Skip ``port`` for ``seconds``: a call that died with a previous process may still have a stream
        aimed at it, which must not land in a new call."""
        until = time.monotonic() + seconds
        self._quarantined[port] = max(until, self._quarantined.get(port, 0.0))

    def _is_quarantined(self, port: int) -> bool:
        until = self._quarantined.get(port)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._quarantined[port]
        return False
