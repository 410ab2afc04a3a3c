"""The appservice transaction endpoint on a real SQLite database and a real HTTP listener: dedupe by
(txn ID, body digest) and by event_id, malformed JSON of any depth, oversized bodies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.db import Tables, create_database
from bridge.matrix.appservice import MAX_TRANSACTION_BYTES, AppserviceServer
from bridge.matrix.room_queue import RoomQueues

TOKEN = "hs-token"


@dataclass
class Env:
    url: str
    handled: list[str] = field(default_factory=list)

    async def put(self, txn_id: str, body: bytes | dict[str, Any]) -> int:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with aiohttp.ClientSession() as http, http.put(
                f"{self.url}/_matrix/app/v1/transactions/{txn_id}", data=data,
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}) as resp:
            return resp.status


def event(event_id: str) -> dict[str, Any]:
    return {"type": "m.call.hangup", "room_id": "!r:x", "sender": "@a:x", "event_id": event_id, "content": {}}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    db = create_database(f"sqlite:{tmp_path / 'as.db'}")
    await db.start()
    queues = RoomQueues()
    handled: list[str] = []

    async def dispatch(evt: dict[str, Any]) -> None:
        handled.append(evt["event_id"])

    async def no_users(user_id: str) -> bool:
        return False

    server = AppserviceServer(TOKEN, Tables.for_db(db).txn, queues, dispatch, no_users)
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Env(f"http://127.0.0.1:{port}", handled)
    finally:
        await runner.cleanup()
        await queues.close()
        await db.stop()


async def test_homeserver_restart_renumbering_transactions_does_not_drop_events(env: Env) -> None:
    assert await env.put("1", {"events": [event("$a")]}) == 200
    assert await env.put("1", {"events": [event("$a")]}) == 200  # a plain retry: harmless
    assert env.handled == ["$a"]
    # The homeserver restarted and numbers from 1 again: same ID, new body -> handled.
    assert await env.put("1", {"events": [event("$b")]}) == 200
    assert env.handled == ["$a", "$b"]


async def test_an_event_resent_in_another_transaction_is_handled_once(env: Env) -> None:
    assert await env.put("7", {"events": [event("$a"), event("$b")]}) == 200
    assert await env.put("1", {"events": [event("$b"), event("$c")]}) == 200
    assert env.handled == ["$a", "$b", "$c"]


@pytest.mark.parametrize("depth", [2_000, 100_000])
async def test_nested_json_of_any_depth_is_400_not_500(env: Env, depth: int) -> None:
    body = b'{"events": ' + b"[" * depth + b"]" * depth + b"}"
    assert await env.put(f"deep{depth}", body) == 400
    assert await env.put("deepobj", b'{"a":' * depth + b"1" + b"}" * depth) == 400
    assert await env.put("bad-utf8", b'{"events": ["\xff"]}') == 400
    assert await env.put("ok", {"events": [event("$ok")]}) == 200


async def test_a_body_larger_than_any_synapse_transaction_is_413(env: Env) -> None:
    pad = "x" * (MAX_TRANSACTION_BYTES + 1)
    assert await env.put("big", json.dumps({"events": [], "pad": pad}).encode()) == 413
    assert env.handled == []
