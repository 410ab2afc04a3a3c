"""Media worker processes (``media.workers``): start them, place calls, restart one that dies.

The bridge's signalling stays in its one process; each call's media (aiortc, RTP, transcoding) runs in one of
N child processes (``bridge.media.worker``), so media uses every core. A new call goes to the worker with the
fewest calls. When a worker dies, only its calls are affected: each is told (``worker_lost``: the call
driver hangs up both sides as for any media failure) and a new worker takes the dead one's place.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from .call_media import MediaStats
from .errors import MediaError
from .settings import MediaSettings
from .worker_ipc import MediaView, WorkerInit, frame, read_message

log = logging.getLogger("bridge.media.worker_pool")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding the ``bridge`` package

START_TIMEOUT_S = 30.0  # importing aiortc on a loaded machine takes a few seconds
STOP_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 60.0  # no media call takes this long; a hung worker must not hold a call forever
RESTART_DELAY_S = (0.0, 1.0, 5.0)  # by how many times the slot failed in a row: a worker that cannot start
# is not restarted in a tight loop


class WorkerCallListener(Protocol):
    """What a worker tells one of its calls (``RemoteCallMedia``)."""

    def worker_failure(self, reason: str, stats: MediaStats | None) -> None: ...
    def worker_dtmf(self, digit: str, direction: str) -> None: ...
    def worker_view(self, view: MediaView) -> None: ...
    def worker_lost(self) -> None: ...


def default_workers() -> int:
    """One per core this process may run on (a cpuset / ``taskset`` limits it; a CPU quota does not)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class MediaWorkerProcess:
    """One child process and the calls placed on it."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self.calls: dict[int, WorkerCallListener] = {}
        self.started_at = 0.0
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._requests = itertools.count(1)

    @property
    def alive(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    @property
    def load(self) -> int:
        return len(self.calls)

    async def spawn(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        # the child imports the same ``bridge`` package as this process, wherever it was imported from
        root = _PACKAGE_ROOT
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge.media.worker", str(child.fileno()), pass_fds=(child.fileno(),),
                env=env, stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            child.close()
        self.pid = self.process.pid
        self.started_at = time.monotonic()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        writer.write(frame(("init", self.pool.init_for(self.index))))
        try:
            ready = await asyncio.wait_for(read_message(reader), START_TIMEOUT_S)
        except TimeoutError:
            ready = None
        if ready is None or ready[0] != "ready":
            writer.close()
            await self._reap(kill=True)
            raise MediaError(f"media worker {self.index} did not start")
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))
        log.info("media worker %d started (pid %d)", self.index, self.pid)

    def send(self, key: int, method: str, args: tuple[Any, ...] = ()) -> None:
        """A command nobody waits for (the sync facade methods); dropped when the worker is gone."""
        if self.alive:
            assert self._writer is not None
            self._writer.write(frame(("cmd", key, 0, method, args)))

    async def request(self, key: int, method: str, args: tuple[Any, ...] = (), timeout: float = REQUEST_TIMEOUT_S
                      ) -> Any:
        if not self.alive:
            raise MediaError(f"media worker {self.index} is gone")
        assert self._writer is not None
        req = next(self._requests)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req] = future
        self._writer.write(frame(("cmd", key, req, method, args)))
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._pending.pop(req, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while (message := await read_message(reader)) is not None:
                self._dispatch(message)
        except Exception:
            log.exception("media worker %d sent something unreadable", self.index)
        self._lost()

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "reply":
            req, ok, value = message[1:4]
            if len(message) > 5 and message[5] is not None:
                listener = self.calls.get(message[4])
                if listener is not None:
                    listener.worker_view(message[5])
            future = self._pending.get(req)
            if future is not None and not future.done():
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        elif kind == "stats":
            for key, view in message[1].items():
                listener = self.calls.get(key)
                if listener is not None:
                    listener.worker_view(view)
        elif kind == "failure":
            _, key, reason, stats = message
            listener = self.calls.get(key)
            if listener is not None:
                listener.worker_failure(reason, stats)
        elif kind == "log":
            record = logging.makeLogRecord(message[1])
            record.media_worker = self.index
            logging.getLogger(record.name).handle(record)
        elif kind == "dtmf":
            _, key, digit, direction = message
            listener = self.calls.get(key)
            if listener is not None:
                listener.worker_dtmf(digit, direction)

    def _lost(self) -> None:
        """The socket closed: the process ended (or is about to). Its calls end; the slot is refilled."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(MediaError(f"media worker {self.index} crashed"))
        self._pending.clear()
        calls, self.calls = self.calls, {}
        if self.pool.stopping:
            return
        log.error("media worker %d (pid %s) died; ending its %d call(s) and starting a new one", self.index,
                  self.pid, len(calls))
        for listener in calls.values():
            try:
                listener.worker_lost()
            except Exception:
                log.exception("media worker %d: a call failed to handle the crash", self.index)
        self.pool.restart_later(self)

    async def _reap(self, *, kill: bool) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        if kill:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()  # the worker closes its calls' media and exits at end of stream
            self._writer = None
        await self._reap(kill=False)
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task


class WorkerPool:
    def __init__(self, settings: MediaSettings, count: int, *, ice_host_addresses: list[str] | None = None,
                 log_level: str = "INFO", log_format: str = "text", log_loggers: dict[str, str] | None = None,
                 stats_interval_s: float = 1.0) -> None:
        if count < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.settings = settings
        self.workers = [MediaWorkerProcess(self, i) for i in range(count)]
        self.stopping = False
        self.restarts = 0
        self._keys = itertools.count(1)
        self._restart_tasks: set[asyncio.Task[None]] = set()
        self._failures = [0] * count  # restarts of each slot in a row (a worker that keeps dying)
        self._init = dict(ice_host_addresses=list(ice_host_addresses or []), log_level=log_level,
                          log_format=log_format, log_loggers=dict(log_loggers or {}),
                          stats_interval_s=stats_interval_s)

    def init_for(self, index: int) -> WorkerInit:
        return WorkerInit(index=index, settings=self.settings, **self._init)  # type: ignore[arg-type]

    async def start(self) -> None:
        try:
            await asyncio.gather(*(w.spawn() for w in self.workers))
        except BaseException:
            await self.stop()
            raise
        log.info("%d media worker process(es) running", len(self.workers))

    async def stop(self) -> None:
        self.stopping = True
        for task in list(self._restart_tasks):
            task.cancel()
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)

    @property
    def pids(self) -> list[int | None]:
        return [w.pid if w.alive else None for w in self.workers]

    def place(self, listener: WorkerCallListener) -> tuple[MediaWorkerProcess, int]:
        """The running worker with the fewest calls (the first of equals) takes ``listener``'s call."""
        # every worker down at once (restarting): the call gets one and fails at its first step (open_rtp raises
        # MediaError), which the driver handles like a full port range
        running = [w for w in self.workers if w.alive] or self.workers
        worker = min(running, key=lambda w: w.load)
        key = next(self._keys)
        worker.calls[key] = listener
        return worker, key

    def restart_later(self, worker: MediaWorkerProcess) -> None:
        task = asyncio.get_running_loop().create_task(self._restart(worker))
        self._restart_tasks.add(task)
        task.add_done_callback(self._restart_tasks.discard)

    async def _restart(self, worker: MediaWorkerProcess) -> None:
        await worker._reap(kill=True)  # a worker whose socket broke is of no use even if it still runs
        quick = time.monotonic() - worker.started_at < 10.0
        self._failures[worker.index] = self._failures[worker.index] + 1 if quick else 1
        while not self.stopping:
            delay = RESTART_DELAY_S[min(self._failures[worker.index] - 1, len(RESTART_DELAY_S) - 1)]
            await asyncio.sleep(delay)
            try:
                await worker.spawn()
            except (MediaError, OSError) as exc:
                log.error("media worker %d: restart failed: %s", worker.index, exc)
                self._failures[worker.index] += 1
                continue
            self.restarts += 1
            return
