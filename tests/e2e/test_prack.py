"""RFC 3262 reliable provisional responses end to end (real Synapse, the bridge, sipp, an aiortc Matrix client):
a trunk's reliable 183 with SDP is PRACKed and its early media heard in Matrix (early_media: connect), and a
phone requiring 100rel gets the bridge's 180 reliably, PRACKs it, and is answered when the Matrix user answers."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import E2E, GHOST, assert_released, eventually
from tests.e2e.test_early_media import early_media
from tests.e2e.test_inbound_calls import alice_client, phone, routes
from tests.e2e.test_outbound_calls import portal_room, trunk
from tests.harness.rtp_peer import RtpPeer

pytestmark = pytest.mark.e2e


async def test_reliable_183_with_sdp_is_pracked_and_its_early_media_heard_in_matrix(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    bridge = await e2e.bridge(early_media("connect"))
    sipp = await trunk(e2e, "trunk_early_media_reliable.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await eventually(lambda: call.call_id in bridge.calls.outbound
                     and bridge.calls.outbound[call.call_id].rtp_port is not None, 15, "the outbound call")
    rtp_peer.send_to(("127.0.0.1", bridge.calls.outbound[call.call_id].rtp_port or 0))
    rtp_peer.start_sending(seconds=20)
    session = bridge.calls.outbound[call.call_id]
    await call.wait_answer(timeout=10)  # on the reliable 183
    assert "PRACK sip:" in sipp.messages  # sipp checked its RAck before sending anything else
    await call.wait_for_tone(1000.0, timeout=10, min_frames=50)  # the early media, live
    await eventually(lambda: session.machine.state.value == "answered", 10, "the trunk's 200")
    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()
    assert sipp.messages.count("PRACK sip:") == 1  # one PRACK, however often the 183 was re-sent
    await assert_released(bridge)


async def test_phone_requiring_100rel_gets_a_reliable_180_and_is_answered(e2e: E2E, rtp_peer: RtpPeer) -> None:
    bridge = await e2e.bridge(routes())
    alice = await alice_client(e2e)
    rtp_peer.start_sending(seconds=30)
    sipp = await phone(e2e, "caller_require_100rel.xml", "-key", "rtp_port", str(rtp_peer.port), "-d", "2000")
    call = await alice.wait_incoming_call(timeout=40)
    await eventually(lambda: "PRACK sip:" in sipp.messages, 15, "the phone's PRACK")
    await call.answer()
    await call.wait_for_frames(25, timeout=30)
    hangup = await call.wait_hangup(timeout=30)
    assert hangup["content"]["reason"] == "user_hangup"
    assert await sipp.wait() == 0, sipp.report()  # sipp checked the 180's Require: 100rel and RSeq
    await assert_released(bridge)
