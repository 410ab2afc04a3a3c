"""Per-room ordered execution: one worker task and bounded queue per room, created on demand and stopped
when idle. Work for one room runs strictly in submission order; different rooms run concurrently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


class RoomQueues:
    def __init__(self, *, maxsize: int = 256, idle_timeout: float = 30.0) -> None:
        self._maxsize = maxsize
        self._idle_timeout = idle_timeout
        self._queues: dict[str, asyncio.Queue[tuple[Job, asyncio.Future[None]]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    async def submit(self, room_id: str, job: Job) -> asyncio.Future[None]:
        """Queue ``job`` for ``room_id``; the returned future resolves when it has run (with its exception,
        if any). Waits for space when the room's queue is full (back-pressure on the transaction)."""
        if self._closed:
            raise RuntimeError("RoomQueues is closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(room_id)
        if queue is None:
            queue = asyncio.Queue(self._maxsize)
            self._queues[room_id] = queue
            self._tasks[room_id] = asyncio.create_task(self._worker(room_id, queue), name=f"room-worker:{room_id}")
        # A worker only retires when its queue is empty, and it unregisters itself without awaiting, so a
        # queue found in the dict here is either served or full (then the worker is busy, not retiring).
        await queue.put((job, fut))
        return fut

    async def _worker(self, room_id: str, queue: asyncio.Queue[tuple[Job, asyncio.Future[None]]]) -> None:
        while True:
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that races the get().
                async with asyncio.timeout(self._idle_timeout):
                    job, fut = await queue.get()
            except TimeoutError:
                if queue.empty():
                    self._queues.pop(room_id, None)
                    self._tasks.pop(room_id, None)
                    return
                continue
            try:
                await job()
            except asyncio.CancelledError:
                if not fut.done():
                    fut.cancel()
                raise
            except Exception as e:
                if not fut.done():
                    fut.set_exception(e)
            else:
                if not fut.done():
                    fut.set_result(None)

    @property
    def active_rooms(self) -> int:
        return len(self._tasks)

    @property
    def queued(self) -> int:
        """Jobs waiting in every room's queue (metrics)."""
        return sum(q.qsize() for q in self._queues.values())

    async def close(self) -> None:
        """Cancel all workers; pending futures are cancelled."""
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for queue in self._queues.values():
            while not queue.empty():
                _, fut = queue.get_nowait()
                fut.cancel()
        self._queues.clear()
        self._tasks.clear()
