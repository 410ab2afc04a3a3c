"""Opt-in introspection: on SIGUSR1 the running bridge logs ONE line of counters, for admins and soak tests.

    kill -USR1 <bridge pid>
    ... INFO bridge.stats: stats: calls=2 inbound=1 outbound=1 dialogs=2 transactions=1 tasks=27 threads=4
        rtp_ports=2 fds=23 rss_kib=98304 py_blocks=612345 task_kinds=RoomQueues._worker:10,RequestHandler.start:4,...

- ``calls`` (``inbound``/``outbound``): call sessions the call manager holds;
- ``dialogs`` / ``transactions``: SIP dialogs and live SIP transactions of the user agent;
- ``tasks``: asyncio tasks of the event loop, and ``task_kinds`` the same by coroutine (most first), to tell a
  leak from what comes and goes by itself: ``RequestHandler.start`` is one HTTP connection from the homeserver
  (there until the homeserver drops it), ``RoomQueues._worker`` one room's event queue (ends after 30 s idle);
- ``threads``: Python threads;
- ``rtp_ports``: RTP ports the allocator has handed out and not yet released (``media.port_start..port_end``);
- ``fds`` and ``rss_kib``: open file descriptors and resident memory, from /proc (``-`` where there is no /proc);
- ``py_blocks``: memory blocks the Python allocator has handed out (``sys.getallocatedblocks()``): when RSS grows
  and this does not, the growth is below Python (C libraries, malloc fragmentation), not leaked Python objects.

The line is logged at INFO whatever ``logging.level`` is. Collecting it is cheap (no gc walk, no I/O beyond
/proc/self), so it is safe on a busy bridge. When every call has ended, ``calls``, ``dialogs``, ``rtp_ports``
and (after the SIP timers, ~64*T1) ``transactions`` are back to 0, and ``tasks`` and ``fds`` to their idle values.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field, fields
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
    py_blocks: int
    task_kinds: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        pairs = [(f.name, getattr(self, f.name)) for f in fields(self) if f.name != "task_kinds"]
        kinds = ",".join(f"{name}:{count}" for name, count in self.task_kinds.items())
        return "stats: " + " ".join(f"{name}={'-' if value is None else value}" for name, value in pairs) + (
            f" task_kinds={kinds}" if kinds else "")


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


def task_kinds(tasks: set[asyncio.Task[Any]]) -> dict[str, int]:
    """Tasks counted by coroutine (``CallSession._run``), most frequent first."""
    kinds = Counter(str(getattr(t.get_coro(), "__qualname__", None) or t.get_name()) for t in tasks)
    return dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))


def collect(bridge: Bridge) -> BridgeStats:
    """Counters of the running bridge; call from its event loop."""
    manager = bridge.calls
    tasks = asyncio.all_tasks()
    inbound, outbound = len(manager.inbound), len(manager.outbound)
    return BridgeStats(
        calls=inbound + outbound, inbound=inbound, outbound=outbound,
        dialogs=len(bridge.ua.dialogs),
        # the transaction layer has no public counter: read its two tables (None if they are renamed)
        transactions=_sized(bridge.ua.transactions, "_clients", "_servers"),
        tasks=len(tasks),
        threads=threading.active_count(),
        rtp_ports=len(manager.ports.in_use),
        fds=open_fds(),
        rss_kib=rss_kib(),
        py_blocks=sys.getallocatedblocks(),
        task_kinds=task_kinds(tasks),
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
