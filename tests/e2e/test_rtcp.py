"""RTCP towards the Matrix client in passthrough: the bridge's tap takes the client's audio before aiortc's
receiver, yet the client still gets receiver reports for its stream (Chrome's RTT / loss figures)."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.conftest import E2E, GHOST, assert_released, eventually
from tests.e2e.test_outbound_calls import portal_room, trunk
from tests.harness.matrix_client import _Call
from tests.harness.rtp_peer import RtpPeer

pytestmark = pytest.mark.e2e


async def wait_receiver_report(call: _Call, timeout: float) -> list[object]:
    found: list[object] = []

    async def poll() -> bool:
        found[:] = [s for s in await call.receiver_reports() if getattr(s, "roundTripTime", None) is not None]
        return bool(found)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await poll():
        if loop.time() > deadline:
            raise TimeoutError(f"no RTCP receiver report with an RTT for the client's stream within {timeout}s")
        await asyncio.sleep(0.5)
    return found


async def test_passthrough_call_sends_rtcp_receiver_reports_for_the_matrix_clients_stream(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    bridge = await e2e.bridge()
    rtp_peer.start_sending(seconds=60)
    sipp = await trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST, codecs=["PCMU"])
    await call.wait_answer(timeout=30)
    await eventually(lambda: rtp_peer.received >= 50, 20, "RTP at the trunk")
    assert bridge.calls.outbound[call.call_id].media.stats().passthrough
    # aiortc's RTCP loop runs every 0.5-1.5 s; an RTT needs one of the client's sender reports answered.
    reports = await wait_receiver_report(call, timeout=12)
    stat = reports[0]
    assert getattr(stat, "packetsLost", None) == 0
    assert 0 <= getattr(stat, "roundTripTime", -1) < 1.0
    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)
