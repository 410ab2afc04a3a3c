"""The homeserver restarting or down, end to end, on a DEDICATED Synapse that these tests stop and start again
(same port, same SQLite DB), so the session's shared Synapse is not disturbed.

Synapse on SQLite numbers appservice transactions from 1 again after a restart; the bridge must still handle
every event exactly once. Events the bridge sends while Synapse is down are delivered when it is back. SIP
INVITEs that arrive during an outage get a prompt 503 and leave nothing allocated.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Bridge
from tests.e2e.conftest import E2E, GHOST, PASSWORD, SCENARIOS, AppserviceSink, assert_released, eventually
from tests.harness.bridge_stack import SERVER_NAME, StackPlan
from tests.harness.rtp_peer import RtpPeer
from tests.harness.sip_ua import RawUdpPeer, raw_request
from tests.harness.sipp import SippProcess
from tests.harness.synapse import (
    SynapseServer,
    register_user_sync,
    restart_synapse_sync,
    start_synapse_process_sync,
    stop_synapse_sync,
)

pytestmark = pytest.mark.e2e

DIALLED = "18005550100"
ALICE = f"@alice:{SERVER_NAME}"
SDP = ("v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


@pytest.fixture(scope="module")
def outage_env(tmp_path_factory: pytest.TempPathFactory, synapse_factory: Any) -> Iterator[tuple[StackPlan,
                                                                                                 SynapseServer]]:
    plan = StackPlan(tmp_path_factory.mktemp("outage-stack"))
    plan.sink = AppserviceSink(plan.as_port)
    plan.sink.start()
    server = synapse_factory([plan.write_registration()], server_name=SERVER_NAME)
    plan.homeserver_url = server.url
    register_user_sync(server, "alice", PASSWORD)
    yield plan, server
    plan.sink.stop()
    stop_synapse_sync(server)


@pytest.fixture
async def env(outage_env: tuple[StackPlan, SynapseServer], tmp_path: Path) -> AsyncIterator[E2E]:
    plan, server = outage_env
    e = E2E(plan, server, tmp_path)
    try:
        yield e
    finally:
        if server.process.poll() is not None:  # a test failed while Synapse was down
            await asyncio.to_thread(start_synapse_process_sync, server)
        for sipp in e.sipps:
            await sipp.aclose()
        for client in e.clients:
            await client.close()
        for bridge in e.bridges:
            await bridge.stop()
        if e.bridges:
            plan.sink.start()


def record_transactions(bridge: Bridge) -> list[int]:
    """The IDs of the transactions the bridge's appservice endpoint handles, in order."""
    seen: list[int] = []
    server = bridge.matrix.server
    run = server._run_transaction

    async def spy(key: tuple[str, str], body: bytes) -> Any:
        if key[0].isdigit():
            seen.append(int(key[0]))
        return await run(key, body)

    server._run_transaction = spy  # type: ignore[method-assign]
    return seen


async def trunk(env: E2E, scenario: str, *args: str) -> SippProcess:
    sipp = SippProcess(SCENARIOS / scenario, local_port=env.plan.trunk_port, extra_args=list(args), timeout=60,
                       workdir=env.tmp / "sipp")
    await env.own(sipp).start()
    return sipp


def ghost_events(events: list[dict[str, Any]], room: str, etype: str, call_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("room_id") == room and e.get("type") == etype and e.get("sender") == GHOST
            and e.get("content", {}).get("call_id") == call_id]


async def test_synapse_restarts_between_and_during_calls_and_every_event_is_handled_once(
    env: E2E, tmp_path: Path
) -> None:
    bridge = await env.bridge()
    txns = record_transactions(bridge)
    peer = RtpPeer(tone_hz=1000.0)
    await peer.open()
    try:
        peer.start_sending(seconds=60)
        alice = await env.client("alice")
        room = await alice.create_dm(GHOST)
        await alice.wait_for_membership(room, GHOST, "join", timeout=30)
        # A first call, so Synapse's transaction counter is well above 1.
        sipp = await trunk(env, "trunk_answer.xml", "-key", "rtp_port", str(peer.port))
        first = await alice.place_call(room, GHOST)
        await first.wait_answer(timeout=30)
        await first.hangup()
        assert await sipp.wait() == 0, sipp.report()
        await assert_released(bridge)
        before = max(txns)
        assert before > 1

        # Restart between calls: Synapse numbers transactions from 1 again; the next call is still handled.
        await asyncio.to_thread(restart_synapse_sync, env.synapse)
        mark = len(txns)
        sipp = await trunk(env, "trunk_answer_then_bye.xml", "-key", "rtp_port", str(peer.port), "-d", "6000")
        second = await alice.place_call(room, GHOST)
        await second.wait_answer(timeout=30)
        assert txns[mark:] and min(txns[mark:]) < before, f"not renumbered: {before} then {txns[mark:]}"

        # Mid-call: Synapse goes down, the phone hangs up; the bridge's m.call.hangup waits in the outbox
        # and reaches the Matrix client once Synapse is back.
        await asyncio.to_thread(stop_synapse_sync, env.synapse)
        assert await sipp.wait() == 0, sipp.report()  # the phone's BYE was answered
        await eventually(lambda: bridge.matrix.portals.outbox.pending >= 1, 10, "the hangup queued in the outbox")
        await asyncio.sleep(2)  # a few failed attempts
        await asyncio.to_thread(start_synapse_process_sync, env.synapse)
        hangup = await second.wait_hangup_or_reject(timeout=40)
        assert hangup["type"] == "m.call.hangup" and hangup["content"]["reason"] == "user_hangup"
        await assert_released(bridge)
        # Exactly once, on both sides: one INVITE per call at the trunk, one answer and one hangup in the room.
        await asyncio.sleep(1)
        assert len(ghost_events(alice.events, room, "m.call.answer", second.call_id)) == 1
        assert len(ghost_events(alice.events, room, "m.call.hangup", second.call_id)) == 1
        assert len(bridge.calls.outbound) == 0
        rows = [await bridge.matrix.call_log.get(c.call_id) for c in (first, second)]
        assert [r.end_reason for r in rows if r is not None] == ["matrix_user_hangup", "sip_bye"]
        assert len(await bridge.matrix.call_log.recent()) == 2  # each m.call.invite started exactly one call
    finally:
        await peer.close()


def _to_tag(response: bytes) -> str:
    m = re.search(rb"^To:.*;tag=([^;\r\n]+)", response, re.MULTILINE | re.IGNORECASE)
    return m.group(1).decode() if m else ""


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
async def test_invites_during_an_outage_get_a_prompt_503_and_release_everything(env: E2E, outage: str) -> None:
    """stopped: connections are refused. frozen (SIGSTOP): connections hang, so the deadline has to end them."""
    def overrides(data: dict[str, Any]) -> None:
        data["sip"]["inbound"]["routes"] = [{"number": DIALLED, "users": [ALICE]}]
        data["sip"]["inbound"]["rate_limit"] = {"per_source_per_second": 1000, "burst": 1000}
        data["bridge"]["homeserver_timeout_s"] = 3

    bridge = await env.bridge(overrides)
    if outage == "stopped":
        await asyncio.to_thread(stop_synapse_sync, env.synapse)
    else:
        os.kill(env.synapse.process.pid, signal.SIGSTOP)
    phone = await RawUdpPeer.open()
    target = ("127.0.0.1", env.plan.sip_port)
    try:
        start = time.monotonic()
        for i in range(20):
            phone.send(raw_request("INVITE", target, via_port=phone.port, branch=f"z9hG4bKout{i}",
                                   call_id=f"outage-{i}", from_tag=f"ft{i}", body=SDP)
                       .replace(f"bob@127.0.0.1:{target[1]}", f"{DIALLED}@127.0.0.1:{target[1]}"), target)
        def answered() -> dict[str, bytes]:  # Call-ID -> its 503 (retransmissions of one 503 count once)
            finals = [d for _, d in phone.messages("SIP/2.0 503")]
            return {re.search(rb"Call-ID: (\S+)", f).group(1).decode(): f for f in finals}  # type: ignore[union-attr]

        await eventually(lambda: len(answered()) >= 20, 30, "a 503 for every INVITE")
        elapsed = time.monotonic() - start
        assert elapsed < 10, f"503s took {elapsed:.1f}s"  # homeserver_timeout_s is 3
        by_call = answered()
        assert sorted(by_call) == sorted(f"outage-{i}" for i in range(20))
        assert all(b"Retry-After: 30" in d for _, d in phone.messages("SIP/2.0 503"))  # ours, not the limiter's (5)
        assert not phone.messages("SIP/2.0 200") and not phone.messages("SIP/2.0 180")
        for i in range(20):  # ACK the final responses, as a phone does
            resp = by_call[f"outage-{i}"]
            phone.send(raw_request("ACK", target, via_port=phone.port, branch=f"z9hG4bKout{i}",
                                   call_id=f"outage-{i}", from_tag=f"ft{i}", to_tag=_to_tag(resp))
                       .replace(f"bob@127.0.0.1:{target[1]}", f"{DIALLED}@127.0.0.1:{target[1]}"), target)
        await assert_released(bridge)
        assert not bridge.calls.inbound
    finally:
        phone.close()
        if outage == "stopped":
            await asyncio.to_thread(start_synapse_process_sync, env.synapse)
        else:
            os.kill(env.synapse.process.pid, signal.SIGCONT)


async def test_homeserver_lost_while_sending_the_invite_is_503_and_a_hangup_follows_it(env: E2E) -> None:
    """The portal exists and the user is in it, then Synapse goes down before the m.call.invite: the invite is
    withdrawn after homeserver_timeout_s, the phone gets 503 (no 180), and once Synapse is back the client gets
    the hangup that follows a withdrawn invite, never the invite."""
    def overrides(data: dict[str, Any]) -> None:
        data["sip"]["inbound"]["routes"] = [{"number": DIALLED, "users": [ALICE]}]
        data["bridge"]["homeserver_timeout_s"] = 3

    bridge = await env.bridge(overrides)
    bridge.matrix.portals.outbox.backoff_max_s = 2.0  # retry soon once Synapse is back (keeps the test short)
    alice = await env.client("alice")
    await alice.start_sync(auto_join=True)
    matrix: Any = bridge.calls.matrix
    real_is_joined, real_wait_joined = matrix.is_joined, matrix.wait_joined

    async def then_synapse_stops(joined: bool) -> bool:
        if joined:  # blocks the loop on purpose: Synapse is gone before the invite is sent
            stop_synapse_sync(env.synapse)
        return joined

    async def is_joined(room_id: str, mxid: str) -> bool:
        return await then_synapse_stops(await real_is_joined(room_id, mxid))

    async def wait_joined(room_id: str, mxid: str, timeout: float) -> bool:
        return await then_synapse_stops(await real_wait_joined(room_id, mxid, timeout))

    matrix.is_joined, matrix.wait_joined = is_joined, wait_joined
    phone = await RawUdpPeer.open()
    target = ("127.0.0.1", env.plan.sip_port)
    uri = f"bob@127.0.0.1:{target[1]}"
    try:
        phone.send(raw_request("INVITE", target, via_port=phone.port, branch="z9hG4bKinv1", call_id="inv-1",
                               body=SDP).replace(uri, f"{DIALLED}@127.0.0.1:{target[1]}"), target)
        await eventually(lambda: env.synapse.process.poll() is not None, 30, "Synapse stopped after the join")
        stopped = time.monotonic()
        final = (await phone.wait_for_message("SIP/2.0 503", timeout=15))[0]
        assert time.monotonic() - stopped < 10
        assert b"Retry-After: 30" in final
        assert not phone.messages("SIP/2.0 180")
        phone.send(raw_request("ACK", target, via_port=phone.port, branch="z9hG4bKinv1", call_id="inv-1",
                               to_tag=_to_tag(final)).replace(uri, f"{DIALLED}@127.0.0.1:{target[1]}"), target)
        await assert_released(bridge)
    finally:
        phone.close()
    [row] = await bridge.matrix.call_log.recent()
    assert row.end_reason == "homeserver_unreachable"
    await asyncio.to_thread(start_synapse_process_sync, env.synapse)
    hangup = await alice.wait_for_event(row.room_id, lambda e: e.get("type") == "m.call.hangup"
                                        and e.get("content", {}).get("call_id") == row.call_id, timeout=30)
    assert hangup["content"]["reason"] == "unknown_error"
    await asyncio.sleep(1)
    assert not [e for e in alice.events if e.get("type") == "m.call.invite"
                and e.get("content", {}).get("call_id") == row.call_id], "the withdrawn invite arrived late"
