"""The outbox: every event the bridge sends to a room goes through one ordered sender per room.

A sender delivers its room's events strictly in order. An event is retried with capped exponential back-off,
under the same transaction ID every time (the homeserver then deduplicates a retry whose first attempt did
land), until the homeserver accepts it, an error says it never will (4xx other than 408/429: given up with
one log line), or it expires (the call it belongs to is long over). Callers never wait on homeserver health
unless they ask to (``wait_delivered``); an event whose caller stopped waiting is withdrawn and never sent late.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from mautrix.errors import MatrixConnectionError, MatrixRequestError

log = logging.getLogger(__name__)

MAX_AGE_S = 600.0  # an event older than this belongs to a call that is long over
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
ATTEMPT_TIMEOUT_S = 20.0  # one HTTP attempt; aiohttp's own default (5 min) would stall the room
MAX_QUEUED = 10_000  # across all rooms: a bound on memory during a long outage


class NotDelivered(Exception):
    """The event was not delivered: given up, expired, withdrawn, or the outbox closed."""


@dataclass(eq=False)
class OutboxItem:
    room_id: str
    event_type: str  # "m.room.message" for notices
    content: dict[str, Any]
    sender: str  # the user ID that sends it (a ghost or the bot)
    txn_id: str
    expires_at: float  # loop time
    result: asyncio.Future[str] = field(repr=False)  # the event ID, or NotDelivered
    attempts: int = 0
    withdrawn: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _attempt: asyncio.Task[str] | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.result.done()

    @property
    def what(self) -> str:
        """For log lines: the event type, and the Matrix call_id of a call event (to find the call's other lines)."""
        call_id = self.content.get("call_id")
        return f"{self.event_type} [call_id={call_id}]" if isinstance(call_id, str) else self.event_type

    def _settle(self, event_id: str | None, error: str = "") -> None:
        if self.result.done():
            return
        if event_id is not None:
            self.result.set_result(event_id)
        else:
            self.result.set_exception(NotDelivered(error))
            self.result.exception()  # retrieved: nobody may be waiting, and that is fine


SendFn = Callable[[OutboxItem], Awaitable[str]]


def is_retriable(exc: BaseException) -> bool:
    """Worth trying again: rate limits, server errors, timeouts, connection failures."""
    if isinstance(exc, MatrixRequestError):
        status = getattr(exc, "http_status", 0)
        return status in (0, 408, 429) or status >= 500  # 0: mautrix saw no usable response
    return isinstance(exc, MatrixConnectionError | aiohttp.ClientError | TimeoutError | OSError)


class Outbox:
    def __init__(self, send: SendFn, *, max_age_s: float = MAX_AGE_S, backoff_start_s: float = BACKOFF_START_S,
                 backoff_max_s: float = BACKOFF_MAX_S, attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
                 max_queued: int = MAX_QUEUED) -> None:
        self.send = send  # one attempt; replaceable (benchmarks wrap it)
        self.on_attempt: Callable[[bool, bool], None] | None = None
        """Told (ok, is_retry) after every attempt (metrics); must be cheap and must not raise."""
        self.max_age_s = max_age_s
        self.backoff_start_s = backoff_start_s
        self.backoff_max_s = backoff_max_s
        self.attempt_timeout_s = attempt_timeout_s
        self.max_queued = max_queued
        self._rooms: dict[str, deque[OutboxItem]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._prefix = secrets.token_hex(6)  # transaction IDs unique across bridge restarts
        self._counter = itertools.count(1)
        self._closed = False

    @property
    def pending(self) -> int:
        return sum(len(q) for q in self._rooms.values())

    def enqueue(self, room_id: str, event_type: str, content: dict[str, Any], *, sender: str,
                max_age_s: float | None = None) -> OutboxItem:
        """Queue an event behind the room's earlier ones; returns at once."""
        loop = asyncio.get_running_loop()
        item = OutboxItem(room_id=room_id, event_type=event_type, content=content, sender=sender,
                          txn_id=f"sipbridge.{self._prefix}.{next(self._counter)}",
                          expires_at=loop.time() + (max_age_s if max_age_s is not None else self.max_age_s),
                          result=loop.create_future())
        if self._closed:
            log.warning("outbox closed: not sending %s to %s", event_type, room_id)
            item._settle(None, "outbox closed")
            return item
        if self.pending >= self.max_queued:
            log.error("outbox full (%d events): dropping %s to %s", self.max_queued, event_type, room_id)
            item._settle(None, "outbox full")
            return item
        self._rooms.setdefault(room_id, deque()).append(item)
        if room_id not in self._workers:
            self._workers[room_id] = asyncio.create_task(self._room_worker(room_id), name=f"outbox:{room_id}")
        return item

    async def wait_delivered(self, item: OutboxItem, timeout: float) -> str:
        """The event ID once delivered; NotDelivered if that fails or takes longer than ``timeout``, in which
        case the event is withdrawn (an attempt already on the wire may still land; it is not retried)."""
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(item.result)
        except TimeoutError:
            self.withdraw(item)
            raise NotDelivered(f"not delivered within {timeout:.1f}s") from None
        except asyncio.CancelledError:
            self.withdraw(item)
            raise

    def withdraw(self, item: OutboxItem) -> None:
        """Never send this event (if it is still queued or being retried)."""
        if item.done:
            return
        item.withdrawn = True
        item._settle(None, "withdrawn")
        queue = self._rooms.get(item.room_id)
        if queue is not None and item in queue and queue[0] is not item:
            queue.remove(item)  # not the head: its room's worker never looks at it
            return
        item._wake.set()  # the head: stop its back-off sleep
        if item._attempt is not None and not item._attempt.done():
            item._attempt.cancel()

    async def _room_worker(self, room_id: str) -> None:
        queue = self._rooms[room_id]
        try:
            while queue:
                item = queue[0]
                try:
                    await self._deliver(item)
                except Exception:  # a bug here must not wedge the room's later events
                    log.exception("outbox: delivering %s to %s failed", item.event_type, room_id)
                    item._settle(None, "internal error")
                queue.popleft()
        finally:
            # Nothing awaits between the last check of the queue and here, so enqueue() either saw this
            # worker registered (and its item is served above) or starts a new one.
            self._workers.pop(room_id, None)
            if not queue:
                self._rooms.pop(room_id, None)

    async def _deliver(self, item: OutboxItem) -> None:
        loop = asyncio.get_running_loop()
        delay = self.backoff_start_s
        while not item.withdrawn:
            remaining = item.expires_at - loop.time()
            if remaining <= 0:
                log.warning("giving up %s to %s after %d attempt(s): expired (txn %s)", item.what,
                            item.room_id, item.attempts, item.txn_id)
                item._settle(None, "expired")
                return
            item.attempts += 1
            attempt = item._attempt = asyncio.ensure_future(self.send(item))
            try:
                await asyncio.wait([attempt], timeout=min(self.attempt_timeout_s, remaining))
            finally:
                if not attempt.done():
                    attempt.cancel()
            if self.on_attempt is not None and not (attempt.cancelled() and item.withdrawn):
                self.on_attempt(not attempt.cancelled() and attempt.exception() is None, item.attempts > 1)
            if attempt.cancelled():
                if item.withdrawn:
                    return
                error: BaseException = TimeoutError(f"no answer within {self.attempt_timeout_s:.0f}s")
            elif (exc := attempt.exception()) is not None:
                error = exc
            else:
                if item.attempts > 1:
                    log.info("delivered %s to %s after %d attempts", item.what, item.room_id, item.attempts)
                item._settle(attempt.result())
                return
            if not is_retriable(error):
                log.error("giving up %s to %s: the homeserver refused it: %s", item.what, item.room_id,
                          error)
                item._settle(None, f"refused: {error}")
                return
            level = logging.WARNING if item.attempts == 1 else logging.DEBUG
            log.log(level, "sending %s to %s failed (%s); retrying with back-off up to %.0fs", item.what,
                    item.room_id, error, self.backoff_max_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(delay, max(remaining, 0.0))):
                    await item._wake.wait()
            delay = min(delay * 2, self.backoff_max_s)

    async def close(self, grace_s: float = 5.0) -> None:
        """Give queued events up to ``grace_s`` to go out (hangups sent at shutdown), then drop the rest with
        one log line. No event is accepted afterwards."""
        self._closed = True
        workers = list(self._workers.values())
        if workers:
            await asyncio.wait(workers, timeout=grace_s)
        left = [item for queue in self._rooms.values() for item in queue if not item.done]
        for task in list(self._workers.values()):
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        for item in left:
            item._settle(None, "outbox closed")
        if left:
            log.warning("outbox closed with %d undelivered event(s) (%s)", len(left),
                        ", ".join(sorted({f"{i.what} to {i.room_id}" for i in left})))
        self._rooms.clear()
        self._workers.clear()
