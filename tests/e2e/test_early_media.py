"""Early media (a 183 with SDP) on Matrix -> SIP calls, per ``bridge.early_media``: real Synapse, the bridge, sipp
as the trunk (183, then a failure; never a 200) and a real RTP peer playing the trunk's 1 kHz announcement to the
bridge's RTP port, as a trunk's media server does before any packet from us."""

from __future__ import annotations

import array
import io
import wave
from typing import Any

import pytest

from tests.e2e.conftest import E2E, GHOST, assert_released, eventually
from tests.e2e.test_outbound_calls import portal_room, trunk
from tests.harness.rtp_peer import RtpPeer
from tests.harness.tone import tone_ratio

pytestmark = pytest.mark.e2e


def early_media(mode: str) -> Any:
    def apply(data: dict[str, Any]) -> None:
        data["bridge"]["early_media"] = mode

    return apply


def call_events(events: list[dict[str, Any]], call_id: str, event_type: str) -> list[dict[str, Any]]:
    return [ev for ev in events if ev.get("type") == event_type and ev.get("content", {}).get("call_id") == call_id]


async def test_announce_mode_posts_the_183_announcement_of_a_failed_call_as_audio_and_never_answers_matrix(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    bridge = await e2e.bridge()  # announce is the default
    sipp = await trunk(e2e, "trunk_early_media_fail.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await eventually(lambda: call.call_id in bridge.calls.outbound
                     and bridge.calls.outbound[call.call_id].rtp_port is not None, 15, "the outbound call")
    rtp_peer.send_to(("127.0.0.1", bridge.calls.outbound[call.call_id].rtp_port or 0))
    rtp_peer.start_sending(seconds=10)

    ending = await call.wait_hangup_or_reject(timeout=20)  # the 404 after ~3 s of announcement
    assert ending["type"] == "m.call.reject" and ending["sender"] == GHOST
    audio = await alice.wait_for_event(
        room, lambda ev: ev.get("type") == "m.room.message" and ev.get("content", {}).get("msgtype") == "m.audio",
        timeout=15)
    content = audio["content"]
    assert audio["sender"] == GHOST and "404" in content["body"]
    assert content["info"]["mimetype"] == "audio/wav" and content["url"].startswith("mxc://")
    assert 1500 <= content["info"]["duration"] <= 4000, content
    data = await alice.download(content["url"])
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        samples = array.array("h", w.readframes(w.getnframes()))
    assert tone_ratio(samples[-8000:], 8000, 1000.0) > 0.5, "the recording is not the trunk's 1 kHz announcement"
    # The Matrix call was never answered, and no 200 exists anywhere.
    assert not call_events(alice.events, call.call_id, "m.call.answer")
    assert await sipp.wait() == 0, sipp.report()
    assert "SIP/2.0 200" not in sipp.messages
    await assert_released(bridge)


async def test_connect_mode_answers_matrix_on_the_183_prompts_are_heard_live_and_no_200_is_ever_sent(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    bridge = await e2e.bridge(early_media("connect"))
    sipp = await trunk(e2e, "trunk_early_media_busy.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await eventually(lambda: call.call_id in bridge.calls.outbound
                     and bridge.calls.outbound[call.call_id].rtp_port is not None, 15, "the outbound call")
    rtp_peer.send_to(("127.0.0.1", bridge.calls.outbound[call.call_id].rtp_port or 0))
    rtp_peer.start_sending(seconds=10)

    await call.wait_answer(timeout=10)  # on the 183: the trunk has not answered
    assert "SIP/2.0 200" not in sipp.messages  # (a bare "200" also matches random tags)
    await call.wait_for_tone(1000.0, timeout=10, min_frames=50)  # the prompt, live
    session = bridge.calls.outbound[call.call_id]
    assert session.machine.state.value == "ringing"  # SIP still in early dialog

    # 486 after the prompts: the answered Matrix call is hung up (a reject would be ignored now).
    ending = await call.wait_hangup_or_reject(timeout=15)
    assert ending["type"] == "m.call.hangup" and ending["sender"] == GHOST
    assert await sipp.wait() == 0, sipp.report()
    assert "SIP/2.0 200" not in sipp.messages and "486 Busy Here" in sipp.messages
    # connect mode posts no recording
    assert not [ev for ev in alice.events if ev.get("content", {}).get("msgtype") == "m.audio"
                and "486" in ev["content"].get("body", "")]
    await assert_released(bridge)


@pytest.mark.parametrize("mode", ["announce", "connect"])
async def test_183_then_200_answers_matrix_once_with_audio_both_ways(
    e2e: E2E, rtp_peer: RtpPeer, mode: str
) -> None:
    """announce: the Matrix call is answered only by the 200 (the recording is dropped); connect: answered on the
    183, and the 200 changes nothing on the Matrix side (one m.call.answer)."""
    bridge = await e2e.bridge(early_media(mode))
    sipp = await trunk(e2e, "trunk_early_media_answer.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await eventually(lambda: call.call_id in bridge.calls.outbound
                     and bridge.calls.outbound[call.call_id].rtp_port is not None, 15, "the outbound call")
    rtp_peer.send_to(("127.0.0.1", bridge.calls.outbound[call.call_id].rtp_port or 0))
    rtp_peer.start_sending(seconds=30)
    session = bridge.calls.outbound[call.call_id]

    await call.wait_answer(timeout=15)
    assert session.machine.state.value == ("answered" if mode == "announce" else "ringing")
    await call.wait_for_tone(1000.0, timeout=10, min_frames=50)
    await eventually(lambda: session.machine.state.value == "answered", 10, "the trunk's 200")
    at_trunk = rtp_peer.received
    await eventually(lambda: rtp_peer.received - at_trunk >= 50, 10, "Matrix audio at the trunk after the 200")
    assert session.media.stats().passthrough
    assert len(call_events(alice.events, call.call_id, "m.call.answer")) == 1
    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()  # the BYE: the call was answered for real
    await assert_released(bridge)
