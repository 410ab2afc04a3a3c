from __future__ import annotations

from bridge.media.jitter import JitterBuffer
from bridge.media.rtp_packet import RtpPacket


def pkt(seq: int) -> RtpPacket:
    return RtpPacket(0, False, seq & 0xFFFF, seq * 160, 1, b"")


def seqs(packets: list[RtpPacket]) -> list[int]:
    return [p.sequence for p in packets]


def test_in_order_packets_pass_straight_through() -> None:
    jb = JitterBuffer(depth=3, capacity=50)
    assert [seqs(jb.push(pkt(s))) for s in (10, 11, 12)] == [[10], [11], [12]]


def test_swapped_packets_come_out_in_order() -> None:
    jb = JitterBuffer(depth=3, capacity=50)
    out: list[int] = []
    for s in (1, 3, 2, 4):
        out += seqs(jb.push(pkt(s)))
    assert out == [1, 2, 3, 4]
    assert jb.lost == 0 and jb.late == 0


def test_a_lost_packet_is_skipped_once_depth_packets_wait() -> None:
    jb = JitterBuffer(depth=3, capacity=50)
    assert seqs(jb.push(pkt(1))) == [1]
    assert jb.push(pkt(3)) == [] and jb.push(pkt(4)) == []
    assert seqs(jb.push(pkt(5))) == [3, 4, 5]
    assert jb.lost == 1
    assert jb.push(pkt(2)) == []  # arrives after its turn: dropped as late
    assert jb.late == 1


def test_duplicates_are_dropped() -> None:
    jb = JitterBuffer(depth=3, capacity=50)
    jb.push(pkt(1))
    assert jb.push(pkt(1)) == []
    assert jb.late == 1


def test_order_survives_sequence_wraparound() -> None:
    jb = JitterBuffer(depth=3, capacity=50)
    out: list[int] = []
    for s in (65534, 0, 65535, 1):
        out += seqs(jb.push(pkt(s)))
    assert out == [65534, 65535, 0, 1]


def test_sequence_restart_is_followed_not_held() -> None:
    jb = JitterBuffer(depth=3, capacity=50)
    jb.push(pkt(1000))
    assert seqs(jb.push(pkt(40000))) == [40000]
    assert seqs(jb.push(pkt(40001))) == [40001]


def test_buffer_stays_bounded_by_depth() -> None:
    jb = JitterBuffer(depth=3, capacity=50)
    jb.push(pkt(0))
    for s in range(2, 500, 2):  # every other packet lost
        jb.push(pkt(s))
        assert len(jb) < 3
