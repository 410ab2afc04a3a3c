"""The appservice HTTP API (homeserver -> bridge), built as one aiohttp ``web.Application``.

Every request is authorised with the hs_token. A transaction is acknowledged only after all its events have
been handled (each room's events in order, rooms concurrently) and stored as handled, so a replay, even after
a restart of either side, is answered at once without handling anything twice:

- a transaction is known by (txn ID, SHA-256 of its body): Synapse on SQLite numbers transactions from 1 again
  after it restarts, so a known ID with another body is a new transaction;
- each event is known by its event_id: a restarted homeserver may re-send an event we already handled inside
  a transaction with another ID.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bridge.db.txn import TxnTable
from bridge.matrix.room_queue import RoomQueues

log = logging.getLogger(__name__)

EventDispatch = Callable[[dict[str, Any]], Awaitable[None]]
UserQuery = Callable[[str], Awaitable[bool]]

# The largest transaction Synapse can send. Per transaction it sends at most 100 PDUs, 100 ephemeral events and
# 100 to-device messages (synapse/appservice/scheduler.py MAX_*_PER_TRANSACTION). A PDU is at most 64 KiB of
# canonical JSON (spec: "Size limits"; synapse MAX_PDU_SIZE), and its client form may also carry the previous
# state content in `unsigned` (another <= 64 KiB); EDUs are kept under 64 KiB (SOFT_MAX_EDU_SIZE).
# 100 x 128 KiB + 200 x 64 KiB = 25 MiB; rounded up to 32 MiB for JSON escaping. Larger bodies get 413.
MAX_TRANSACTION_BYTES = 32 * 1024 * 1024
PRUNE_EVERY = 1000  # transactions between two prunes of the dedupe tables (also pruned at start)


def _error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


class AppserviceServer:
    def __init__(self, hs_token: str, txns: TxnTable, queues: RoomQueues, dispatch: EventDispatch,
                 user_query: UserQuery) -> None:
        self._hs_token = hs_token.encode()
        self._txns = txns
        self._queues = queues
        self._dispatch = dispatch
        self._user_query = user_query
        self._in_flight: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._events_in_flight: set[str] = set()
        self._handled = 0
        self.open_prefixes: list[str] = []  # paths with their own auth (the provisioning API): no hs_token
        self.app = self._build()

    @property
    def transactions_in_flight(self) -> int:
        """Transactions being handled now (metrics)."""
        return len(self._in_flight)

    def _build(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware], client_max_size=MAX_TRANSACTION_BYTES)
        for prefix in ("/_matrix/app/v1", ""):  # "" = legacy unprefixed routes
            app.router.add_put(prefix + "/transactions/{txn_id}", self._transaction)
            app.router.add_get(prefix + "/users/{user_id}", self._query_user)
            app.router.add_get(prefix + "/rooms/{alias}", self._query_room)
        app.router.add_post("/_matrix/app/v1/ping", self._ping)
        return app

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Callable[[web.Request],
                               Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if any(request.path.startswith(prefix + "/") for prefix in self.open_prefixes):
            return await handler(request)
        header = request.headers.get("Authorization")
        query = request.query.get("access_token")
        bearer: str | None = None
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                return _error(401, "M_UNKNOWN_TOKEN", "Malformed Authorization header")
            bearer = value.strip()
        if bearer is None and query is None:
            return _error(401, "M_UNAUTHORIZED", "Missing hs_token")
        tokens = [t for t in (bearer, query) if t is not None]
        if not all(hmac.compare_digest(t.encode(), self._hs_token) for t in tokens):
            log.warning("rejected appservice request %s %s: bad hs_token", request.method, request.path)
            return _error(403, "M_FORBIDDEN", "Bad hs_token")
        return await handler(request)

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _query_room(self, request: web.Request) -> web.Response:
        return _error(404, "M_NOT_FOUND", "This bridge has no room aliases")

    async def _query_user(self, request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        try:
            exists = await self._user_query(user_id)
        except Exception:
            log.exception("user query for %s failed", user_id)
            return _error(500, "M_UNKNOWN", "User query failed")
        if exists:
            return web.json_response({})
        return _error(404, "M_NOT_FOUND", "No such user")

    async def _transaction(self, request: web.Request) -> web.Response:
        txn_id = request.match_info["txn_id"]
        body = await request.read()  # over MAX_TRANSACTION_BYTES: aiohttp answers 413
        key = (txn_id, hashlib.sha256(body).hexdigest())
        # The homeserver retried while we are still handling it: wait for that run, then check the DB again
        # (if that run failed, this delivery handles the transaction itself).
        while (running := self._in_flight.get(key)) is not None:
            await asyncio.shield(running)
        # Claim the key before the next await, so concurrent deliveries of it wait for this run.
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = fut
        try:
            return await self._run_transaction(key, body)
        finally:
            del self._in_flight[key]
            fut.set_result(None)

    async def _run_transaction(self, key: tuple[str, str], body: bytes) -> web.Response:
        txn_id, digest = key
        if await self._txns.seen(txn_id, digest):
            log.debug("transaction %s already handled", txn_id)
            return web.json_response({})
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):  # ValueError covers bad UTF-8; RecursionError: nesting too deep
            return _error(400, "M_NOT_JSON", "Body is not JSON")
        events = parsed.get("events") if isinstance(parsed, dict) else None
        if not isinstance(events, list):
            return _error(400, "M_BAD_JSON", "Body has no events list")
        log.debug("transaction %s: %d event(s)", txn_id, len(events))
        await self._handle_events(txn_id, events)
        await self._txns.mark(txn_id, digest)
        self._handled += 1
        if self._handled % PRUNE_EVERY == 0:
            await self._txns.prune_old()
        return web.json_response({})

    async def _handle_events(self, txn_id: str, events: list[Any]) -> None:
        accepted: list[dict[str, Any]] = []
        futures = []
        claimed: list[str] = []
        try:
            for evt in events:
                if not isinstance(evt, dict) or not isinstance(evt.get("room_id"), str) \
                        or not isinstance(evt.get("type"), str):
                    log.warning("transaction %s: skipping malformed event %.200r", txn_id, evt)
                    continue
                event_id = evt.get("event_id")
                if isinstance(event_id, str):
                    if event_id in self._events_in_flight or await self._txns.event_seen(event_id):
                        log.info("transaction %s: event %s was already handled; skipping it", txn_id, event_id)
                        continue
                    self._events_in_flight.add(event_id)
                    claimed.append(event_id)
                accepted.append(evt)
                futures.append(await self._queues.submit(evt["room_id"], functools.partial(self._run_event, evt)))
            results = await asyncio.gather(*futures, return_exceptions=True)
        finally:
            self._events_in_flight.difference_update(claimed)
        for evt, result in zip(accepted, results, strict=True):
            if isinstance(result, BaseException):  # dispatch logs its own errors; this is a last resort
                log.error("transaction %s: event %s failed: %r", txn_id, evt.get("event_id"), result)

    async def _run_event(self, evt: dict[str, Any]) -> None:
        try:
            await self._dispatch(evt)
        finally:
            # Handled, even if badly: running it again on a re-send would only repeat the failure.
            event_id = evt.get("event_id")
            if isinstance(event_id, str):
                await self._txns.mark_event(event_id)
