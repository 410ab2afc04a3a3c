"""The appservice HTTP API (homeserver -> bridge), built as one aiohttp ``web.Application``.

Every request is authorised with the hs_token. A transaction is acknowledged only after all its events have
been handled (each room's events in order, rooms concurrently) and its ID stored, so a replay, even after a
restart, is answered at once without handling anything twice.
"""

from __future__ import annotations

import asyncio
import functools
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
        self._in_flight: dict[str, asyncio.Future[None]] = {}
        self.app = self._build()

    @property
    def transactions_in_flight(self) -> int:
        """Transactions being handled now (metrics)."""
        return len(self._in_flight)

    def _build(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware], client_max_size=64 * 1024 * 1024)
        for prefix in ("/_matrix/app/v1", ""):  # "" = legacy unprefixed routes
            app.router.add_put(prefix + "/transactions/{txn_id}", self._transaction)
            app.router.add_get(prefix + "/users/{user_id}", self._query_user)
            app.router.add_get(prefix + "/rooms/{alias}", self._query_room)
        app.router.add_post("/_matrix/app/v1/ping", self._ping)
        return app

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Callable[[web.Request],
                               Awaitable[web.StreamResponse]]) -> web.StreamResponse:
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
        # The homeserver retried while we are still handling it: wait for that run, then check the DB again
        # (if that run failed, this delivery handles the transaction itself).
        while (running := self._in_flight.get(txn_id)) is not None:
            await asyncio.shield(running)
        # Claim the txn ID before the next await, so concurrent deliveries of it wait for this run.
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight[txn_id] = fut
        try:
            return await self._run_transaction(request, txn_id)
        finally:
            del self._in_flight[txn_id]
            fut.set_result(None)

    async def _run_transaction(self, request: web.Request, txn_id: str) -> web.Response:
        if await self._txns.seen(txn_id):
            log.debug("transaction %s already handled", txn_id)
            return web.json_response({})
        try:
            body = await request.json(loads=json.loads)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "M_NOT_JSON", "Body is not JSON")
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            return _error(400, "M_BAD_JSON", "Body has no events list")
        await self._handle_events(txn_id, events)
        await self._txns.mark(txn_id)
        return web.json_response({})

    async def _handle_events(self, txn_id: str, events: list[Any]) -> None:
        accepted: list[dict[str, Any]] = []
        futures = []
        for evt in events:
            if not isinstance(evt, dict) or not isinstance(evt.get("room_id"), str) \
                    or not isinstance(evt.get("type"), str):
                log.warning("transaction %s: skipping malformed event %.200r", txn_id, evt)
                continue
            accepted.append(evt)
            futures.append(await self._queues.submit(evt["room_id"], functools.partial(self._dispatch, evt)))
        results = await asyncio.gather(*futures, return_exceptions=True)
        for evt, result in zip(accepted, results, strict=True):
            if isinstance(result, BaseException):  # dispatch logs its own errors; this is a last resort
                log.error("transaction %s: event %s failed: %r", txn_id, evt.get("event_id"), result)
