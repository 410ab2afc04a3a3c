"""The bridge's own WebRTC re-offers on a live connection (hold from the phone), with a real aiortc peer:
offer / answer, withdrawal on glare (aiortc 1.16 has no rollback), and audio afterwards on the same connection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiortc import RTCSessionDescription

from bridge.media.call_media import audio_direction

from .call_fixtures import Call, connect_outbound, make_media
from .helpers import wait_for
from .rtp_peer import open_rtp_peer
from .test_call_media import assert_audio_both_ways, rtp_audio
from .webrtc_peer import MatrixPeer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def make_call() -> AsyncIterator[Callable[..., Any]]:
    calls: list[Call] = []

    async def factory() -> Call:
        media, ports = make_media()
        call = Call(media, ports, MatrixPeer(freq=1000.0), await open_rtp_peer())
        calls.append(call)
        return call

    yield factory
    for call in calls:
        await call.rtp.close()
        await call.matrix.close()
        await call.media.close()


async def peer_answers(call: Call, offer: str) -> str:
    pc = call.matrix.pc
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return str(pc.localDescription.sdp)


async def test_bridge_reoffer_inactive_then_sendrecv_pauses_and_resumes_audio_to_matrix(make_call: Any) -> None:
    call: Call = await make_call()
    await connect_outbound(call)
    await assert_audio_both_ways(call, packets=10)

    offer = await call.media.reoffer_webrtc("inactive")
    assert audio_direction(offer) == "inactive" and "telephone-event" in offer  # DTMF stays negotiated
    assert await call.media.apply_webrtc_reanswer(await peer_answers(call, offer)) == "inactive"
    frames = call.media.stats().webrtc_frames_out
    before = len(call.matrix.frames)
    await wait_for(lambda: call.media.stats().webrtc_frames_out > frames + 10, what="SIP audio still arriving")
    assert len(call.matrix.frames) - before <= 10, "audio went to a Matrix party we put on hold"

    offer = await call.media.reoffer_webrtc("sendrecv")
    assert await call.media.apply_webrtc_reanswer(await peer_answers(call, offer)) == "sendrecv"
    before = len(call.matrix.frames)
    await wait_for(lambda: len(call.matrix.frames) > before + 25, what="audio at Matrix after resume")
    assert call.media.webrtc_connection_state == "connected"


async def test_glare_withdrawn_reoffer_lets_the_matrix_offer_through_and_its_answer_keeps_the_phone_hold(
    make_call: Any,
) -> None:
    call: Call = await make_call()
    await connect_outbound(call)
    await assert_audio_both_ways(call, packets=10)
    ours = await call.media.reoffer_webrtc("sendonly")  # the phone holds with a=sendonly
    assert audio_direction(ours) == "sendonly"
    # meanwhile Matrix sends its own offer (it never answers ours): we withdraw and answer it
    pc = call.matrix.pc
    await pc.setLocalDescription(await pc.createOffer())
    assert call.media.rollback_webrtc_offer(None)
    answer, direction = await call.media.renegotiate_webrtc(str(pc.localDescription.sdp))
    assert direction == "sendrecv" and audio_direction(answer) == "sendonly"  # the phone's hold, still told
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    # and the connection is stable again: the next re-offer (resume) goes through
    offer = await call.media.reoffer_webrtc("sendrecv")
    assert await call.media.apply_webrtc_reanswer(await peer_answers(call, offer)) == "sendrecv"
    at_phone = len(rtp_audio(call.rtp))
    await wait_for(lambda: len(rtp_audio(call.rtp)) > at_phone + 25, what="Matrix audio at the phone")
    assert call.media.webrtc_connection_state == "connected"
