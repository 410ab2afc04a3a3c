from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator

import pytest

from bridge.media.dtmf import decode_event, encode_event
from bridge.media.rtp_leg import RtpLeg
from bridge.media.rtp_packet import RtpPacket, seq_diff, ts_diff

from .helpers import wait_for
from .rtp_peer import RtpPeer, open_rtp_peer

log = logging.getLogger("test.rtp_leg")


@pytest.fixture
async def leg() -> AsyncIterator[RtpLeg]:
    loop = asyncio.get_running_loop()
    leg = RtpLeg(log=log, ptime=20, jitter_ms=60, queue_packets=50)
    await loop.create_datagram_endpoint(lambda: leg, local_addr=("127.0.0.1", 0))
    yield leg
    await leg.close()


@pytest.fixture
async def peers() -> AsyncIterator[list[RtpPeer]]:
    opened: list[RtpPeer] = []
    yield opened
    for peer in opened:
        await peer.close()


async def test_leg_latches_to_another_port_on_the_sdp_ip_after_four_consistent_packets(
    leg: RtpLeg, peers: list[RtpPeer]
) -> None:
    announced, actual = await open_rtp_peer(), await open_rtp_peer()
    peers += [announced, actual]
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.1", announced.port))
    got: list[RtpPacket] = []
    leg.on_audio = got.append
    leg_addr = leg.local_address
    assert leg_addr is not None
    actual.start_tone(leg_addr, packets=6)
    await wait_for(lambda: len(got) == 3)  # the first 3 are probation (symmetric RTP, rtp_source: signalling)
    leg.send_audio(b"\xff" * 160)
    await wait_for(lambda: len(actual.received) == 1)
    assert announced.received == []
    assert leg.latched


async def test_packets_from_a_foreign_source_are_ignored_after_latching(leg: RtpLeg, peers: list[RtpPeer]) -> None:
    far, intruder = await open_rtp_peer(), await open_rtp_peer()
    peers += [far, intruder]
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.1", far.port))
    got: list[RtpPacket] = []
    leg.on_audio = got.append
    addr = leg.local_address
    assert addr is not None
    far.send_packet(addr, b"\x01" * 160)
    await wait_for(lambda: len(got) == 1)
    intruder.send_packet(addr, b"\x02" * 160)
    far.send_packet(addr, b"\x03" * 160)
    await wait_for(lambda: len(got) == 2)
    assert got[1].payload == b"\x03" * 160
    assert leg.refused == 1


async def test_malformed_datagrams_are_counted_and_audio_keeps_flowing(leg: RtpLeg, peers: list[RtpPeer]) -> None:
    far = await open_rtp_peer()
    peers.append(far)
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.1", far.port))
    got: list[RtpPacket] = []
    leg.on_audio = got.append
    addr = leg.local_address
    assert addr is not None and far.transport is not None
    for junk in (b"", b"\x00" * 3, b"\x40" + b"\x00" * 20, b"\x8f\x00" + b"\x00" * 12):
        far.transport.sendto(junk, addr)
    far.send_packet(addr, b"\x05" * 160)
    await wait_for(lambda: len(got) == 1)
    assert leg.malformed >= 3  # an empty datagram may or may not be delivered by the kernel
    assert leg.transport is not None and not leg.transport.is_closing()


async def test_outgoing_stream_has_consecutive_seq_ts_and_marker_on_first(leg: RtpLeg, peers: list[RtpPeer]) -> None:
    far = await open_rtp_peer()
    peers.append(far)
    leg.configure(payload_type=8, clock_rate=8000, telephone_event_pt=None, remote=("127.0.0.1", far.port))
    for _ in range(5):
        leg.send_audio(b"\xd5" * 160)
    await wait_for(lambda: len(far.received) == 5)
    got = far.received
    assert [p.marker for p in got] == [True, False, False, False, False]
    assert all(p.payload_type == 8 and p.ssrc == leg.ssrc for p in got)
    assert [seq_diff(b.sequence, a.sequence) for a, b in itertools.pairwise(got)] == [1, 1, 1, 1]
    assert [ts_diff(b.timestamp, a.timestamp) for a, b in itertools.pairwise(got)] == [160] * 4


async def test_send_dtmf_emits_rfc4733_updates_and_three_end_packets(leg: RtpLeg, peers: list[RtpPeer]) -> None:
    far = await open_rtp_peer()
    peers.append(far)
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.1", far.port))
    leg.send_audio(b"\xff" * 160)
    leg.send_dtmf("7", duration_ms=100)
    await wait_for(lambda: sum(1 for p in far.received if p.payload_type == 101 and decode_event(p.payload).end) == 3)
    events = [p for p in far.received if p.payload_type == 101]
    decoded = [decode_event(p.payload) for p in events]
    assert {e.event for e in decoded} == {7}
    assert events[0].marker and not any(p.marker for p in events[1:])
    assert len({p.timestamp for p in events}) == 1  # one event, one timestamp
    durations = [e.duration for e in decoded]
    assert durations == sorted(durations) and durations[-1] == 800
    assert [e.end for e in decoded][-3:] == [True, True, True]


async def test_received_dtmf_is_reported_once_per_key_press(leg: RtpLeg, peers: list[RtpPeer]) -> None:
    far = await open_rtp_peer()
    peers.append(far)
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.1", far.port))
    digits: list[str] = []
    leg.on_dtmf = digits.append
    addr = leg.local_address
    assert addr is not None
    for i, end in enumerate((False, False, True, True, True)):
        far.ts = 5000  # every packet of one event carries the event's start timestamp
        payload = encode_event(11, end=end, volume=10, duration=160 * (i + 1))
        far.send_packet(addr, payload, pt=101, marker=i == 0)
    await wait_for(lambda: digits == ["#"])
    await asyncio.sleep(0.1)
    assert digits == ["#"]


async def test_close_releases_the_socket(peers: list[RtpPeer]) -> None:
    loop = asyncio.get_running_loop()
    leg = RtpLeg(log=log)
    transport, _ = await loop.create_datagram_endpoint(lambda: leg, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    await leg.close()
    await asyncio.sleep(0)
    again, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", port))
    again.close()


async def test_outgoing_timestamps_follow_the_source_clock_not_arrival_jitter(
    leg: RtpLeg, peers: list[RtpPeer]
) -> None:
    far = await open_rtp_peer()
    peers.append(far)
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.1", far.port))
    source = 1_000_000
    leg.send_audio(b"\x01" * 160, source_ts=source)
    leg.send_audio(b"\x02" * 160, source_ts=source + 160)
    leg.send_audio(b"\x03" * 160, source_ts=source + 800)  # 60 ms of silence (or loss) upstream
    leg.send_audio(b"\x04" * 160, source_ts=source + 320)  # arrives late: its slot is gone
    leg.send_audio(b"\x05" * 160, source_ts=source + 960)
    await wait_for(lambda: len(far.received) == 4)
    got = far.received
    assert [p.payload[0] for p in got] == [1, 2, 3, 5]
    assert [ts_diff(b.timestamp, a.timestamp) for a, b in itertools.pairwise(got)] == [160, 640, 160]
    assert [p.marker for p in got] == [True, False, True, False]  # a gap restarts a talkspurt
    assert [seq_diff(b.sequence, a.sequence) for a, b in itertools.pairwise(got)] == [1, 1, 1]
    assert leg.dropped == 1


async def test_a_source_clock_restart_is_rebased_without_a_jump(leg: RtpLeg, peers: list[RtpPeer]) -> None:
    far = await open_rtp_peer()
    peers.append(far)
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.1", far.port))
    leg.send_audio(b"\x01" * 160, source_ts=5_000)
    leg.send_audio(b"\x02" * 160, source_ts=4_000_000_000)  # new source: far away on the clock
    leg.send_audio(b"\x03" * 160, source_ts=4_000_000_160)
    await wait_for(lambda: len(far.received) == 3)
    got = far.received
    assert [ts_diff(b.timestamp, a.timestamp) for a, b in itertools.pairwise(got)] == [160, 160]
