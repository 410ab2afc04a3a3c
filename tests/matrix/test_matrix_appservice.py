"""The appservice HTTP API against a real Synapse: hs_token checks, transaction replay, ordering, user query."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import aiohttp
import pytest

from bridge.config import parse_config
from bridge.db import create_database
from bridge.matrix import MatrixSide
from tests.harness.matrix_client import MatrixHttpError
from tests.harness.synapse import free_port
from tests.matrix.matrix_env import SERVER, MatrixEnv, RecordingHandler, eventually, make_config_data

pytestmark = pytest.mark.asyncio(loop_scope="module")


def call_event(room_id: str, etype: str, n: int, sender: str = f"@alice:{SERVER}") -> dict[str, Any]:
    return {"type": etype, "room_id": room_id, "sender": sender, "event_id": f"$e{n}-{secrets.token_hex(4)}",
            "origin_server_ts": 1000 + n, "content": {"call_id": "c1", "party_id": "p", "version": "1", "n": n}}


async def put_txn(url: str, txn_id: str, events: list[dict[str, Any]], token: str | None,
                  query_token: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    params = {"access_token": query_token} if query_token is not None else {}
    async with aiohttp.ClientSession() as http, http.put(
        f"{url}/_matrix/app/v1/transactions/{txn_id}", json={"events": events}, headers=headers, params=params
    ) as resp:
        return resp.status, await resp.json()


async def test_requests_without_valid_hs_token_are_refused(env: MatrixEnv) -> None:
    hs_token = env.config.appservice.hs_token
    status, body = await put_txn(env.as_url, "auth1", [], None)
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")
    status, body = await put_txn(env.as_url, "auth2", [], "wrong-token")
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await put_txn(env.as_url, "auth3", [], None, query_token="wrong-token")
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await put_txn(env.as_url, "auth4", [], hs_token, query_token="wrong-token")
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    # The as_token is not the hs_token: a homeserver-impersonating client holding only as_token is refused.
    status, body = await put_txn(env.as_url, "auth5", [], env.config.appservice.as_token)
    assert status == 403
    assert (await put_txn(env.as_url, "auth6", [], hs_token))[0] == 200
    assert (await put_txn(env.as_url, "auth7", [], None, query_token=hs_token))[0] == 200  # legacy query param
    async with aiohttp.ClientSession() as http:
        for method, path in (("GET", "/_matrix/app/v1/users/@sip_15551234567:bridge.test"),
                             ("GET", "/_matrix/app/v1/rooms/%23x:bridge.test"), ("POST", "/_matrix/app/v1/ping"),
                             ("PUT", "/transactions/legacy1")):
            async with http.request(method, env.as_url + path, json={}) as resp:
                assert resp.status == 401, path


async def test_synapse_ping_reaches_the_bridge_with_its_real_hs_token(env: MatrixEnv) -> None:
    async with aiohttp.ClientSession() as http, http.post(
        f"{env.hs.url}/_matrix/client/v1/appservice/{env.config.appservice.id}/ping",
        json={"transaction_id": "ping1"},
        headers={"Authorization": f"Bearer {env.config.appservice.as_token}"},
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        assert "duration_ms" in body


async def test_room_alias_query_is_not_found(env: MatrixEnv) -> None:
    async with aiohttp.ClientSession() as http, http.get(
        f"{env.as_url}/_matrix/app/v1/rooms/%23nope:{SERVER}",
        headers={"Authorization": f"Bearer {env.config.appservice.hs_token}"},
    ) as resp:
        assert resp.status == 404
        assert (await resp.json())["errcode"] == "M_NOT_FOUND"


async def test_malformed_transactions_get_400_and_malformed_events_are_skipped(env: MatrixEnv) -> None:
    token = env.config.appservice.hs_token
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{env.as_url}/_matrix/app/v1/transactions/bad1", data=b"{not json",
                            headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 400
        async with http.put(f"{env.as_url}/_matrix/app/v1/transactions/bad2", json={"events": "nope"},
                            headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 400
    room = "!malformed:bridge.test"
    await env.side.tables.portal.put(room, f"@alice:{SERVER}", "15550000001")
    good = call_event(room, "m.call.invite", 1)
    # (Each event has its own ID, as on a real homeserver: a handled ID is never handled again.)
    events: list[Any] = ["junk", {"type": "m.call.invite"}, {**good, "content": "not a dict", "event_id": "$m1"},
                         {**good, "sender": 5, "event_id": "$m2"}, good]
    assert (await put_txn(env.as_url, "bad3", events, token))[0] == 200
    assert [c.event_id for c in env.recorder.calls_in(room)] == [good["event_id"]]


async def test_replayed_transaction_is_handled_once(env: MatrixEnv) -> None:
    room = "!replay:bridge.test"
    await env.side.tables.portal.put(room, f"@alice:{SERVER}", "15550000002")
    events = [call_event(room, "m.call.invite", 1), call_event(room, "m.call.candidates", 2)]
    token = env.config.appservice.hs_token
    assert (await put_txn(env.as_url, "replay1", events, token))[0] == 200
    assert (await put_txn(env.as_url, "replay1", events, token))[0] == 200
    # Two concurrent deliveries of one new transaction: still handled once.
    events2 = [call_event(room, "m.call.hangup", 3)]
    results = await asyncio.gather(*(put_txn(env.as_url, "replay2", events2, token) for _ in range(3)))
    assert [r[0] for r in results] == [200, 200, 200]
    assert [c.type for c in env.recorder.calls_in(room)] == ["m.call.invite", "m.call.candidates", "m.call.hangup"]


async def test_replay_after_restart_with_same_database_is_harmless(env: MatrixEnv) -> None:
    port = free_port()
    data = make_config_data(env.tmp, env.hs.url, port, env.config.appservice.as_token,
                            env.config.appservice.hs_token, db_name="restart.db")
    config = parse_config(data)
    room = "!restart:bridge.test"
    events = [call_event(room, "m.call.invite", 1)]
    url = f"http://127.0.0.1:{port}"
    first = RecordingHandler()
    side = MatrixSide(config, create_database(config.appservice.database), first)
    await side.start()
    try:
        await side.tables.portal.put(room, f"@alice:{SERVER}", "15550000003")
        assert (await put_txn(url, "restart1", events, config.appservice.hs_token))[0] == 200
    finally:
        await side.stop()
    assert len(first.calls) == 1
    second = RecordingHandler()
    side = MatrixSide(config, create_database(config.appservice.database), second)
    await side.start()
    try:
        assert (await put_txn(url, "restart1", events, config.appservice.hs_token))[0] == 200
        assert second.calls == []
        # Same ID, new events (a restarted homeserver numbering from 1 again): handled.
        fresh = [call_event(room, "m.call.hangup", 2)]
        assert (await put_txn(url, "restart1", fresh, config.appservice.hs_token))[0] == 200
        assert [c.event_id for c in second.calls] == [fresh[0]["event_id"]]
        # A new ID re-sending an event already handled: skipped.
        assert (await put_txn(url, "restart2", events + fresh, config.appservice.hs_token))[0] == 200
        assert len(second.calls) == 1
    finally:
        await side.stop()


async def test_events_of_one_transaction_reach_the_handler_in_room_order(env: MatrixEnv) -> None:
    room_a, room_b = "!order-a:bridge.test", "!order-b:bridge.test"
    await env.side.tables.portal.put(room_a, f"@alice:{SERVER}", "15550000004")
    await env.side.tables.portal.put(room_b, f"@mallory:{SERVER}", "15550000005")
    types = ["m.call.invite"] + ["m.call.candidates"] * 5 + ["m.call.hangup"]
    events = []
    for n, t in enumerate(types):
        events.append(call_event(room_a, t, n))
        events.append(call_event(room_b, t, 100 + n, sender=f"@mallory:{SERVER}"))
    assert (await put_txn(env.as_url, "order1", events, env.config.appservice.hs_token))[0] == 200
    # The transaction is acknowledged only after every event was handled: no waiting needed here.
    assert [c.content["n"] for c in env.recorder.calls_in(room_a)] == list(range(len(types)))
    # The Matrix side forwards every call event in order, the invite of a user who may not call included:
    # the call driver refuses it with a visible m.call.reject (tests/e2e), rather than leaving them ringing.
    assert [c.content["n"] for c in env.recorder.calls_in(room_b)] == [100 + n for n in range(len(types))]


async def test_real_call_events_from_synapse_arrive_in_order(env: MatrixEnv) -> None:
    number = "15550000006"
    room = await env.alice.create_dm(env.ghost(number))
    await eventually(lambda: env.side.portals.get(room), what="portal stored")
    sent = [await env.alice.send_event(room, "m.call.invite", {"call_id": "real1", "party_id": "AAAA",
                                                               "version": "1", "lifetime": 60000,
                                                               "offer": {"type": "offer", "sdp": "v=0\r\n"}})]
    for i in range(4):
        sent.append(await env.alice.send_event(room, "m.call.candidates", {
            "call_id": "real1", "party_id": "AAAA", "version": "1",
            "candidates": [{"candidate": f"candidate:{i} 1 udp 1 127.0.0.1 {4000 + i} typ host",
                            "sdpMid": "0", "sdpMLineIndex": 0}]}))
    sent.append(await env.alice.send_event(room, "m.call.hangup", {"call_id": "real1", "party_id": "AAAA",
                                                                   "version": "1"}))
    await eventually(lambda: len(env.recorder.calls_in(room)) >= len(sent), what="call events")
    got = env.recorder.calls_in(room)
    assert [c.event_id for c in got] == sent
    assert got[0].type == "m.call.invite" and got[0].sender == f"@alice:{SERVER}" and got[0].ts > 0
    # Our own ghost's call events are echoed by Synapse but never reach the handler.
    await env.side.portals.send_call_event(room, number, "m.call.hangup", {"call_id": "x", "version": "1",
                                                                           "party_id": "ghost"}).result
    marker = await env.alice.send_event(room, "m.call.hangup", {"call_id": "marker", "version": "1",
                                                                "party_id": "AAAA"})
    await eventually(lambda: env.recorder.calls_in(room)[-1].event_id == marker, what="marker")
    assert all(c.sender == f"@alice:{SERVER}" for c in env.recorder.calls_in(room))


async def test_user_query_creates_ghost_with_formatted_displayname(env: MatrixEnv) -> None:
    ghost = env.ghost("15551234567")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{env.as_url}/_matrix/app/v1/users/{ghost}",
                            headers={"Authorization": f"Bearer {env.config.appservice.hs_token}"}) as resp:
            assert resp.status == 200
        for bad in (f"@sip_abc:{SERVER}", f"@sip_0123:{SERVER}", "@sip_15551234567:other.test", f"@bob:{SERVER}"):
            async with http.get(f"{env.as_url}/_matrix/app/v1/users/{bad}",
                                headers={"Authorization": f"Bearer {env.config.appservice.hs_token}"}) as resp:
                assert resp.status == 404, bad
    profile = await env.alice.request("GET", f"/profile/{ghost}")
    assert profile["displayname"] == "+1 555 123 4567"


async def test_synapse_queries_unknown_ghost_on_invite_and_it_gets_created(env: MatrixEnv) -> None:
    ghost = env.ghost("442079460958")
    await env.alice.create_dm(ghost)
    # Registration and the display name are two steps: wait for the final name.
    await eventually(lambda: _displayname_is(env, ghost, "+44 20 7946 0958"), what="ghost display name")


async def _displayname_is(env: MatrixEnv, mxid: str, expected: str) -> bool:
    try:
        return (await env.alice.request("GET", f"/profile/{mxid}")).get("displayname") == expected
    except MatrixHttpError:
        return False


async def test_handler_exception_is_contained_to_its_event(env: MatrixEnv, caplog: pytest.LogCaptureFixture) -> None:
    room = "!boom:bridge.test"
    await env.side.tables.portal.put(room, f"@alice:{SERVER}", "15550000007")
    seen: list[int] = []

    class Exploding(RecordingHandler):
        async def on_call_event(self, evt: Any) -> None:
            if evt.content["n"] == 1:
                raise RuntimeError("driver bug")
            seen.append(evt.content["n"])

    events = [call_event(room, "m.call.invite", n) for n in range(3)]
    original = env.side.handler
    env.side.handler = Exploding()
    try:
        status, _ = await put_txn(env.as_url, "boom1", events, env.config.appservice.hs_token)
    finally:
        env.side.handler = original
    assert status == 200
    assert seen == [0, 2]
    assert any(events[1]["event_id"] in r.getMessage() and r.exc_info for r in caplog.records)
