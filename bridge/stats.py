"""Opt-in introspection: on SIGUSR1 the running bridge logs ONE line of counters, for admins and soak tests.

    kill -USR1 <bridge pid>
    ... INFO bridge.stats: stats: calls=2 inbound=1 outbound=1 dialogs=2 transactions=1 tasks=57 threads=3
        rtp_ports=2 fds=41 rss_kib=98304

- ``calls`` (``inbound``/``outbound``): call sessions the call manager holds;
- ``dialogs`` / ``transactions``: SIP dialogs and live SIP transactions of the user agent;
- ``tasks``: asyncio tasks of the event loop; ``threads``: Python threads;
- ``rtp_ports``: RTP ports the allocator has handed out and not yet released (``media.port_start..port_end``);
- ``fds`` and ``rss_kib``: open file descriptors and resident memory, from /proc (``-`` where there is no /proc).

The line is logged at INFO whatever ``logging.level`` is. Collecting it is cheap (no gc walk, no I/O beyond
/proc/self), so it is safe on a busy bridge. When every call has ended, ``calls``, ``dialogs``, ``rtp_ports``
and (after the SIP timers, ~64*T1) ``transactions`` are back to 0, and ``tasks`` and ``fds`` to their idle values.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from dataclasses import astuple, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Bridge

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BridgeStats:
    calls: int
    inbound: int
    outbound: int
    dialogs: int
    transactions: int | None
    tasks: int
    threads: int
    rtp_ports: int
    fds: int | None
    rss_kib: int | None

    def line(self) -> str:
        pairs = zip((f.name for f in fields(self)), astuple(self), strict=True)
        return "stats: " + " ".join(f"{name}={'-' if value is None else value}" for name, value in pairs)


def _sized(obj: Any, *names: str) -> int | None:
    """Sum of len() of the named attributes; None if one is missing (the internals moved: say so, not 0)."""
    total = 0
    for name in names:
        value = getattr(obj, name, None)
        if value is None:
            return None
        total += len(value)
    return total


def open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the descriptor listdir itself held
    except OSError:
        return None


def rss_kib() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def collect(bridge: Bridge) -> BridgeStats:
    """Counters of the running bridge; call from its event loop."""
    manager = bridge.calls
    inbound, outbound = len(manager.inbound), len(manager.outbound)
    return BridgeStats(
        calls=inbound + outbound, inbound=inbound, outbound=outbound,
        dialogs=len(bridge.ua.dialogs),
        # the transaction layer has no public counter: read its two tables (None if they are renamed)
        transactions=_sized(bridge.ua.transactions, "_clients", "_servers"),
        tasks=len(asyncio.all_tasks()),
        threads=threading.active_count(),
        rtp_ports=len(manager.ports.in_use),
        fds=open_fds(),
        rss_kib=rss_kib(),
    )


def log_stats(bridge: Bridge) -> None:
    try:
        log.info("%s", collect(bridge).line())
    except Exception:  # a diagnostics request must never disturb the bridge
        log.exception("collecting stats failed")


def log_stats_on_signal(loop: asyncio.AbstractEventLoop, bridge: Bridge, sig: int = signal.SIGUSR1) -> None:
    """Log one stats line each time ``sig`` arrives (handled in the event loop, not in signal context)."""
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)  # asked for explicitly: shown even when logging.level is WARNING
    loop.add_signal_handler(sig, log_stats, bridge)
