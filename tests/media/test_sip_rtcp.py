"""SIP-leg RTCP (bridge/media/sip_rtcp.py): report contents, SR vs RR, loss arithmetic, the far end's RR read
back, the randomized interval, and the source rule (nothing to or from a far end the RTP guard has not taken)."""

from __future__ import annotations

import logging
import random
import time

from aiortc.rtp import (
    RtcpByePacket,
    RtcpPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
)

from bridge.media.sip_rtcp import COMPENSATION, ReceiveStats, RtcpSession, middle32, ntp_now

LOG = logging.getLogger("test")


class FakeLeg:
    def __init__(self) -> None:
        self.ssrc = 0x11223344
        self.packets_out = 0
        self.bytes_out = 0
        self.clock_rate = 8000
        self.interarrival_jitter = 0.002
        self.receive_stats = ReceiveStats()
        self.destination: tuple[str, int] | None = ("127.0.0.1", 40001)

    def rtp_timestamp_now(self) -> int | None:
        return 123456 if self.packets_out else None

    def rtcp_destination(self) -> tuple[str, int] | None:
        return self.destination

    def protect_rtcp(self, data: bytes) -> bytes:
        return data

    def unprotect_rtcp(self, data: bytes) -> bytes | None:
        return data


def session(leg: FakeLeg, allowed: str | None = "127.0.0.1") -> RtcpSession:
    return RtcpSession(leg, log=LOG, allowed_ip=lambda: allowed, rng=random.Random(1))


def test_sender_report_after_sending_then_receiver_report_with_loss() -> None:
    leg = FakeLeg()
    rtcp = session(leg)
    for seq in [65530, 65531, 65533, 65534, 65535, 0, 1, 3]:  # 65532 and 2 lost, across the wrap
        leg.receive_stats.update(0xAABBCCDD, seq)
    leg.packets_out, leg.bytes_out = 10, 10 * 172
    sr, sdes = RtcpPacket.parse(rtcp.build_report())
    assert isinstance(sr, RtcpSrPacket) and sr.ssrc == leg.ssrc
    assert sr.sender_info.packet_count == 10 and sr.sender_info.octet_count == 1600
    assert sr.sender_info.rtp_timestamp == 123456
    assert abs((sr.sender_info.ntp_timestamp >> 32) - (ntp_now() >> 32)) <= 1
    block = sr.reports[0]
    assert block.ssrc == 0xAABBCCDD and block.packets_lost == 2
    assert block.highest_sequence == (1 << 16) + 3
    assert block.fraction_lost == (2 << 8) // 10 and block.jitter == 16  # 2 ms at 8 kHz
    assert isinstance(sdes, RtcpSdesPacket) and sdes.chunks[0].ssrc == leg.ssrc
    assert sdes.chunks[0].items[0][0] == 1 and sdes.chunks[0].items[0][1].endswith(b"@bridge")
    # nothing sent since: a receiver report; no new loss in this interval
    leg.receive_stats.update(0xAABBCCDD, 4)
    rr, _ = RtcpPacket.parse(rtcp.build_report())
    assert isinstance(rr, RtcpRrPacket) and rr.reports[0].fraction_lost == 0 and rr.reports[0].packets_lost == 2


def test_receiver_report_echoes_the_far_ends_sender_report_and_bye_closes() -> None:
    leg = FakeLeg()
    rtcp = session(leg)
    leg.receive_stats.update(7, 100)
    ntp = ntp_now()
    rtcp.on_rtcp(bytes(RtcpSrPacket(ssrc=7, sender_info=RtcpSenderInfo(ntp, 0, 1, 160))))
    time.sleep(0.05)
    data = rtcp.build_report(bye=True)
    rr, _, bye = RtcpPacket.parse(data)
    assert isinstance(rr, RtcpRrPacket) and rr.reports[0].lsr == middle32(ntp)
    assert 0.04 < rr.reports[0].dlsr / 65536 < 1.0
    assert isinstance(bye, RtcpByePacket) and bye.sources == [leg.ssrc]


def test_far_end_receiver_report_gives_loss_jitter_and_rtt() -> None:
    leg = FakeLeg()
    rtcp = session(leg)
    leg.packets_out, leg.bytes_out = 5, 5 * 172
    sr = RtcpPacket.parse(rtcp.build_report())[0]
    assert isinstance(sr, RtcpSrPacket)
    time.sleep(0.05)
    block = RtcpReceiverInfo(ssrc=leg.ssrc, fraction_lost=64, packets_lost=3, highest_sequence=5, jitter=80,
                             lsr=middle32(sr.sender_info.ntp_timestamp), dlsr=int(0.02 * 65536))
    rtcp.on_rtcp(bytes(RtcpRrPacket(ssrc=99, reports=[block])))
    far = rtcp.far_end
    assert far is not None and far.packets_lost == 3 and far.fraction_lost == 0.25 and far.jitter_s == 0.01
    assert far.rtt_s is not None and 0.02 < far.rtt_s < 0.5
    # a block about somebody else's stream is ignored; garbage is counted, not raised
    rtcp.on_rtcp(bytes(RtcpRrPacket(ssrc=99, reports=[RtcpReceiverInfo(1, 0, 50, 0, 0, 0, 0)])))
    assert rtcp.far_end is not None and rtcp.far_end.packets_lost == 3
    rtcp.on_rtcp(b"\x80\xc9\x00\x09short")
    assert rtcp.malformed == 1


def test_rtcp_only_from_and_to_the_accepted_far_end() -> None:
    leg = FakeLeg()
    sent: list[tuple[bytes, tuple[str, int]]] = []
    rtcp = session(leg, allowed="127.0.0.1")
    rtcp.fallback_send = lambda data, addr: sent.append((data, addr))
    leg.receive_stats.update(5, 1000)  # the far end's RTP stream has SSRC 5
    report = bytes(RtcpRrPacket(ssrc=5))
    rtcp.datagram_received(report, ("127.0.0.2", 9999))
    assert rtcp.refused == 1 and rtcp.learned is None and rtcp.reports_in == 0
    rtcp.datagram_received(bytes(RtcpRrPacket(ssrc=6)), ("127.0.0.1", 40555))  # right IP, wrong stream
    rtcp.datagram_received(b"\x80\x00" + bytes(30), ("127.0.0.1", 40555))  # right IP, RTP
    assert rtcp.refused == 3 and rtcp.learned is None
    rtcp.datagram_received(report, ("127.0.0.1", 40001))  # the SDP's RTCP address
    assert rtcp.learned is None and rtcp.reports_in == 1
    rtcp.datagram_received(report, ("127.0.0.1", 40555))  # the far end's IP, a NATed port, its SSRC: learned
    assert rtcp.learned == ("127.0.0.1", 40555) and rtcp.reports_in == 2
    assert rtcp.transmit(b"x") and sent[-1][1] == ("127.0.0.1", 40555)
    leg.destination = None
    nobody = session(leg, allowed=None)
    nobody.fallback_send = lambda data, addr: sent.append((data, addr))
    assert not nobody.transmit(b"x") and len(sent) == 1  # no far end accepted yet: nothing goes out


def test_report_interval_is_randomized_around_the_minimum() -> None:
    rtcp = session(FakeLeg())
    first = [rtcp.next_interval(initial=True) for _ in range(200)]
    later = [rtcp.next_interval() for _ in range(200)]
    assert 2.5 * 0.5 / COMPENSATION <= min(first) and max(first) <= 2.5 * 1.5 / COMPENSATION
    assert 5 * 0.5 / COMPENSATION <= min(later) and max(later) <= 5 * 1.5 / COMPENSATION
    assert max(later) - min(later) > 2.0  # really spread, not a fixed period
