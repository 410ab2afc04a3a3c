"""The compiled twins (bridge/media/_fastrelay.c) do what the Python methods they stand in for do: the same packets
run through each, with real libsrtp sessions and the same clocks, give the same bytes on the wire, the same
counters and the same RTCP statistics; and the twins really take the steady state (the Python methods see only
the packets that are not steady state)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import aiortc.rtcrtpreceiver
import pylibsrtp
import pytest

from bridge.media import fastrelay, webrtc_fastpath
from bridge.media import rtp_leg as rtp_leg_module
from bridge.media.dtmf import encode_event
from bridge.media.relay import Relay, RelayPlan
from bridge.media.rtcp_feed import ReceiverReportFeed
from bridge.media.rtp_leg import RtpLeg
from bridge.media.rtp_packet import build_rtp
from bridge.media.webrtc_fastpath import DirectSender, IceReceive

from . import test_call_media
from .call_fixtures import connect_outbound
from .test_call_media import assert_audio_both_ways
from .test_webrtc_fastpath import fake_sender

pytestmark = pytest.mark.skipif(not webrtc_fastpath.FASTPATH_OK, reason="aiortc/aioice internals differ")

NATIVE = fastrelay.native
make_call = test_call_media.make_call  # the fixture: a CallMedia with an aiortc peer and an RTP phone
log = logging.getLogger("test.fastrelay")
FAR = ("127.0.0.1", 40000)
KEY = bytes(range(30))  # AES_CM_128_HMAC_SHA1_80 master key + salt
PLAN = RelayPlan(sip_codec="PCMU", webrtc_codec="PCMU", webrtc_pt=0, telephone_event_pt=101,
                 telephone_event_clock=8000, passthrough=True)


def test_the_compiled_module_is_built_and_used_by_default() -> None:
    assert NATIVE is not None, "bridge/media/_fastrelay.c is not built: run `pip install -e .` (needs a C compiler)"
    leg = RtpLeg(log=log)
    assert vars(leg)["datagram_received"].__func__ is NATIVE.rtp_receive


class Clocks:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.mono = 100.0
        self.real = 1_800_000_000.0

    def step(self, seconds: float) -> None:
        self.mono += seconds
        self.real += seconds


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clocks]:
    """One fake monotonic and wall clock for the Python methods, aiortc's statistics and the compiled twins."""
    assert NATIVE is not None, "bridge/media/_fastrelay.c is not built"
    clocks = Clocks()
    monkeypatch.setattr(rtp_leg_module, "_monotonic", lambda: clocks.mono)
    monkeypatch.setattr(rtp_leg_module, "time", SimpleNamespace(monotonic=lambda: clocks.mono))
    monkeypatch.setattr(webrtc_fastpath, "time", SimpleNamespace(time=lambda: clocks.real))
    monkeypatch.setattr(aiortc.rtcrtpreceiver, "time", SimpleNamespace(time=lambda: clocks.real))
    NATIVE.set_clocks(lambda: clocks.mono, lambda: clocks.real)
    yield clocks
    NATIVE.set_clocks(None, None)


def counting(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> list[int]:
    """Count the calls of the Python method ``cls.name`` (a twin's bail-out calls it through the class)."""
    calls = [0]
    original = getattr(cls, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, wrapper)
    return calls


class Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


class FakeWebrtc:
    """What the relay reads of its WebRtcLeg."""

    def __init__(self, direct: DirectSender, feed: ReceiverReportFeed) -> None:
        self.direct = self.injector = direct
        self.feed = feed
        self.tap: Callable[[bytes], bool] | None = None

    def set_rtp_tap(self, tap: Callable[[bytes], bool] | None) -> None:
        self.tap = tap

    def receiver_report_feed(self, clock_rate: int) -> ReceiverReportFeed:
        return self.feed


def outbound_srtp() -> pylibsrtp.Session:
    return pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))


def inbound_srtp() -> pylibsrtp.Session:
    return pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))


def make_chain(monkeypatch: pytest.MonkeyPatch, compiled: bool) -> tuple[RtpLeg, Relay, DirectSender, Any]:
    """RtpLeg -> Relay -> DirectSender (real SRTP, aiortc's header extensions) and back, as a call wires them."""
    with monkeypatch.context() as patch:
        if not compiled:
            patch.setattr(fastrelay, "native", None)
        leg = RtpLeg(log=log, ptime=20, jitter_ms=60, queue_packets=50, source_mode="strict")
        leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=FAR)
        leg.transport = Wire()  # type: ignore[assignment]
        leg.ssrc, leg._seq, leg._ts = 0x11223344, 65530, 0xFFFFFF00
        sender, sent, _ = fake_sender({"mid": 1, "abs": 3})
        sender.transport._tx_srtp = outbound_srtp()
        direct = DirectSender(sender, track=SimpleNamespace(paused=False), log=log)
        direct._seq, direct._ts_origin = 65000, 0xFFFFF000
        receiver = SimpleNamespace(_enabled=True, _RTCRtpReceiver__remote_streams={},
                                   transport=SimpleNamespace(_rtp_router=SimpleNamespace(ssrc_table={})))
        webrtc = FakeWebrtc(direct, ReceiverReportFeed(receiver, 8000))  # type: ignore[arg-type]
        relay = Relay(leg, webrtc, log=log)  # type: ignore[arg-type]
    relay.configure(PLAN)
    relay.start()
    return leg, relay, direct, SimpleNamespace(wire=sent, webrtc=webrtc, receiver=receiver)


def sip_packets() -> list[tuple[float, bytes]]:
    """Phone -> bridge: in order, reordered, duplicate, an extension header, DTMF, a wrap, a new SSRC, RTCP."""
    out: list[tuple[float, bytes]] = []
    ssrc, ts = 0xAABBCCDD, 1000
    for i, seq in enumerate([65000 + i for i in range(30)] + [65032, 65031, 65030, 65030, 65033]):
        out.append((0.02 + 0.003 * (i % 3), build_rtp(0, i == 0, seq, ts + 160 * (seq - 65000), ssrc,
                                                      bytes([i]) * 160)))
    ext = build_rtp(0, False, 65034, ts + 160 * 34, ssrc, b"\x55" * 160)
    out.append((0.02, bytes([0x90]) + ext[1:12] + b"\xbe\xde\x00\x01\x10\xff\x00\x00" + ext[12:]))
    out.append((0.02, build_rtp(101, True, 65035, ts + 160 * 35, ssrc, encode_event(5, end=True, volume=10,
                                                                                        duration=160))))
    for i in range(36, 540):  # wraps 65535 -> 0
        out.append((0.02, build_rtp(0, False, (65000 + i) & 0xFFFF, ts + 160 * i, ssrc, bytes([i & 0xFF]) * 160)))
    for i in range(20):  # the phone restarted its stream
        out.append((0.019, build_rtp(0, i == 0, 300 + i, 555 + 160 * i, 0x01020304, bytes([0x80 + i]) * 160)))
    out.append((0.02, bytes([0x81, 200]) + b"\x00\x06" + b"\x00" * 24))  # an RTCP SR on the RTP port
    return out


def sip_to_matrix(monkeypatch: pytest.MonkeyPatch, clocks: Clocks, compiled: bool) -> tuple[Any, ...]:
    clocks.reset()
    leg, relay, direct, far = make_chain(monkeypatch, compiled)
    for step, data in sip_packets():
        clocks.step(step)
        leg.datagram_received(data, FAR)
    stats = leg.receive_stats
    return (far.wire, leg.packets_in, leg.bytes_in, round(leg.interarrival_jitter, 12), leg.jitter.late,
            (stats.ssrc, stats.base_seq, stats.max_seq, stats.cycles, stats.received),
            relay.webrtc_frames_out, direct.sent, direct.octets, direct.last_seq, direct.last_ntp,
            direct.last_timestamp, direct.dropped)


def test_phone_to_matrix_the_compiled_twins_send_what_python_sends(monkeypatch: pytest.MonkeyPatch,
                                                                   clocks: Clocks) -> None:
    receive_py = counting(monkeypatch, RtpLeg, "datagram_received")
    relay_py = counting(monkeypatch, Relay, "_from_sip_fast")
    send_py = counting(monkeypatch, DirectSender, "send")
    python = sip_to_matrix(monkeypatch, clocks, compiled=False)
    total = (receive_py[0], relay_py[0], send_py[0])
    receive_py[0] = relay_py[0] = send_py[0] = 0
    compiled = sip_to_matrix(monkeypatch, clocks, compiled=True)
    assert compiled == python
    wire = compiled[0]
    assert len(wire) == 560 and compiled[7] == 560  # 559 audio packets, each once, and the DTMF event
    assert [len(data) for data, _ in wire[:3]] == [12 + 12 + 160 + 10] * 3  # mid, abs-send-time; SRTP's tag
    # the Python methods saw only what is not steady state: reordering, DTMF, the new stream, RTCP
    assert total[0] == len(sip_packets())
    assert receive_py[0] < 20, receive_py
    assert relay_py[0] <= 2 and send_py[0] <= 3, (relay_py, send_py)


def matrix_packets() -> list[tuple[float, bytes | str]]:
    """Element -> bridge (after SRTP): Element's header extensions, DTMF, a hold, a jump, a new SSRC, loss."""
    out: list[tuple[float, bytes | str]] = []
    ssrc, ts = 0x55667788, 777

    def element(seq: int, stamp: int, payload: bytes, marker: bool = False, pt: int = 0,
                stream: int = ssrc) -> bytes:
        plain = build_rtp(pt, marker, seq & 0xFFFF, stamp & 0xFFFFFFFF, stream, payload)
        # mid + abs-send-time + audio level, one-byte form (RFC 8285)
        ext = b"\xbe\xde\x00\x03" + b"\x10\x30" + b"\x32\x01\x02\x03" + b"\x40\x85" + b"\x00\x00\x00\x00"
        return bytes([0x90 | (plain[0] & 0x0F)]) + plain[1:12] + ext + plain[12:]

    seq = 65500
    for i in range(200):
        out.append((0.02 + 0.002 * (i % 4), element(seq + i, ts + 160 * i, bytes([i & 0xFF]) * 160, i == 0)))
    seq, ts = seq + 200, ts + 160 * 200
    out.append((0.02, element(seq, ts, encode_event(3, end=False, volume=10, duration=160), True, pt=101)))
    out.append((0.02, element(seq + 1, ts, encode_event(3, end=True, volume=10, duration=320), pt=101)))
    seq, ts = seq + 2, ts + 320
    for i in range(100):
        if i == 40:
            out.append((0.0, "hold"))
        if i == 50:
            out.append((0.0, "resume"))
        if i % 17 == 5:
            continue  # lost
        out.append((0.02, element(seq + i, ts + 160 * i, bytes([0x40 + (i & 0x3F)]) * 160)))
    seq, ts = seq + 100, ts + 160 * 100 + 8000 * 7  # 7 s of silence: a jump, rebased
    for i in range(50):
        out.append((0.021, element(seq + i, ts + 160 * i, b"\x11" * 160)))
    for i in range(50):  # a new stream
        out.append((0.02, element(9 + i, 123456 + 160 * i, b"\x22" * 160, i == 0, stream=0x01020304)))
    out.append((0.02, b"\x80\x00\x01"))  # too short: not RTP
    return out


def matrix_to_sip(monkeypatch: pytest.MonkeyPatch, clocks: Clocks, compiled: bool) -> tuple[Any, ...]:
    clocks.reset()
    leg, relay, _, far = make_chain(monkeypatch, compiled)
    tap = far.webrtc.tap
    taken = []
    for step, data in matrix_packets():
        clocks.step(step)
        if data == "hold":
            relay.hold = True
        elif data == "resume":
            relay.hold = False
        else:
            assert isinstance(data, bytes)
            taken.append(tap(data))
    streams = far.receiver._RTCRtpReceiver__remote_streams
    statistics = {ssrc: (s.base_seq, s.max_seq, s.cycles, s.packets_received, s._jitter_q4, s._last_arrival,
                         s._last_timestamp) for ssrc, s in streams.items()}
    wire: Any = leg.transport
    return (wire.sent, taken, leg.packets_out, leg.bytes_out, leg.dropped, leg._seq, leg._ts,
            relay.webrtc_frames_in, relay.dropped, relay.dtmf_digits, statistics)


def test_matrix_to_phone_the_compiled_twins_send_what_python_sends(monkeypatch: pytest.MonkeyPatch,
                                                                   clocks: Clocks) -> None:
    tap_py = counting(monkeypatch, Relay, "_from_webrtc_rtp")
    send_py = counting(monkeypatch, RtpLeg, "send_audio")
    feed_py = counting(monkeypatch, ReceiverReportFeed, "feed")
    python = matrix_to_sip(monkeypatch, clocks, compiled=False)
    packets = tap_py[0]
    tap_py[0] = send_py[0] = feed_py[0] = 0
    compiled = matrix_to_sip(monkeypatch, clocks, compiled=True)
    assert compiled == python
    sent, taken = compiled[0], compiled[1]
    assert len(sent) > 350 and all(addr == FAR for _, addr in sent)
    assert taken.count(True) == len(taken) - 1  # all but the runt
    statistics = compiled[-1]
    assert set(statistics) == {0x55667788, 0x01020304} and statistics[0x55667788][4] > 0  # jitter estimated
    assert compiled[9] == [("3", "matrix")]
    # the Python methods saw only what is not steady state
    assert packets == len(taken)
    assert tap_py[0] <= 4, tap_py  # DTMF and the runt
    assert send_py[0] < 25, send_py  # the first of each stream, after DTMF, a hold, a loss, the jump
    assert feed_py[0] <= 4, feed_py  # the first packet of each stream


async def test_ice_receive_takes_srtp_and_leaves_the_rest_to_aiortc(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run(compiled: bool) -> tuple[Any, ...]:
        tx = outbound_srtp()
        original: list[bytes] = []
        rtcp: list[bytes] = []
        tapped: list[bytes] = []
        declined: list[bytes] = []

        def tap(plain: bytes) -> bool:
            tapped.append(plain)
            if plain[1] & 0x7F == 97:
                raise RuntimeError("a tap that fails")
            return plain[1] & 0x7F != 96  # a payload type the relay does not take: aiortc's path

        async def fallback(plain: bytes, arrival_time_ms: int) -> None:
            declined.append(plain)

        dtls: Any = SimpleNamespace(_rx_srtp=inbound_srtp())
        def on_srtcp(data: bytes) -> bool:
            rtcp.append(data)
            return True

        receive = IceReceive(lambda data, addr: original.append(data), dtls, SimpleNamespace(_tap=tap), fallback,
                             [None], on_srtcp, log)
        handler = fastrelay.twin(receive, "ice_receive") if compiled else receive.slow
        assert handler is not None
        datagrams = []
        for i in range(40):
            datagrams.append(tx.protect(build_rtp(96 if i == 7 else 97 if i == 9 else 0, False, 100 + i,
                                                  160 * i, 0x0A0B0C0D, bytes([i]) * 160)))
        datagrams.insert(20, datagrams[19])  # a replay: dropped
        forged = bytearray(datagrams[30])
        forged[-1] ^= 1
        datagrams.insert(31, bytes(forged))  # fails authentication: dropped
        datagrams.append(tx.protect_rtcp(bytes([0x81, 201]) + b"\x00\x07" + b"\x00" * 28))  # SRTCP
        datagrams.append(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 12)  # STUN
        datagrams.append(b"\x16\xfe\xfd" + b"\x00" * 20)  # DTLS
        for data in datagrams:
            handler(data, ("127.0.0.1", 5000))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return original, rtcp, tapped, declined

    python = await run(False)
    compiled = await run(True)
    assert compiled == python
    original, rtcp, tapped, declined = compiled
    assert len(tapped) == 40 and [p[1] & 0x7F for p in declined] == [96, 97]
    assert len(rtcp) == 1 and len(original) == 2


async def test_a_real_call_relays_on_the_compiled_twins(make_call: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiortc as Element (ICE, DTLS-SRTP), an RTP phone: both tones heard, and the Python methods saw a few packets
    (the first ones, STUN, DTLS, RTCP), not the stream."""
    assert NATIVE is not None, "bridge/media/_fastrelay.c is not built"
    python = {name: counting(monkeypatch, cls, name) for cls, name in [
        (RtpLeg, "datagram_received"), (Relay, "_from_sip_fast"), (Relay, "_from_webrtc_rtp"),
        (DirectSender, "send"), (IceReceive, "slow")]}
    call = await make_call()
    await connect_outbound(call)
    await assert_audio_both_ways(call, packets=100)
    stats = call.media.stats()
    assert stats.passthrough and stats.rtp_packets_in >= 100 and stats.webrtc_frames_in >= 100
    calls = {name: count[0] for name, count in python.items()}
    assert calls["datagram_received"] <= stats.rtp_packets_in // 10, calls
    assert calls["_from_sip_fast"] + calls["send"] <= stats.webrtc_frames_out // 10, calls
    assert calls["_from_webrtc_rtp"] + calls["slow"] <= stats.webrtc_frames_in // 5, calls
