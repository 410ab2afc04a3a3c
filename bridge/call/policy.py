"""Inbound trust decisions: which SIP sources may call, and how often (routing is in dialplan.py).

Pure functions over plain values so they are unit-tested without sockets. No SIP request ever
leads to an outbound call: inbound INVITEs can only ring Matrix users.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Sequence


class TrustedSources:
    def __init__(self, cidrs: Sequence[str]) -> None:
        self._nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def allows(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._nets if net.version == addr.version)


class RateLimiter:
    """Token bucket per source address; bounded number of tracked sources (oldest forgotten)."""

    def __init__(self, *, per_second: float, burst: int, max_sources: int = 4096) -> None:
        self._rate = per_second
        self._burst = float(burst)
        self._max = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, source: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(source, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[source] = (tokens, now)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return allowed
