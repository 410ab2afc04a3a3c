"""Accepting TCP/TLS connections by hand, under limits, without ever spinning on a full descriptor table.

asyncio's own accept loop accepts whatever arrives and reports each failed accept as an error; an attacker
holding idle connections then owns every descriptor. Here each accepted socket first passes `Admission` (a
total and a per-source-IP cap: over it the socket is closed at once), and EMFILE/ENFILE refuses the waiting
connection through a spare descriptor kept for that purpose, pauses accepting briefly and logs one line per
interval.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable

from bridge.sip.logs import RateLimitedLog

logger = logging.getLogger(__name__)

Address = tuple[str, int]
ACCEPTS_PER_WAKEUP = 64  # bounded work per readiness event: other sockets get their turn
EXHAUSTED_PAUSE = 0.5  # seconds without accepting after EMFILE/ENFILE
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PEER_GONE = frozenset({errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO, errno.EPERM})


class Admission:
    """Counts accepted connections in total and per source IP. Sources for which `exempt(ip)` holds (the
    trunk: some SBCs open a connection per call) skip the per-source cap, never the total."""

    def __init__(self, max_total: int, max_per_source: int, exempt: Callable[[str], bool] | None = None) -> None:
        self.max_total = max_total
        self.max_per_source = max_per_source
        self._exempt = exempt
        self.total = 0
        self._per_source: dict[str, int] = {}

    def admit(self, ip: str) -> bool:
        count = self._per_source.get(ip, 0)
        if self.total >= self.max_total:
            return False
        if count >= self.max_per_source and not (self._exempt is not None and self._exempt(ip)):
            return False
        self._per_source[ip] = count + 1
        self.total += 1
        return True

    def release(self, ip: str) -> None:
        count = self._per_source.get(ip, 0)
        if count <= 1:
            self._per_source.pop(ip, None)
        else:
            self._per_source[ip] = count - 1
        if count:
            self.total -= 1

    def count(self, ip: str) -> int:
        return self._per_source.get(ip, 0)


class StreamServer:
    """One listening socket. `on_accept(sock, peer)` gets each admitted, non-blocking socket and owns it
    (and must call `admission.release(peer ip)` once it is closed)."""

    def __init__(self, sock: socket.socket, admission: Admission,
                 on_accept: Callable[[socket.socket, Address], None]) -> None:
        self.sock = sock
        self._admission = admission
        self._on_accept = on_accept
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self._resume: asyncio.TimerHandle | None = None
        self._spare: int | None = _open_spare()
        self.refused = 0  # over a limit
        self.exhausted = 0  # EMFILE/ENFILE
        self._log_refused = RateLimitedLog(logger, 10.0)
        self._log_exhausted = RateLimitedLog(logger, 10.0)

    @classmethod
    def listen(cls, host: str, port: int, admission: Admission,
               on_accept: Callable[[socket.socket, Address], None], backlog: int = 128) -> StreamServer:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        server = cls(sock, admission, on_accept)
        server._start_reading()
        return server

    def is_serving(self) -> bool:
        """Open (possibly pausing accepts for a moment after descriptor exhaustion)."""
        return self.sock.fileno() != -1

    def close(self) -> None:
        self._stop_reading()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self.sock.close()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None

    def _start_reading(self) -> None:
        self._resume = None
        if not self._reading and self.sock.fileno() >= 0:
            self._loop.add_reader(self.sock.fileno(), self._accept_ready)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _accept_ready(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _PEER_GONE:
                    continue
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._out_of_descriptors(exc)
                    return
                logger.warning("accept failed on %s: %s; pausing", self.sock.getsockname(), exc)
                self._pause()
                return
            ip = str(peer[0])
            if not self._admission.admit(ip):
                self.refused += 1
                _close_now(conn)
                self._log_refused("refusing TCP/TLS connection from %s: %d connections from it, %d in total "
                                  "(limits %d / %d)", ip, self._admission.count(ip), self._admission.total,
                                  self._admission.max_per_source, self._admission.max_total)
                continue
            conn.setblocking(False)
            try:
                self._on_accept(conn, (ip, int(peer[1])))
            except Exception:
                self._admission.release(ip)
                conn.close()
                logger.exception("cannot serve connection from %s", ip)

    def _out_of_descriptors(self, exc: OSError) -> None:
        """Refuse the connection at the head of the queue (through the spare descriptor), then pause: the
        kernel keeps the socket readable, so retrying at once would spin."""
        self.exhausted += 1
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
            try:
                conn, _ = self.sock.accept()
                _close_now(conn)
            except OSError:
                pass
            self._spare = _open_spare()
        self._log_exhausted("out of file descriptors (%s): refusing new TCP/TLS connections", exc.strerror)
        self._pause()

    def _pause(self) -> None:
        self._stop_reading()
        if self._resume is None:
            self._resume = self._loop.call_later(EXHAUSTED_PAUSE, self._start_reading)


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


def _close_now(conn: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0): a refused peer learns at once and no TIME_WAIT is left behind."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    conn.close()
