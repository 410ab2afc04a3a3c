"""Invites are checked before anything is dialled, and Matrix users' calls are limited: real Synapse, the
bridge, sipp as the trunk. What the trunk saw is the proof: no INVITE for an invite that must not be dialled,
and a call-log row for every INVITE it did see."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

import aiohttp
import pytest

from bridge.app import Bridge
from tests.e2e.conftest import E2E, GHOST, SCENARIOS, assert_released, eventually
from tests.harness.bridge_stack import SERVER_NAME
from tests.harness.matrix_client import MatrixTestClient
from tests.harness.sipp import SippProcess

pytestmark = pytest.mark.e2e

ALICE = f"@alice:{SERVER_NAME}"
# An Element-like offer (Opus, PCMU, PCMA) as text: enough for the checks and for the bridge to dial; the
# calls it is used for never reach the WebRTC answer.
AUDIO_OFFER = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
)
VIDEO_ONLY_OFFER = (
    "v=0\r\no=- 4611731400430051337 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtpmap:96 VP8/90000\r\n"
)


async def trunk(e2e: E2E, scenario: str, *, calls: int = 1, timeout: float = 60.0) -> SippProcess:
    sipp = SippProcess(SCENARIOS / scenario, local_port=e2e.plan.trunk_port, calls=calls, timeout=timeout,
                       workdir=e2e.tmp / "sipp")
    await e2e.own(sipp).start()
    return sipp


async def busy_trunk(e2e: E2E, *, calls: int) -> SippProcess:
    text = (SCENARIOS / "trunk_reject.xml").read_text().replace("STATUS PHRASE", "486 Busy Here")
    path = e2e.tmp / "trunk_busy.xml"
    path.write_text(text)
    sipp = SippProcess(path, local_port=e2e.plan.trunk_port, calls=calls, timeout=60, workdir=e2e.tmp / "sipp")
    await e2e.own(sipp).start()
    return sipp


def invites_seen(sipp: SippProcess) -> list[str]:
    """SIP Call-IDs of the INVITEs the trunk received (sipp's message trace)."""
    call_ids = []
    for block in re.split(r"-{5,}.*\n", sipp.messages):
        if re.search(r"^INVITE sip:", block, re.M):
            found = re.search(r"^Call-ID:\s*(\S+)", block, re.M | re.I)
            if found:
                call_ids.append(found.group(1))
    return list(dict.fromkeys(call_ids))  # retransmissions count once


async def portal_room(alice: MatrixTestClient) -> str:
    room = await alice.create_dm(GHOST)
    await alice.wait_for_membership(room, GHOST, "join", timeout=30)
    return room


def invite_content(call_id: str, *, sdp: str = AUDIO_OFFER, version: Any = "1", lifetime: int = 60000) -> dict[
        str, Any]:
    return {"call_id": call_id, "party_id": "ALICEPARTY", "version": version, "lifetime": lifetime,
            "offer": {"type": "offer", "sdp": sdp}, "capabilities": {"m.call.dtmf": False}, "invitee": GHOST}


def ghost_events(alice: MatrixTestClient, room: str, event_type: str) -> list[dict[str, Any]]:
    return [ev for ev in alice.events if ev.get("room_id") == room and ev.get("type") == event_type
            and ev.get("sender") == GHOST]


def notices(alice: MatrixTestClient, room: str) -> list[str]:
    return [ev["content"].get("body", "") for ev in ghost_events(alice, room, "m.room.message")
            if ev["content"].get("msgtype") == "m.notice"]


async def push_transaction(e2e: E2E, events: list[dict[str, Any]]) -> float:
    """PUT one appservice transaction straight to the bridge, as Synapse does; returns how long it took."""
    url = f"http://127.0.0.1:{e2e.plan.as_port}/_matrix/app/v1/transactions/{uuid.uuid4().hex}"
    start = time.monotonic()
    async with aiohttp.ClientSession() as http, http.put(
        url, json={"events": events}, headers={"Authorization": f"Bearer {e2e.plan.hs_token}"},
        timeout=aiohttp.ClientTimeout(total=60),
    ) as resp:
        assert resp.status == 200, await resp.text()
    return time.monotonic() - start


def pushed_event(room: str, event_type: str, content: dict[str, Any]) -> dict[str, Any]:
    return {"type": event_type, "room_id": room, "sender": ALICE, "event_id": f"${uuid.uuid4().hex}",
            "origin_server_ts": int(time.time() * 1000), "unsigned": {"age": 5}, "content": content}


async def call_log_sip_ids(bridge: Bridge) -> set[str | None]:
    return {row.sip_call_id for row in await bridge.matrix.call_log.recent(limit=5000)}


async def test_invite_delivered_after_its_lifetime_is_not_dialled(
    e2e: E2E, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    first = await e2e.bridge()
    sipp = await busy_trunk(e2e, calls=1)
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    # The bridge goes down; Alice calls with a 2.5 s lifetime; the homeserver holds the invite for the bridge.
    await first.stop()
    e2e.bridges.remove(first)
    call = await alice.place_call(room, GHOST, lifetime=2500)
    await asyncio.sleep(4.0)
    # Back up on the same database: its start-up ping makes Synapse deliver the held events at once, with an
    # unsigned.age of about 4 s, beyond the lifetime.
    bridge = Bridge(first.config)
    await bridge.start()
    e2e.bridges.append(bridge)
    end = await call.wait_hangup_or_reject(timeout=30)
    assert end["type"] == "m.call.reject" and end["content"]["reason"] == "invite_timeout"
    assert end["sender"] == GHOST
    # The age came from unsigned.age (the homeserver's clock), not from origin_server_ts.
    lines = [r.getMessage() for r in caplog.records if call.call_id in str(getattr(r, "call_id", ""))]
    assert any(re.search(r"expired: age \d+ ms \(unsigned\.age\), lifetime 2500 ms", line) for line in lines), lines
    await asyncio.sleep(1.0)
    assert invites_seen(sipp) == [], sipp.messages
    assert await bridge.matrix.call_log.get(call.call_id) is None
    assert not bridge.calls.sessions() and bridge.calls.ports.in_use == frozenset()


async def test_long_expired_invite_is_only_logged_and_timestamp_is_the_fallback_age(
    e2e: E2E, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    bridge = await e2e.bridge()
    sipp = await busy_trunk(e2e, calls=1)
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    ancient = pushed_event(room, "m.call.invite", invite_content("ancientinvite"))
    ancient["unsigned"] = {"age": 600_000}  # ten minutes: its caller gave up long ago
    # No unsigned.age: the bridge falls back to its clock minus origin_server_ts (30 s ago, lifetime 10 s).
    skewed = pushed_event(room, "m.call.invite", invite_content("tsonlyinvite", lifetime=10000))
    del skewed["unsigned"]
    skewed["origin_server_ts"] = int(time.time() * 1000) - 30_000
    await push_transaction(e2e, [ancient, skewed])
    end = await alice.wait_for_event(room, lambda ev: ev.get("type") == "m.call.reject" and ev["sender"] == GHOST,
                                     timeout=20)
    assert end["content"]["call_id"] == "tsonlyinvite" and end["content"]["reason"] == "invite_timeout"
    text = caplog.text
    assert re.search(r"call_id=ancientinvite .*not dialling m.call.invite .*expired: age 600000 ms \(unsigned\.age\)",
                     text), text[-3000:]
    assert re.search(r"call_id=tsonlyinvite .*expired: age \d+ ms \(origin_server_ts\)", text)
    await asyncio.sleep(1.0)
    assert [ev["content"]["call_id"] for ev in ghost_events(alice, room, "m.call.reject")] == ["tsonlyinvite"]
    assert invites_seen(sipp) == [], sipp.messages
    assert not bridge.calls.sessions() and await bridge.matrix.call_log.recent() == []


async def test_aged_invite_rings_only_for_what_is_left_of_its_lifetime(e2e: E2E) -> None:
    bridge = await e2e.bridge()
    sipp = await trunk(e2e, "trunk_ring_until_cancel.xml")
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    # Delivered 55 s after it was sent (as Synapse does after an outage): 5 s of its 60 s lifetime are left.
    event = pushed_event(room, "m.call.invite", invite_content("agedinvite1"))
    event["unsigned"] = {"age": 55000}
    start = time.monotonic()
    await push_transaction(e2e, [event])
    await eventually(lambda: "agedinvite1" in bridge.calls.outbound, 10, "the call to start")
    assert bridge.calls.outbound["agedinvite1"].invite.lifetime_ms == 5000
    end = await alice.wait_for_event(room, lambda ev: ev.get("type") == "m.call.reject" and ev["sender"] == GHOST
                                     and ev["content"].get("call_id") == "agedinvite1", timeout=20)
    assert end["content"]["reason"] == "invite_timeout"
    assert 4.5 < time.monotonic() - start < 15  # not the invite's full 60 s
    assert await sipp.wait(20) == 0, sipp.report()  # the trunk was CANCELled
    assert set(invites_seen(sipp)) <= await call_log_sip_ids(bridge)
    await assert_released(bridge)


@pytest.mark.parametrize("case", ["no_audio", "version_2", "version_0_no_audio"])
async def test_invite_without_audio_or_of_unknown_version_is_refused_before_dialling(e2e: E2E, case: str) -> None:
    bridge = await e2e.bridge()
    sipp = await busy_trunk(e2e, calls=1)
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call_id = f"check{case.replace('_', '')}{uuid.uuid4().hex[:8]}"
    if case == "version_2":
        content = invite_content(call_id, version="2")
    else:
        content = invite_content(call_id, sdp=VIDEO_ONLY_OFFER, version=0 if "version_0" in case else "1")
    await alice.send_event(room, "m.call.invite", content)
    # Version 0 has no m.call.reject: its refusal is an m.call.hangup.
    kind = "m.call.hangup" if "version_0" in case else "m.call.reject"
    end = await alice.wait_for_event(room, lambda ev: ev.get("type") == kind and ev["sender"] == GHOST
                                     and ev["content"].get("call_id") == call_id, timeout=20)
    assert end["content"]["reason"] == "unknown_error" and end["content"]["version"] == "1"
    notice = await alice.wait_for_event(
        room, lambda ev: ev.get("type") == "m.room.message" and ev["sender"] == GHOST
        and ev["content"].get("msgtype") == "m.notice", timeout=10)
    expected = "VoIP version" if case == "version_2" else "no audio"
    assert expected in notice["content"]["body"]
    await asyncio.sleep(1.0)
    assert invites_seen(sipp) == [], sipp.messages
    assert await bridge.matrix.call_log.get(call_id) is None
    assert not bridge.calls.sessions() and bridge.calls.ports.in_use == frozenset()


async def test_a_thousand_invites_in_one_transaction_place_only_the_configured_calls(
    e2e: E2E, caplog: pytest.LogCaptureFixture
) -> None:
    def limits(data: dict[str, Any]) -> None:
        data["bridge"]["limits"] = {"attempts_per_minute": 5, "concurrent_calls": 2, "total_concurrent_calls": 50}
        data["logging"]["level"] = "INFO"  # 1000 invites at DEBUG would time the logging, not the bridge

    caplog.set_level(logging.INFO, logger="bridge.calls")
    bridge = await e2e.bridge(limits)
    sipp = await trunk(e2e, "trunk_ring_until_cancel.xml", calls=2)  # rings until the bridge cancels
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    flood = [pushed_event(room, "m.call.invite", invite_content(f"flood{i:04d}")) for i in range(1000)]
    took = await push_transaction(e2e, flood)
    # Handled promptly: no homeserver round trip per invite inside the transaction.
    assert took < 5, f"the transaction took {took:.1f} s"
    await eventually(lambda: len(invites_seen(sipp)) >= 2, 15, "two INVITEs at the trunk")
    placed = sorted(bridge.calls.outbound)
    assert len(placed) == 2 and all(c.startswith("flood") for c in placed)
    refused = [r for r in caplog.records if "refusing m.call.invite" in r.getMessage()]
    assert len(refused) == 998 and all("limit:" in r.getMessage() for r in refused)
    # Visible, but bounded: the first refusals get m.call.reject (user_busy: two calls are ringing) and the
    # user one notice, not 998 of each.
    await eventually(lambda: len(ghost_events(alice, room, "m.call.reject")) >= 20 and bool(notices(alice, room)), 20,
                     "the refusals in the room")
    await asyncio.sleep(1.5)
    rejects = ghost_events(alice, room, "m.call.reject")
    assert len(rejects) == 20 and {ev["content"]["reason"] for ev in rejects} == {"user_busy"}
    assert {ev["content"]["call_id"] for ev in rejects}.isdisjoint(placed)
    assert len(notices(alice, room)) == 1 and "2 phone call(s) in progress" in notices(alice, room)[0]
    assert len(invites_seen(sipp)) == 2, sipp.messages
    assert set(invites_seen(sipp)) <= await call_log_sip_ids(bridge)
    # Hanging up the two ringing calls CANCELs them at the trunk.
    hangups = [pushed_event(room, "m.call.hangup", {"call_id": c, "party_id": "ALICEPARTY", "version": "1"})
               for c in placed]
    await push_transaction(e2e, hangups)
    assert await sipp.wait(30) == 0, sipp.report()
    await assert_released(bridge)
    assert bridge.calls.call_limits.active() == 0


async def test_reused_call_id_is_never_dialled_again_and_every_invite_has_a_call_log_row(e2e: E2E) -> None:
    bridge = await e2e.bridge()
    sipp = await busy_trunk(e2e, calls=2)  # would answer a second INVITE too: it must not get one
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    first_end = await call.wait_hangup_or_reject(timeout=30)
    assert first_end["content"]["reason"] == "user_busy"
    await assert_released(bridge)
    # The same call_id again, in a fresh invite: refused, and the trunk sees nothing.
    await alice.send_event(room, "m.call.invite", invite_content(call.call_id))
    await eventually(lambda: len([ev for ev in ghost_events(alice, room, "m.call.reject")
                                  if ev["content"]["call_id"] == call.call_id]) == 2, 20, "the second reject")
    await asyncio.sleep(1.0)
    seen = invites_seen(sipp)
    assert len(seen) == 1, sipp.messages
    row = await bridge.matrix.call_log.get(call.call_id)
    assert row is not None and row.sip_call_id == seen[0] and row.end_reason == "sip_486"
    assert set(seen) <= await call_log_sip_ids(bridge)
    assert not bridge.calls.sessions()
