"""A media worker process: runs the ``CallMedia`` of the calls the bridge placed on it.

Started by ``worker_pool.WorkerPool`` as ``python -m bridge.media.worker FD`` where FD is its end of a Unix
``socketpair``. Signalling never runs here: the bridge sends the facade calls of each call in order
(``worker_ipc``), this process applies them to a real ``CallMedia`` and reports failures, DTMF and counters.
Each call's commands run one after the other (one queue and task per call), so their order is kept while
calls run side by side. The process exits when the bridge closes the socket (or dies).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Any

from bridge import event_loop
from bridge.logs import call_logger, setup_logging

from . import fastrelay
from .call_media import CallMedia
from .errors import MediaError
from .ice import restrict_host_addresses
from .ports import PortAllocator
from .settings import MediaSettings
from .worker_ipc import MediaView, WorkerInit, frame, read_message

log = logging.getLogger("bridge.media.worker")
_NO_PORTS = PortAllocator("127.0.0.1", 1024, 1026)  # replaced by the call's own port at open_rtp

# Commands a call may receive, and whether they are awaited on this side. Anything else is refused, so a
# typo in the bridge is an error and not a silent no-op.
ASYNC_COMMANDS = frozenset({
    "set_webrtc_offer", "create_webrtc_answer", "renegotiate_webrtc", "reoffer_webrtc", "apply_webrtc_reanswer",
    "create_webrtc_offer", "set_webrtc_answer", "add_webrtc_candidates", "close",
})
SYNC_COMMANDS = frozenset({
    "set_signalling_peer",
    "record_early_audio", "take_early_audio", "rollback_webrtc_offer", "start", "set_hold", "send_dtmf",
    "leave_far_end",
})


class WorkerCall:
    def __init__(self, worker: MediaWorker, key: int, ids: dict[str, str]) -> None:
        self.worker = worker
        self.key = key
        self.log = call_logger("bridge.media.worker", ids.get("call_id", "-"), ids.get("sip_call_id", "-"))
        self.media: CallMedia | None = None
        self.queue: asyncio.Queue[tuple[int, str, tuple[Any, ...]]] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            req, method, args = await self.queue.get()
            try:
                value = await self._apply(method, args)
            except Exception as exc:  # reported to the bridge, which raises it where the facade was awaited
                if req:
                    self.worker.send_error(req, exc)
                else:
                    self.log.warning("media command %s failed: %s", method, exc)
            else:
                if req:
                    # the counters ride along: codecs and the like are current the moment a step completes
                    view = media_view(self.media) if self.media is not None else None
                    self.worker.send(("reply", req, True, value, self.key, view))
            if method == "close":
                self.worker.calls.pop(self.key, None)
                return

    async def _apply(self, method: str, args: tuple[Any, ...]) -> Any:
        if method == "ids":
            self.log.set_ids(**args[0])
            return None
        if self.media is None:
            if method == "close":
                return None
            self.media = CallMedia(self.worker.settings, _NO_PORTS, log=self.log)
            self.media.on_failure = self._failed
            self.media.on_dtmf = self._dtmf
        media = self.media
        if method == "open_rtp":
            (port,) = args
            # a one-port range: the bridge allocated the port, this process only binds it
            media.ports = PortAllocator(self.worker.settings.rtp_host, port, port + 1)
            await media.open_rtp()
            return port
        if method == "close":
            await media.close()
            return media.stats()
        # the bridge process negotiated the SIP side (remote_media.py): its outcome is adopted as it is
        if method == "set_sip_offer":
            media._sip_offer = args[0]
            return None
        if method == "apply_negotiated":
            media._apply_negotiated(args[0])
            return None
        if method == "set_srtp":  # SDES keys negotiated in the bridge process (see RemoteCallMedia._set_srtp)
            media._set_srtp(args[0])
            return None
        if method == "collect_early_audio":
            return media.take_early_audio()
        if method == "leave_far_end":
            media.rtp_leg.leave_far_end()
            return None
        if method in ASYNC_COMMANDS:
            return await getattr(media, method)(*args)
        if method in SYNC_COMMANDS:
            return getattr(media, method)(*args)
        raise MediaError(f"unknown media command {method!r}")

    def _failed(self, reason: str) -> None:
        stats = self.media.stats() if self.media is not None else None
        self.worker.send(("failure", self.key, reason, stats))

    def _dtmf(self, digit: str, direction: str) -> None:
        self.worker.send(("dtmf", self.key, digit, direction))


def media_view(media: CallMedia) -> MediaView:
    """What the bridge process keeps of a call's media between reports."""
    leg = media.rtp_leg
    return MediaView(media.stats(), media.webrtc_connection_state, leg.latched, leg.remote)


class ForwardLogs(logging.Handler):
    """Sends this process's log records to the bridge, which logs them with its own handlers (format, file,
    rotation: one log for the whole bridge). The message is formatted here; the bridge's formatter escapes it."""

    def __init__(self, worker: MediaWorker) -> None:
        super().__init__()
        self.worker = worker

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {
                "name": record.name, "levelno": record.levelno, "levelname": record.levelname,
                "msg": record.getMessage(), "pathname": record.pathname, "lineno": record.lineno,
                "funcName": record.funcName, "created": record.created, "msecs": record.msecs,
                "process": record.process, "threadName": record.threadName,
                "exc_text": logging.Formatter().formatException(record.exc_info) if record.exc_info else None,
            }
            for key in ("call_id", "sip_call_id"):
                if hasattr(record, key):
                    fields[key] = getattr(record, key)
            self.worker.send(("log", fields))
        except Exception:
            self.handleError(record)


class MediaWorker:
    def __init__(self, init: WorkerInit, writer: asyncio.StreamWriter) -> None:
        self.init = init
        self.settings: MediaSettings = init.settings
        self.writer = writer
        self.calls: dict[int, WorkerCall] = {}

    def send(self, message: tuple[Any, ...]) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame(message))

    def send_error(self, req: int, exc: Exception) -> None:
        try:
            message = frame(("reply", req, False, exc))
        except Exception:  # an exception that does not pickle (a library's own type) still ends the wait
            message = frame(("reply", req, False, MediaError(f"{type(exc).__name__}: {exc}")))
        if not self.writer.is_closing():
            self.writer.write(message)

    def command(self, key: int, req: int, method: str, args: tuple[Any, ...]) -> None:
        call = self.calls.get(key)
        if call is None:
            if method == "close":  # nothing was opened for it here
                if req:
                    self.send(("reply", req, True, None))
                return
            call = self.calls[key] = WorkerCall(self, key, {})
        call.queue.put_nowait((req, method, args))

    async def report_stats(self) -> None:
        while True:
            await asyncio.sleep(self.init.stats_interval_s)
            snapshot = {key: media_view(c.media) for key, c in self.calls.items() if c.media is not None}
            if snapshot:
                self.send(("stats", snapshot))

    async def close_all(self) -> None:
        for call in list(self.calls.values()):
            call.task.cancel()
            if call.media is not None:
                await call.media.close()


async def serve(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    first = await read_message(reader)
    if first is None or first[0] != "init" or not isinstance(first[1], WorkerInit):
        return 2
    init: WorkerInit = first[1]
    setup_logging(init.log_level, init.log_format, loggers=init.log_loggers)  # levels as in the bridge
    restrict_host_addresses(init.ice_host_addresses)  # a process-wide aioice setting: made here too
    worker = MediaWorker(init, writer)
    logging.getLogger().handlers[:] = [ForwardLogs(worker)]
    worker.send(("ready", os.getpid()))
    stats = asyncio.get_running_loop().create_task(worker.report_stats())
    log.info("media worker %d running (pid %d, %s event loop, %s)", init.index, os.getpid(),
             type(asyncio.get_running_loop()).__module__.split(".")[0], fastrelay.describe())
    try:
        while True:
            message = await read_message(reader)
            if message is None:
                break  # the bridge closed our socket (stop) or is gone
            if message[0] == "cmd":
                _, key, req, method, args = message
                worker.command(key, req, method, args)
    finally:
        stats.cancel()
        logging.getLogger().handlers[:] = [logging.StreamHandler(sys.stderr)]  # the bridge no longer listens
        await worker.close_all()
        writer.close()
    log.info("media worker %d stopped", init.index)
    return 0


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m bridge.media.worker FD", file=sys.stderr)
        return 2
    # Ctrl-C or a service manager signals the whole process group: the bridge ends its calls first and then
    # closes our socket, which is when we exit (also when the bridge is killed outright)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return event_loop.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    sys.exit(main())
