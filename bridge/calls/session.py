"""Per-call serialisation: every event of one call, from either side, is handled in arrival order.

A session owns a bounded queue of steps and one worker task. A step asks the pure state machine
what to do (a synchronous call returning actions); the worker then performs the actions one by one.
Every task a session starts is owned here and cancelled when the call ends.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ..call.actions import Action, Finish

Step = Callable[[], list[Action]]

_LETTERS = string.ascii_letters


def new_party_id() -> str:
    """A 10-letter party_id, as Element generates."""
    return "".join(secrets.choice(_LETTERS) for _ in range(10))


def new_call_id() -> str:
    return f"{int(time.time() * 1000)}{''.join(secrets.choice(_LETTERS) for _ in range(16))}"


class CallSession:
    def __init__(self, log: logging.LoggerAdapter[Any], on_finished: Callable[[CallSession], None]) -> None:
        self.log = log
        self._on_finished = on_finished
        self._queue: asyncio.Queue[Step] = asyncio.Queue(maxsize=256)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._worker: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()

    def start_worker(self) -> None:
        self._worker = asyncio.create_task(self._run(), name=f"call-worker-{id(self)}")

    def post(self, step: Step) -> None:
        """Queue a state-machine step; dropped (with a log line) if the call is over or flooded."""
        if self.finished.is_set():
            return
        try:
            self._queue.put_nowait(step)
        except asyncio.QueueFull:
            self.log.warning("call event queue full, dropping an event")

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("call task %s failed: %r", task.get_name(), task.exception())

    async def _run(self) -> None:
        try:
            while True:
                step = await self._queue.get()
                try:
                    actions = step()
                except Exception:
                    self.log.exception("call state machine step failed")
                    continue
                for action in actions:
                    try:
                        await self.execute(action)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        self.log.exception("action %s failed", type(action).__name__)
                    if isinstance(action, Finish):
                        return
        finally:
            self.finished.set()
            await self._release()
            self._on_finished(self)

    async def execute(self, action: Action) -> None:
        raise NotImplementedError

    async def release(self) -> None:
        """Free media and other resources; called once when the call ends."""

    async def _release(self) -> None:
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        for task in list(self._tasks):
            if task is not current:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        try:
            await self.release()
        except Exception:
            self.log.exception("releasing call resources failed")

    async def wait_finished(self, timeout: float) -> bool:
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation of the caller.
            async with asyncio.timeout(timeout):
                await self.finished.wait()
            return True
        except TimeoutError:
            return False

    async def abort(self) -> None:
        """Hard stop: the call could not start, or the polite end timed out at shutdown.

        Releases everything whether or not the worker ever ran (its finally block does it when it did).
        """
        if self._worker is not None:
            if not self._worker.done():
                self._worker.cancel()
                try:
                    await self._worker
                except (asyncio.CancelledError, Exception):
                    pass
            return
        if not self.finished.is_set():
            self.finished.set()
            await self._release()
