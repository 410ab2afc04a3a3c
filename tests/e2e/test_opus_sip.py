"""Opus on the SIP leg, end to end: an Element-like aiortc caller (Opus) calls a phone (sipp answering
opus/48000/2, RTP from a real libopus encoder). With a compatible fmtp the bridge passes Opus through untouched:
the very payload bytes one side sends arrive at the other, and the tones are heard both ways. A phone asking
for constant bitrate (cbr=1) gets transcoded audio instead."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.e2e.conftest import E2E, GHOST, SCENARIOS, assert_released, eventually
from tests.e2e.test_inbound_calls import ALICE, alice_client, phone, routes
from tests.e2e.test_outbound_calls import portal_room
from tests.harness.matrix_client import IncomingCall, OutgoingCall
from tests.harness.opus_peer import OpusPeer, rtp_payload
from tests.harness.sipp import SippProcess

pytestmark = pytest.mark.e2e

CALLER_HZ = 440.0
PHONE_HZ = 1000.0


def record_caller_payloads(call: OutgoingCall | IncomingCall, sdp: str) -> tuple[list[bytes], list[bytes]]:
    """Opus payloads the Matrix client's aiortc sends and receives (plain RTP, inside DTLS-SRTP); `sdp` is
    the offer that fixed the payload types."""
    sent: list[bytes] = []
    received: list[bytes] = []
    tap: Any = call.dtmf
    assert tap is not None
    send: Callable[[bytes], Awaitable[None]] = tap._original_send
    handle: Callable[[bytes, int], Awaitable[None]] = tap._original_handle

    def opus(data: bytes) -> bool:
        return len(data) >= 12 and not 192 <= data[1] <= 223 and (data[1] & 0x7F) == opus_pt[0]

    async def recording_send(data: bytes) -> None:
        if opus(data):
            sent.append(rtp_payload(data))
        await send(data)

    async def recording_handle(data: bytes, arrival_time_ms: int) -> None:
        if opus(data):
            received.append(rtp_payload(data))
        await handle(data, arrival_time_ms)

    found = re.search(r"a=rtpmap:(\d+) opus/48000", sdp)
    assert found is not None
    opus_pt = [int(found.group(1))]
    tap._original_send = recording_send
    tap._original_handle = recording_handle
    return sent, received


@pytest.mark.parametrize("fmtp,passthrough", [
    ("minptime=10;useinbandfec=1;maxplaybackrate=48000", True),
    ("cbr=1;maxaveragebitrate=24000", False),
])
async def test_opus_on_both_legs_is_passed_through_unless_the_phones_fmtp_forbids_it(
        e2e: E2E, fmtp: str, passthrough: bool) -> None:
    phone = OpusPeer(tone_hz=PHONE_HZ)
    await phone.open()
    try:
        bridge = await e2e.bridge(lambda data: data["media"].update(codecs=["OPUS", "PCMU"]))
        phone.start_sending(seconds=60)
        sipp = SippProcess(SCENARIOS / "trunk_answer_opus.xml", local_port=e2e.plan.trunk_port, timeout=90,
                           extra_args=["-key", "rtp_port", str(phone.port), "-key", "fmtp", fmtp],
                           workdir=e2e.tmp / "sipp")
        await e2e.own(sipp).start()
        alice = await e2e.client("alice")
        room = await portal_room(alice)
        call = await alice.place_call(room, GHOST, tone_hz=CALLER_HZ)
        sent, received = record_caller_payloads(call, call.sent_sdp or "")
        await call.wait_answer(timeout=30)
        assert "opus/48000" in call.answer_event["content"]["answer"]["sdp"]  # type: ignore[index]

        await call.wait_for_tone(PHONE_HZ, timeout=30, min_frames=50)  # the phone's Opus, heard in Matrix
        await eventually(lambda: len(phone.received_payloads) >= 100, 20, "Opus at the phone")
        await eventually(lambda: phone.tone_ratio(CALLER_HZ) > 0.5, 10, "the caller's tone at the phone")
        assert set(phone.received_pts) == {111}  # Opus only, in the payload type of the phone's answer

        media = bridge.calls.outbound[call.call_id].media
        stats = media.stats()
        assert stats.codec_sip == "OPUS" and stats.codec_webrtc is not None
        assert stats.codec_webrtc.upper() == "OPUS" and stats.passthrough is passthrough
        caller_sent, phone_sent = set(sent), set(phone.sent_payloads)
        assert len(sent) >= 100 and len(received) > 50  # the phone got 100 of them (waited for above)
        relayed_to_phone = sum(p in caller_sent for p in phone.received_payloads) / len(phone.received_payloads)
        relayed_to_caller = sum(p in phone_sent for p in received) / len(received)
        if passthrough:  # the same bytes on both legs: nothing was decoded or re-encoded
            assert relayed_to_phone > 0.95 and relayed_to_caller > 0.95, (relayed_to_phone, relayed_to_caller)
        else:  # re-encoded for the phone (CBR, 24 kbit/s): none of the caller's own packets get there
            assert relayed_to_phone < 0.05 and relayed_to_caller < 0.05, (relayed_to_phone, relayed_to_caller)
            sizes = {len(p) for p in phone.received_payloads[20:]}
            assert len(sizes) == 1 and sizes.pop() <= 24000 // 8 // 50 + 3  # CBR at most 24 kbit/s

        # DTMF on the Opus clock both ways: telephone-event/48000 on the SIP leg
        await call.send_dtmf("5")
        await eventually(lambda: phone.dtmf_received == [5], 10, "the caller's DTMF 5 at the phone")
        phone.send_dtmf(9)  # 9
        await call.wait_for_dtmf("9", timeout=10)
        # (stats of a call in a media worker reach the bridge process within a second)
        await eventually(lambda: ("5", "matrix") in media.stats().dtmf, 5, "the caller's DTMF in the stats")

        await call.hangup()
        assert await sipp.wait() == 0, sipp.report()
        await assert_released(bridge)
    finally:
        await phone.close()


async def test_phone_calling_with_opus_reaches_element_with_opus_passed_through(e2e: E2E) -> None:
    """SIP -> Matrix: the phone offers only Opus (its own payload types 107/108); the bridge offers Opus to
    Element and relays the payloads unchanged both ways."""
    opus_sdp = {
        "RTP/AVP 0 8 101": "RTP/AVP 107 108",
        "a=rtpmap:0 PCMU/8000\na=rtpmap:8 PCMA/8000": "a=rtpmap:107 opus/48000/2\na=fmtp:107 useinbandfec=1",
        "a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-16": "a=rtpmap:108 telephone-event/48000\na=fmtp:108 0-16",
    }
    caller = OpusPeer(tone_hz=PHONE_HZ, payload_type=107)
    await caller.open()
    try:
        def opus_and_route(data: dict[str, Any]) -> None:
            routes()(data)
            data["media"]["codecs"] = ["OPUS", "PCMU"]

        bridge = await e2e.bridge(opus_and_route)
        alice = await alice_client(e2e)
        caller.start_sending(seconds=60)
        sipp = await phone(e2e, "caller_talk.xml", "-key", "rtp_port", str(caller.port), "-d", "5000",
                           replace=opus_sdp)
        call = await alice.wait_incoming_call(timeout=40)
        assert "opus/48000/2" in call.offer_sdp and call.invite["content"]["invitee"] == ALICE
        await call.answer(tone_hz=CALLER_HZ)
        sent, received = record_caller_payloads(call, call.offer_sdp)
        await call.wait_for_tone(PHONE_HZ, timeout=30, min_frames=50)
        await eventually(lambda: len(caller.received_payloads) >= 100, 20, "Opus at the phone")
        await eventually(lambda: caller.tone_ratio(CALLER_HZ) > 0.5, 10, "Element's tone at the phone")
        session = next(iter(bridge.calls.inbound.values()))
        stats = session.media.stats()
        assert stats.codec_sip == "OPUS" and stats.passthrough
        assert set(caller.received_pts) == {107}
        element_sent, phone_sent = set(sent), set(caller.sent_payloads)
        late = caller.received_payloads[-50:]  # sent after the recording hook was in place
        assert sum(p in element_sent for p in late) / len(late) > 0.95
        assert received and sum(p in phone_sent for p in received) / len(received) > 0.95
        assert await sipp.wait() == 0, sipp.report()  # the phone hangs up after 5 s
        await assert_released(bridge)
    finally:
        await caller.close()
