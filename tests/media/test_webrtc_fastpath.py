"""The WebRTC leg's fast path: packets built like aiortc's, sent once, and real calls running on it."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aiortc.rtcdtlstransport import State
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from bridge.media import libopus, webrtc_fastpath
from bridge.media.inline_codec import OpusG711Transcoder
from bridge.media.webrtc_fastpath import DirectSender, ntp_now

from .call_fixtures import Call, connect_outbound, make_media
from .rtp_peer import open_rtp_peer
from .test_call_media import assert_audio_both_ways
from .webrtc_peer import MatrixPeer

pytestmark = pytest.mark.skipif(not webrtc_fastpath.FASTPATH_OK, reason="aiortc/aioice internals differ")


def fake_sender(ext_ids: dict[str, int]) -> tuple[Any, list[tuple[bytes, tuple[str, int]]], HeaderExtensionsMap]:
    """An aiortc RTCRtpSender's attributes as DirectSender reads them, over a socket that records sendto()."""
    ext_map = HeaderExtensionsMap()
    uris = {"mid": "urn:ietf:params:rtp-hdrext:sdes:mid",
            "abs": "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"}
    ext_map.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=i, uri=uris[name]) for name, i in ext_ids.items()]))
    sent: list[tuple[bytes, tuple[str, int]]] = []
    socket = SimpleNamespace(sendto=lambda data, addr: sent.append((data, addr)))
    pair = SimpleNamespace(protocol=SimpleNamespace(transport=socket), remote_addr=("127.0.0.1", 5000))
    dtls = SimpleNamespace(_state=State.CONNECTED, _tx_srtp=object(),
                           _rtp_header_extensions_map=ext_map,
                           transport=SimpleNamespace(_connection=SimpleNamespace(_nominated={1: pair})))
    sender = SimpleNamespace(_ssrc=0x11223344, transport=dtls, _enabled=True, _RTCRtpSender__started=True,
                             _RTCRtpSender__mid="0")
    return sender, sent, ext_map


@pytest.mark.parametrize("ext_ids", [{"mid": 1, "abs": 3}, {"abs": 2}, {}])
def test_direct_sender_writes_what_aiortc_would_with_one_sendto_per_payload(ext_ids: dict[str, int]) -> None:
    sender, sent, ext_map = fake_sender(ext_ids)
    direct = DirectSender(sender, track=SimpleNamespace(paused=False), log=logging.getLogger("test"))
    direct._srtp[0] = SimpleNamespace(session=sender.transport._tx_srtp, protect=lambda data: data)  # no SRTP
    before = ntp_now()
    assert direct.send(0, b"\xff" * 160, 160, marker=True)
    assert direct.send(0, b"\x7f" * 160, 320)
    assert len(sent) == 2 and all(addr == ("127.0.0.1", 5000) for _, addr in sent)
    first, second = (RtpPacket.parse(data, ext_map) for data, _ in sent)
    assert (first.payload_type, first.marker, first.ssrc, first.payload) == (0, 1, 0x11223344, b"\xff" * 160)
    assert second.sequence_number == (first.sequence_number + 1) & 0xFFFF and second.marker == 0
    assert (second.timestamp - first.timestamp) & 0xFFFFFFFF == 160
    assert first.extensions.mid == ("0" if "mid" in ext_ids else None)
    if "abs" in ext_ids:
        assert first.extensions.abs_send_time is not None
        assert abs(first.extensions.abs_send_time - ((before >> 14) & 0xFFFFFF)) < 2**18 // 10  # within 0.1 s
    else:
        assert first.extensions.abs_send_time is None
    # the sender reports (webrtc_rtcp.py) read these
    assert direct.sent == 2 and direct.octets == 320
    assert direct.last_timestamp == second.timestamp
    assert abs(direct.last_ntp - ntp_now()) < 2**32  # within a second of now


def test_direct_sender_drops_while_paused_or_not_connected_and_injects_in_the_same_sequence_space() -> None:
    sender, sent, ext_map = fake_sender({})
    track = SimpleNamespace(paused=True)
    direct = DirectSender(sender, track=track, log=logging.getLogger("test"))
    direct._srtp[0] = SimpleNamespace(session=sender.transport._tx_srtp, protect=lambda data: data)  # no SRTP
    assert not direct.inject(101, True, 0, b"\x01\x0a\x00\xa0")  # nothing sent yet: no stream to join
    assert not direct.send(0, b"\xff" * 160, 0) and direct.dropped == 1
    track.paused = False
    sender.transport._state = State.CLOSED
    assert not direct.send(0, b"\xff" * 160, 0) and direct.dropped == 2
    sender.transport._state = State.CONNECTED
    assert direct.send(0, b"\xff" * 160, 0)
    assert direct.last_timestamp is not None
    assert direct.inject(101, True, direct.last_timestamp + 160, b"\x01\x0a\x00\xa0")
    audio, event = (RtpPacket.parse(data, ext_map) for data, _ in sent)
    assert event.payload_type == 101 and event.sequence_number == (audio.sequence_number + 1) & 0xFFFF
    assert event.ssrc == audio.ssrc


@pytest.fixture
async def make_call() -> AsyncIterator[Callable[..., Any]]:
    calls: list[Call] = []

    async def factory(codecs: list[str] | None = None) -> Call:
        media, ports = make_media()
        call = Call(media, ports, MatrixPeer(freq=1000.0, codecs=codecs), await open_rtp_peer())
        calls.append(call)
        return call

    yield factory
    for call in calls:
        await call.rtp.close()
        await call.matrix.close()
        await call.media.close()


@pytest.mark.parametrize("codecs", [None, ["opus"]], ids=["passthrough", "opus-transcoding"])
async def test_calls_run_on_the_fast_path_with_no_decoder_thread_in_the_bridge(make_call: Any, codecs: Any) -> None:
    call: Call = await make_call(codecs)
    await connect_outbound(call)
    await assert_audio_both_ways(call)
    webrtc: Any = call.media._webrtc
    relay: Any = call.media._relay
    assert webrtc.direct is not None and webrtc.direct.sent >= 50  # SIP -> Matrix went out directly
    protocols = webrtc._transceiver.receiver.transport.transport._connection._protocols
    assert protocols and all(getattr(p, "_bridge_fastpath", False) for p in protocols)
    # aiortc's decoder thread of the bridge's receiver was ended: nothing is decoded there
    assert webrtc._transceiver.receiver._RTCRtpReceiver__decoder_thread is None
    assert relay._pump is None
    if codecs and libopus.AVAILABLE:
        assert isinstance(relay._transcoder, OpusG711Transcoder)
    names = [t.name for t in threading.enumerate()]
    assert names.count("audio-decoder") <= 1  # the test's own MatrixPeer has one; the bridge none


def test_fast_srtp_gives_the_same_bytes_as_pylibsrtp_and_refuses_oversized_and_replayed_packets() -> None:
    from pylibsrtp import Error, Policy, Session

    from bridge.media.webrtc_fastpath import FastSrtp

    key = bytes(range(30))

    def session(direction: int) -> Session:
        return Session(Policy(key=key, ssrc_type=direction))

    plain = bytes.fromhex("80000001000000a011223344") + b"\xff" * 160
    reference = session(Policy.SSRC_ANY_OUTBOUND).protect(plain)
    fast = FastSrtp(session(Policy.SSRC_ANY_OUTBOUND))
    assert fast.protect(plain) == reference
    receiver = FastSrtp(session(Policy.SSRC_ANY_INBOUND))
    assert receiver.unprotect(reference) == plain
    with pytest.raises(Error):
        receiver.unprotect(reference)  # replayed
    with pytest.raises(ValueError):
        fast.protect(plain[:12] + b"\x00" * 1500)
