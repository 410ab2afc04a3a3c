"""The RTP leg's per-packet fast paths (in-order passthrough audio in, in-step audio out) give exactly what the
full path gives: same packets in the same order, same counters, RTCP statistics and jitter estimate, same bytes on
the wire. Each scenario is run twice, once through the fast path and once through the full path only."""

from __future__ import annotations

import logging
import types
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.media import fastrelay
from bridge.media import rtp_leg as rtp_leg_module
from bridge.media.dtmf import DtmfEvent, encode_event
from bridge.media.rtp_leg import RtpLeg
from bridge.media.rtp_packet import RtpPacket, build_rtp

log = logging.getLogger("test.rtp_leg_fastpath")
FAR = ("127.0.0.1", 40000)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


class Wire:
    """Stands in for the datagram transport: records what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    clock = Clock()
    monkeypatch.setattr(rtp_leg_module, "_monotonic", clock.monotonic)
    monkeypatch.setattr(rtp_leg_module, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    if fastrelay.native is not None:
        fastrelay.native.set_clocks(clock.monotonic, None)  # the compiled twins read the same clock
    yield clock
    if fastrelay.native is not None:
        fastrelay.native.set_clocks(None, None)


def make_leg(wire: Wire, compiled: bool = True) -> RtpLeg:
    leg = RtpLeg(log=log, ptime=20, jitter_ms=60, queue_packets=50, source_mode="strict")
    if not compiled and "datagram_received" in vars(leg):
        del leg.datagram_received  # the Python method, not its compiled twin (fastrelay.py)
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=FAR)
    leg.transport = wire  # type: ignore[assignment]
    leg.ssrc, leg._seq, leg._ts = 0x11223344, 65530, 0xFFFFFF00  # both runs alike, wraps included
    return leg


def with_extension(seq: int, ts: int, ssrc: int, payload: bytes) -> bytes:
    plain = build_rtp(0, False, seq, ts, ssrc, payload)
    return bytes([0x90]) + plain[1:12] + b"\xbe\xde\x00\x01\x10\xff\x00\x00" + payload


def incoming() -> list[tuple[float, bytes]]:
    """(arrival time step, datagram): in order, reordered, duplicate, marker, extension header, DTMF, a new SSRC,
    a sequence wrap, RTCP."""
    out: list[tuple[float, bytes]] = []
    ssrc, ts = 0xAABBCCDD, 1000
    seqs = [65000 + i for i in range(5)] + [65007, 65006, 65005, 65005, 65008]
    for i, seq in enumerate(seqs):
        out.append((0.02 + 0.003 * (i % 3), build_rtp(0, i == 0, seq, ts + 160 * (seq - 65000), ssrc,
                                                      bytes([i]) * 160)))
    out.append((0.02, with_extension(65009, ts + 160 * 9, ssrc, b"\x55" * 160)))
    out.append((0.02, build_rtp(101, True, 65010, ts + 160 * 10, ssrc, encode_event(5, end=False, volume=10,
                                                                                       duration=160))))
    out.append((0.02, build_rtp(0, False, 65011, ts + 160 * 11, ssrc, b"\x66" * 160)))
    out.append((0.02, build_rtp(13, False, 65012, ts + 160 * 12, ssrc, b"\x01")))  # comfort noise: dropped
    for i in range(6):  # wraps 65535 -> 0
        seq = (65532 + i) & 0xFFFF
        out.append((0.021, build_rtp(0, False, seq, ts + 160 * (13 + i), ssrc, bytes([0x70 + i]) * 160)))
    for i in range(4):  # the phone restarted its stream
        out.append((0.019, build_rtp(0, i == 0, 300 + i, 555 + 160 * i, 0x01020304, bytes([0x80 + i]) * 160)))
    out.append((0.02, bytes([0x81, 200]) + b"\x00\x06" + b"\x00" * 24))  # an RTCP SR on the RTP port
    return out


def receive_run(clock: Clock, fast: bool, compiled: bool = False) -> tuple[list[Any], dict[str, Any]]:
    leg = make_leg(Wire(), compiled)
    got: list[Any] = []
    dtmf: list[Any] = []

    def slow(packet: RtpPacket) -> None:
        got.append(("audio", packet.timestamp, packet.payload))

    def quick(data: bytes, timestamp: int) -> None:
        got.append(("audio", timestamp, data[12:]))

    if fast:
        leg.set_audio_sinks(slow, quick)
    else:
        leg.on_audio = slow
    leg.on_dtmf_event = lambda event, new: dtmf.append((event, new))
    for step, data in incoming():
        clock.now += step
        leg.datagram_received(data, FAR)
    stats = leg.receive_stats
    return got + dtmf, {
        "packets_in": leg.packets_in, "bytes_in": leg.bytes_in, "foreign": leg.foreign, "rtcp_in": leg.rtcp_in,
        "jitter": round(leg.interarrival_jitter, 12), "late": leg.jitter.late, "lost": leg.jitter.lost,
        "stats": (stats.ssrc, stats.base_seq, stats.max_seq, stats.cycles, stats.received)}


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
def test_in_order_passthrough_audio_on_the_fast_path_is_what_the_full_path_delivers(clock: Clock,
                                                                                   compiled: bool) -> None:
    if compiled:
        assert fastrelay.native is not None, "bridge/media/_fastrelay.c is not built (pip install -e .)"
    fast_got, fast_counters = receive_run(clock, fast=True, compiled=compiled)
    slow_got, slow_counters = receive_run(clock, fast=False)
    assert fast_got == slow_got
    assert fast_counters == slow_counters
    assert fast_counters["packets_in"] == 22 and fast_counters["stats"][0] == 0x01020304


def test_the_fast_path_is_used_and_stops_when_the_sink_is_replaced(clock: Clock) -> None:
    leg = make_leg(Wire())
    quick: list[int] = []
    slow: list[int] = []
    leg.set_audio_sinks(lambda p: slow.append(p.sequence), lambda data, ts: quick.append(ts))
    for seq in range(3):
        leg.datagram_received(build_rtp(0, False, seq, 160 * seq, 1, b"\x00" * 160), FAR)
    assert quick == [0, 160, 320] and slow == []
    leg.on_audio = lambda p: slow.append(p.sequence)  # someone else's sink: it must get every packet
    leg.datagram_received(build_rtp(0, False, 3, 480, 1, b"\x00" * 160), FAR)
    assert quick == [0, 160, 320] and slow == [3]


def send_run(clock: Clock, fast: bool) -> tuple[list[Any], tuple[int, ...]]:
    wire = Wire()
    leg = make_leg(wire)
    samples = None if fast else 160  # an explicit sample count takes the full path (same result for G.711)

    def audio(source_ts: int) -> None:
        leg.send_audio(bytes([source_ts & 0xFF]) * 160, source_ts=source_ts, samples=samples)

    source = 7000
    for _ in range(5):
        clock.now += 0.02
        audio(source)
        source += 160
    audio(source - 320)  # late: dropped
    source += 160 * 10  # the source skipped 200 ms: marker, timestamp follows
    for _ in range(3):
        clock.now += 0.02
        audio(source)
        source += 160
    leg.relay_dtmf(DtmfEvent(1, False, 10, 160), True)
    leg.relay_dtmf(DtmfEvent(1, True, 10, 320), False)
    for _ in range(3):
        clock.now += 0.02
        audio(source)
        source += 160
    leg.hold = True
    audio(source)
    source += 160
    leg.hold = False
    for _ in range(3):
        clock.now += 0.02
        audio(source)
        source += 160
    audio(source + 5 * 8000 + 1)  # a restart of the source: rebased
    return wire.sent, (leg.packets_out, leg.bytes_out, leg.dropped, leg._seq, leg._ts)


def test_in_step_audio_on_the_fast_send_path_is_what_the_full_path_sends(clock: Clock) -> None:
    fast_sent, fast_counters = send_run(clock, fast=True)
    slow_sent, slow_counters = send_run(clock, fast=False)
    assert fast_sent == slow_sent
    assert fast_counters == slow_counters
    assert len(fast_sent) == 17  # the late one and the one while held are not sent
