"""CallMedia with real components: an aiortc peer as the Matrix client and a plain RTP peer as the phone."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import AsyncIterator, Callable
from itertools import pairwise
from typing import Any

import pytest

from bridge.media.dtmf import decode_event, encode_event
from bridge.media.errors import MediaError
from bridge.media.rtp_packet import seq_diff, ts_diff
from bridge.media.settings import MediaSettings
from bridge.sip.sdp import SdpError

from .call_fixtures import Call, connect_inbound, connect_outbound, make_media, sip_sdp
from .helpers import wait_for
from .rtp_peer import RtpPeer, open_rtp_peer
from .webrtc_peer import MatrixPeer, strip_candidates

pytestmark = pytest.mark.timeout(120)

MATRIX_TONE = 1000.0  # what the aiortc peer plays
SIP_TONE = 440.0  # what the RTP peer plays


@pytest.fixture
async def make_call() -> AsyncIterator[Callable[..., Any]]:
    calls: list[Call] = []
    extra: list[RtpPeer] = []

    async def factory(*, codecs: list[str] | None = None) -> Call:
        media, ports = make_media()
        call = Call(media, ports, MatrixPeer(freq=MATRIX_TONE, codecs=codecs), await open_rtp_peer())
        media.on_failure = call.failures.append
        calls.append(call)
        return call

    factory.extra = extra  # type: ignore[attr-defined]
    yield factory
    for call in calls:
        await call.rtp.close()
        await call.matrix.close()
        await call.media.close()
    for peer in extra:
        await peer.close()


def rtp_audio(peer: RtpPeer, payload_type: int = 0) -> list[bytes]:
    return [p.payload for p in peer.received if p.payload_type == payload_type]


def ulaw_frequency(payloads: list[bytes]) -> float:
    import array

    from .webrtc_peer import dominant_frequency

    table = array.array("h", (_ulaw_to_linear(b) for b in range(256)))
    samples = array.array("h", (table[b] for payload in payloads for b in payload))
    return dominant_frequency(samples, 8000)


def _ulaw_to_linear(value: int) -> int:
    value = ~value & 0xFF
    sign, exponent, mantissa = value & 0x80, (value >> 4) & 0x07, value & 0x0F
    sample = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -sample if sign else sample


async def assert_audio_both_ways(call: Call, *, packets: int = 50) -> None:
    call.rtp.start_tone(call.rtp_target)
    await wait_for(lambda: len(rtp_audio(call.rtp)) >= packets, what="RTP audio at the phone")
    await wait_for(lambda: len(call.matrix.frames) >= packets, what="decoded audio at the Matrix peer")
    # honest content checks: each side hears the OTHER side's tone, not silence or its own
    assert ulaw_frequency(rtp_audio(call.rtp)[-25:]) == pytest.approx(MATRIX_TONE, rel=0.1)
    assert call.matrix.heard_frequency() == pytest.approx(SIP_TONE, rel=0.1)
    # the phone gets one stream: consecutive sequence numbers, timestamps 20 ms (160) apart
    audio = [p for p in call.rtp.received if p.payload_type in (0, 8, 9)][-packets:]
    steps = [(seq_diff(b.sequence, a.sequence), ts_diff(b.timestamp, a.timestamp)) for a, b in pairwise(audio)]
    assert all(seq_step == 1 for seq_step, _ in steps)
    assert sum(1 for _, ts_step in steps if ts_step == 160) >= 0.9 * len(steps), steps


async def test_outbound_pcmu_call_passes_g711_through_and_carries_audio_both_ways(make_call: Any) -> None:
    call: Call = await make_call()
    await connect_outbound(call)
    await assert_audio_both_ways(call)
    stats = call.media.stats()
    assert stats.passthrough and stats.codec_sip == "PCMU" and stats.codec_webrtc == "PCMU"
    assert stats.rtp_packets_in >= 50 and stats.rtp_packets_out >= 50
    assert stats.webrtc_frames_in >= 50 and stats.webrtc_frames_out >= 50
    assert call.failures == []


async def test_inbound_pcmu_call_is_passed_through_as_well(make_call: Any) -> None:
    call: Call = await make_call()
    await connect_inbound(call)
    await assert_audio_both_ways(call)
    stats = call.media.stats()
    assert stats.passthrough and stats.codec_webrtc == "PCMU"


async def test_opus_only_matrix_peer_is_transcoded_both_ways_outbound(make_call: Any) -> None:
    call: Call = await make_call(codecs=["opus"])
    await connect_outbound(call)
    await assert_audio_both_ways(call)
    stats = call.media.stats()
    assert not stats.passthrough
    assert stats.codec_webrtc == "opus" and stats.codec_sip == "PCMU"


async def test_opus_only_matrix_peer_is_transcoded_both_ways_inbound_pcma(make_call: Any) -> None:
    call: Call = await make_call(codecs=["opus"])
    await connect_inbound(call, sip_codecs="8 101")
    call.rtp.start_tone(call.rtp_target, pt=8)  # PCMA payload type carrying mu-law bytes: still a tone
    await wait_for(lambda: len(rtp_audio(call.rtp, 8)) >= 50, what="PCMA at the phone")
    await wait_for(lambda: len(call.matrix.frames) >= 50, what="decoded audio at the Matrix peer")
    stats = call.media.stats()
    assert not stats.passthrough and stats.codec_sip == "PCMA" and stats.codec_webrtc == "opus"


async def test_rtp_goes_where_the_phone_really_sends_from_not_where_its_sdp_said(make_call: Any) -> None:
    call: Call = await make_call()
    announced = await open_rtp_peer()  # the SDP points here, but the phone sends from call.rtp
    make_call.extra.append(announced)
    call.media.set_signalling_peer("127.0.0.1")
    await connect_outbound(call, announced_port=announced.port)
    await assert_audio_both_ways(call)
    # until the phone's stream qualified (4 packets) our audio went to its SDP address; never after that
    assert call.media.rtp_leg.latched
    before = len(rtp_audio(announced))
    await asyncio.sleep(0.3)
    assert len(rtp_audio(announced)) == before


async def test_dtmf_from_matrix_arrives_as_rfc4733_on_the_sip_side(make_call: Any) -> None:
    call: Call = await make_call()
    seen: list[tuple[str, str]] = []
    call.media.on_dtmf = lambda digit, side: seen.append((digit, side))
    await connect_outbound(call)
    await assert_audio_both_ways(call, packets=10)
    await call.matrix.send_dtmf(event=5, payload_type=126)
    await wait_for(lambda: len([p for p in call.rtp.received if p.payload_type == 101]) >= 5, what="4733 at phone")
    events = [decode_event(p.payload) for p in call.rtp.received if p.payload_type == 101]
    assert {e.event for e in events} == {5}
    assert events[-1].end
    assert seen == [("5", "matrix")]
    assert call.media.stats().dtmf == [("5", "matrix")]
    # audio keeps flowing after the key press (aiortc's decoder thread survived)
    before = len(call.matrix.frames)
    await wait_for(lambda: len(call.matrix.frames) >= before + 10, what="audio after DTMF")


async def test_dtmf_next_to_opus_is_rescaled_from_48khz_to_the_sip_clock(make_call: Any) -> None:
    call: Call = await make_call(codecs=["opus"])
    await connect_outbound(call)
    await assert_audio_both_ways(call, packets=10)
    await call.matrix.send_dtmf(event=11, payload_type=110, clock_rate=48000)
    await wait_for(lambda: len([p for p in call.rtp.received if p.payload_type == 101]) >= 5, what="4733 at phone")
    events = [decode_event(p.payload) for p in call.rtp.received if p.payload_type == 101]
    assert {e.event for e in events} == {11}
    assert max(e.duration for e in events) == 3 * 160  # 3 x 20 ms at 8 kHz, not at 48 kHz


async def test_dtmf_from_the_phone_is_reported(make_call: Any) -> None:
    call: Call = await make_call()
    seen: list[tuple[str, str]] = []
    call.media.on_dtmf = lambda digit, side: seen.append((digit, side))
    await connect_inbound(call)

    call.rtp.ts = 1234
    for i in range(4):
        call.rtp.send_packet(call.rtp_target, encode_event(9, end=i > 0, volume=10, duration=160), pt=101)
        call.rtp.ts = 1234
    await wait_for(lambda: seen == [("9", "sip")], what="SIP DTMF report")


async def test_malformed_rtp_is_ignored_while_audio_keeps_flowing(make_call: Any) -> None:
    call: Call = await make_call()
    await connect_outbound(call)
    await assert_audio_both_ways(call, packets=10)
    assert call.rtp.transport is not None
    for junk in (b"\x00" * 40, b"\x8f\x00\x00\x01" + b"\x00" * 10, b"\xb0\x00" + b"\x00" * 20 + b"\xff"):
        call.rtp.transport.sendto(junk, call.rtp_target)
    before = len(call.matrix.frames)
    await wait_for(lambda: len(call.matrix.frames) >= before + 25, what="audio after junk")
    assert call.media.stats().malformed >= 3


async def test_matrix_candidates_that_arrive_before_the_offer_is_applied_are_used(make_call: Any) -> None:
    # connect_outbound already trickles candidates only after the answer; here they come first
    call: Call = await make_call()

    offer, candidates = strip_candidates(await call.matrix.offer())
    await call.media.add_webrtc_candidates([{"candidate": "garbage"}, {"nope": 1}, *candidates])
    await call.media.set_webrtc_offer(offer)
    host, port = await call.media.open_rtp()
    call.media.sip_offer()
    call.media.apply_sip_answer(sip_sdp(call.rtp.port, "0 101"))
    await call.matrix.accept(await call.media.create_webrtc_answer())
    call.media.start()
    call.rtp_target = (host, port)
    await assert_audio_both_ways(call, packets=10)


async def test_hold_stops_media_towards_both_sides(make_call: Any) -> None:
    call: Call = await make_call()
    await connect_outbound(call)
    await assert_audio_both_ways(call, packets=10)
    call.media.set_hold(True)
    await asyncio.sleep(0.3)  # let in-flight packets drain
    rtp_before, frames_before = len(rtp_audio(call.rtp)), call.media.stats().webrtc_frames_out
    await asyncio.sleep(0.5)
    assert len(rtp_audio(call.rtp)) == rtp_before
    assert call.media.stats().webrtc_frames_out == frames_before
    call.media.set_hold(False)
    await wait_for(lambda: len(rtp_audio(call.rtp)) > rtp_before + 10, what="audio after unhold")


async def test_sip_answer_without_a_common_codec_raises_sdp_error(make_call: Any) -> None:
    call: Call = await make_call()
    await call.media.open_rtp()
    with pytest.raises(SdpError):
        call.media.answer_sip_offer(sip_sdp(call.rtp.port, "9").replace(b"G722/8000", b"GSM/8000"))
    with pytest.raises(SdpError):
        call.media.answer_sip_offer(b"this is not sdp")


async def test_open_rtp_raises_media_error_when_the_range_is_exhausted() -> None:

    media, ports = make_media()
    taken = [ports.allocate() for _ in range(ports.capacity)]
    try:
        with pytest.raises(MediaError):
            await media.open_rtp()
    finally:
        for port in taken:
            ports.release(port)
        await media.close()


async def test_close_releases_port_socket_tasks_and_threads() -> None:
    threads_before = threading.active_count()
    tasks_before = asyncio.all_tasks()
    media, ports = make_media()
    matrix, rtp = MatrixPeer(freq=MATRIX_TONE), await open_rtp_peer()
    call = Call(media, ports, matrix, rtp)
    await connect_outbound(call, sip_codecs="0 101")
    call.rtp.start_tone(call.rtp_target)
    await wait_for(lambda: len(matrix.frames) >= 5, what="audio")
    port = media.rtp_port
    assert port is not None and port in ports.in_use
    await rtp.close()
    await matrix.close()
    await media.close()
    await media.close()  # idempotent
    assert ports.in_use == frozenset()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))  # the RTP port is free again
    await asyncio.sleep(0.2)
    leftover = {t for t in asyncio.all_tasks() - tasks_before if not t.done()} - {asyncio.current_task()}
    assert leftover == set(), leftover
    await wait_for(lambda: threading.active_count() <= threads_before + 1, what="decoder threads gone")


async def test_dtls_failure_is_reported_as_ice_failed(make_call: Any) -> None:
    # connectionState "failed" is what on_failure watches; a wrong DTLS fingerprint gets there in
    # seconds (a pure ICE failure takes aioice about 64 s of STUN retransmissions).
    call: Call = await make_call()
    await call.media.open_rtp()
    call.media.answer_sip_offer(sip_sdp(call.rtp.port, "0 101"))
    answer = await call.matrix.answer(await call.media.create_webrtc_offer())
    fingerprint = re.search(r"a=fingerprint:sha-256 (\S+)", answer)
    assert fingerprint is not None
    await call.media.set_webrtc_answer(answer.replace(fingerprint.group(1), "00:" * 31 + "00"))
    await wait_for(lambda: call.failures == ["ice_failed"], within=60, what="ice_failed")


def test_aiortc_internals_the_tap_and_passthrough_rely_on_are_present() -> None:
    # If this fails after an aiortc upgrade, passthrough and Matrix DTMF silently fall back
    # (transcoding, no DTMF): re-check webrtc_leg's module docstring against the new aiortc.
    import inspect

    from aiortc.rtcdtlstransport import RTCDtlsTransport
    from aiortc.rtcrtpsender import RTCRtpSender

    from bridge.media.webrtc_leg import AIORTC_INTERNALS_OK

    assert AIORTC_INTERNALS_OK
    assert list(inspect.signature(RTCDtlsTransport._handle_rtp_data).parameters) == [
        "self",
        "data",
        "arrival_time_ms",
    ]
    assert "pack(" in inspect.getsource(RTCRtpSender._next_encoded_frame)


async def test_without_the_aiortc_internals_the_call_is_transcoded(
    make_call: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bridge.media.webrtc_leg

    monkeypatch.setattr(bridge.media.webrtc_leg, "AIORTC_INTERNALS_OK", False)
    call: Call = await make_call()
    await connect_outbound(call)
    await assert_audio_both_ways(call)
    stats = call.media.stats()
    assert not stats.passthrough and stats.codec_webrtc == "opus"


async def test_g722_on_both_legs_is_passed_through(make_call: Any) -> None:
    call: Call = await make_call()
    await connect_outbound(call, sip_codecs="9 101")
    call.rtp.start_tone(call.rtp_target, pt=9)  # any bytes are valid G.722; content is not checked here
    await wait_for(lambda: len(rtp_audio(call.rtp, 9)) >= 50, what="G.722 at the phone")
    await wait_for(lambda: len(call.matrix.frames) >= 50, what="decoded G.722 at the Matrix peer")
    stats = call.media.stats()
    assert stats.passthrough and stats.codec_sip == "G722" and stats.codec_webrtc == "G722"
    assert call.matrix.frames[-1].sample_rate == 16000


async def test_sip_reinvite_to_another_codec_switches_to_transcoding(make_call: Any) -> None:
    call: Call = await make_call()
    await connect_inbound(call)
    await assert_audio_both_ways(call, packets=10)
    assert call.media.stats().passthrough
    await call.rtp.stop_tone()
    call.media.answer_sip_offer(sip_sdp(call.rtp.port, "8 101"))  # re-INVITE: PCMA only
    stats = call.media.stats()
    assert not stats.passthrough and stats.codec_sip == "PCMA" and stats.codec_webrtc == "PCMU"
    call.rtp.start_tone(call.rtp_target, pt=8)
    await wait_for(lambda: len(rtp_audio(call.rtp, 8)) >= 25, what="PCMA at the phone after re-INVITE")
    frames_before = len(call.matrix.frames)
    await wait_for(lambda: len(call.matrix.frames) >= frames_before + 25, what="audio at Matrix after re-INVITE")


async def test_matrix_offer_without_audio_is_refused_with_media_error(make_call: Any) -> None:
    call: Call = await make_call()
    with pytest.raises(MediaError):
        await call.media.set_webrtc_offer("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n")


async def test_sip_hold_in_the_answer_stops_rtp_towards_the_phone(make_call: Any) -> None:
    call: Call = await make_call()
    await connect_inbound(call)
    await assert_audio_both_ways(call, packets=10)
    call.media.answer_sip_offer(sip_sdp(call.rtp.port, "0 101", direction="sendonly"))  # phone holds us
    await asyncio.sleep(0.3)
    before = len(rtp_audio(call.rtp))
    await asyncio.sleep(0.5)
    assert len(rtp_audio(call.rtp)) == before
    frames_before = len(call.matrix.frames)  # the phone's music on hold still reaches Matrix
    await wait_for(lambda: len(call.matrix.frames) >= frames_before + 10, what="audio from the holding phone")


async def test_dtmf_from_the_phone_is_played_into_the_webrtc_stream(make_call: Any) -> None:

    call: Call = await make_call()
    await connect_outbound(call)  # the Matrix offer carries telephone-event/8000 as pt 126
    await assert_audio_both_ways(call, packets=10)
    await call.rtp.stop_tone()
    call.rtp.start_tone(call.rtp_target)
    for i, end in enumerate((False, False, True, True, True)):
        call.rtp.ts = 777_000  # all packets of one event carry its start timestamp
        call.rtp.send_packet(call.rtp_target, encode_event(3, end=end, volume=10, duration=160 * min(i + 1, 3)), pt=101)
        await asyncio.sleep(0.02)
    await wait_for(lambda: len(call.matrix.telephone_events) >= 5, what="telephone-event at the Matrix peer")
    events = [decode_event(p.payload) for p in call.matrix.telephone_events]
    packets = call.matrix.telephone_events
    assert {e.event for e in events} == {3} and [e.end for e in events] == [False, False, True, True, True]
    assert packets[0].marker and len({p.timestamp for p in packets}) == 1
    # one stream: the events share the audio's sequence space, and audio still decodes afterwards
    seqs = call.matrix.audio_seqs + [p.sequence for p in packets]
    assert len(set(seqs)) == len(seqs)
    frames_before = len(call.matrix.frames)
    await wait_for(lambda: len(call.matrix.frames) >= frames_before + 25, what="audio after the injected event")


async def test_offerless_inbound_invite_gets_its_codec_from_the_ack(make_call: Any) -> None:
    call: Call = await make_call()
    host, port = await call.media.open_rtp()
    call.media.sip_offer_for_offerless()  # goes into our 200 OK
    answer = await call.matrix.answer(await call.media.create_webrtc_offer())
    await call.media.set_webrtc_answer(answer)
    call.media.apply_sip_answer(sip_sdp(call.rtp.port, "0 101"))  # the ACK's SDP
    call.media.start()
    call.rtp_target = (host, port)
    await assert_audio_both_ways(call)
    stats = call.media.stats()
    assert stats.passthrough and stats.codec_sip == "PCMU" and stats.codec_webrtc == "PCMU"


async def test_webrtc_not_connected_in_time_is_reported_once_as_ice_timeout() -> None:

    media, _ = make_media(MediaSettings(ice_timeout_s=1.0))
    failures: list[str] = []
    media.on_failure = failures.append
    matrix = MatrixPeer(freq=MATRIX_TONE)
    try:
        offer, _candidates = strip_candidates(await matrix.offer())
        await media.set_webrtc_offer(offer)
        await media.open_rtp()
        media.sip_offer()
        media.apply_sip_answer(sip_sdp(9, "0 101"))
        await media.create_webrtc_answer()  # never delivered: nobody will connect
        media.start()
        await wait_for(lambda: failures == ["ice_timeout"], within=20, what="ice_timeout")
        await asyncio.sleep(0.2)
        assert failures == ["ice_timeout"]
    finally:
        await matrix.close()
        await media.close()
