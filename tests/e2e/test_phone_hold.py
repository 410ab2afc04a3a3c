"""Hold / resume from the phone, told to the Matrix party: the bridge's own m.call.negotiate offers, answered by
the Element-like aiortc client as matrix-js-sdk does. Real Synapse, the bridge, sipp as phone / trunk (it checks
the RFC 3264 directions of the bridge's answers), a real RTP peer playing 1 kHz and recording sequence numbers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.conftest import E2E, GHOST, assert_released, eventually
from tests.e2e.test_inbound_calls import CALLER_GHOST, alice_client, phone, routes
from tests.e2e.test_outbound_calls import portal_room, trunk
from tests.harness.matrix_client import _Call
from tests.harness.rtp_peer import RtpPeer

pytestmark = pytest.mark.e2e


def negotiate_sdp(event: dict[str, Any]) -> str:
    return str(event["content"]["description"]["sdp"])


async def nth_offer(call: _Call, n: int) -> dict[str, Any]:
    await eventually(lambda: len(call.negotiate_offers) >= n, 15, f"m.call.negotiate offer #{n} from the bridge")
    return call.negotiate_offers[n - 1]


async def test_phone_hold_inactive_is_offered_to_matrix_audio_stops_both_ways_and_resume_restores_it(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    bridge = await e2e.bridge(routes())
    alice = await alice_client(e2e)
    rtp_peer.start_sending(seconds=60)
    sipp = await phone(e2e, "caller_hold_resume.xml", "-key", "rtp_port", str(rtp_peer.port))
    call = await alice.wait_incoming_call(timeout=40)
    await call.answer()
    await call.wait_for_tone(1000.0, timeout=20, min_frames=50)
    await eventually(lambda: rtp_peer.received >= 50, 20, "RTP at the phone before hold")

    # The phone holds (a=inactive, sipp checks our 200 says a=inactive): Matrix gets an inactive offer from the
    # caller ghost, answers it, and sees itself held; no audio either way.
    held = await nth_offer(call, 1)
    assert held["sender"] == CALLER_GHOST and held["content"]["party_id"] == call.caller_party_id
    assert held["content"]["version"] == "1" and "a=inactive" in negotiate_sdp(held)
    await eventually(lambda: call.held_by_remote, 10, "the client applying its answer")
    assert call.remote_direction == "inactive"
    await asyncio.sleep(0.5)  # packets in flight
    at_phone, at_matrix = rtp_peer.received, call.frames_received
    await asyncio.sleep(2.0)
    assert rtp_peer.received - at_phone <= 2, "RTP kept flowing to a phone that holds"
    assert call.frames_received - at_matrix <= 10, "audio kept flowing to Matrix while the phone holds"

    # Resume (a=sendrecv): a sendrecv offer, audio both ways again on the same connection.
    resumed = await nth_offer(call, 2)
    assert "a=sendrecv" in negotiate_sdp(resumed)
    await eventually(lambda: not call.held_by_remote, 10, "the client applying the resume")
    at_phone, at_matrix = rtp_peer.received, call.frames_received
    await eventually(lambda: rtp_peer.received - at_phone >= 50, 10, "RTP at the phone after resume")
    await call.wait_for_tone(1000.0, timeout=10, min_frames=at_matrix + 50)
    assert call.connection_state == "connected"

    await call.wait_hangup(timeout=20)  # the phone's BYE
    assert await sipp.wait() == 0, sipp.report()
    assert "re-INVITE a=inactive answered with a=inactive" in sipp.logs
    assert "re-INVITE a=sendrecv answered with a=sendrecv" in sipp.logs
    assert not rtp_peer.seq_gaps(), f"RTP sequence gaps at the phone: {rtp_peer.seq_gaps()[:5]}"
    await assert_released(bridge)


async def test_rtp_sequence_numbers_continue_without_gap_across_a_phone_hold(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    """An old Matrix client ignores the negotiate offer and keeps sending through the hold: nothing reaches the
    phone meanwhile, and the numbering after the resume continues where it stopped (timestamps may jump)."""
    bridge = await e2e.bridge(routes())
    alice = await alice_client(e2e)
    rtp_peer.start_sending(seconds=60)
    sipp = await phone(e2e, "caller_hold_resume.xml", "-key", "rtp_port", str(rtp_peer.port))
    call = await alice.wait_incoming_call(timeout=40)
    call.answer_negotiate = False
    await call.answer()
    await eventually(lambda: rtp_peer.received >= 50, 20, "RTP at the phone before hold")
    await nth_offer(call, 1)  # told, never answered
    await asyncio.sleep(0.5)
    at_phone, sent_by_matrix = rtp_peer.received, call.frames_received
    await asyncio.sleep(2.0)
    assert rtp_peer.received - at_phone <= 2, "RTP kept flowing to a phone that holds"
    assert call.frames_received > sent_by_matrix, "the phone's audio should still reach Matrix (no answer)"
    await eventually(lambda: rtp_peer.received - at_phone >= 50, 15, "RTP at the phone after resume")
    await call.wait_hangup(timeout=20)
    assert await sipp.wait() == 0, sipp.report()
    assert rtp_peer.received >= 150
    assert not rtp_peer.seq_gaps(), f"RTP sequence gaps at the phone: {rtp_peer.seq_gaps()[:5]}"
    await assert_released(bridge)


async def test_trunk_hold_sendonly_is_offered_sendonly_to_the_matrix_caller_and_resume_restores_audio(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    bridge = await e2e.bridge()
    rtp_peer.start_sending(seconds=60)
    sipp = await trunk(e2e, "trunk_hold_resume.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST, dtmf=True)
    await call.wait_answer(timeout=30)
    await call.wait_for_tone(1000.0, timeout=20, min_frames=50)
    await eventually(lambda: rtp_peer.received >= 50, 20, "RTP at the trunk before hold")

    # The phone holds with a=sendonly (answered a=recvonly, sipp checks): the bridge mirrors it, offering
    # sendonly to Matrix. The client answers recvonly and shows itself held; the phone's hold music (the
    # peer's tone) still reaches Matrix, nothing goes to the phone.
    held = await nth_offer(call, 1)
    assert held["sender"] == GHOST and held["content"]["party_id"] == call.remote_party_id
    assert "a=sendonly" in negotiate_sdp(held)
    await eventually(lambda: call.held_by_remote, 10, "the client applying its answer")
    await asyncio.sleep(0.5)
    at_phone, at_matrix = rtp_peer.received, call.frames_received
    await asyncio.sleep(2.0)
    assert rtp_peer.received - at_phone <= 2, "RTP kept flowing to a phone that holds"
    await call.wait_for_tone(1000.0, timeout=5, min_frames=at_matrix + 50)  # hold music heard

    resumed = await nth_offer(call, 2)
    assert "a=sendrecv" in negotiate_sdp(resumed)
    await eventually(lambda: not call.held_by_remote, 10, "the client applying the resume")
    at_phone = rtp_peer.received
    await eventually(lambda: rtp_peer.received - at_phone >= 50, 10, "RTP at the trunk after resume")
    media = bridge.calls.outbound[call.call_id].media
    assert media.stats().passthrough and media.webrtc_connection_state == "connected"

    await call.wait_hangup_or_reject(timeout=20)  # the trunk's BYE
    assert await sipp.wait() == 0, sipp.report()
    assert not rtp_peer.seq_gaps(), f"RTP sequence gaps at the trunk: {rtp_peer.seq_gaps()[:5]}"
    await assert_released(bridge)
