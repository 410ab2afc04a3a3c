"""RTCP on the SIP leg during a real Matrix -> SIP call: the phone's RTCP port (its RTP port + 1) gets
well-formed sender reports about the bridge's stream (counts matching the RTP it received) with a report
block about the phone's own stream, an SDES CNAME, and a BYE at hangup; the phone's receiver report comes
back into the call's statistics (loss, round-trip time)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiortc.rtp import (
    RtcpByePacket,
    RtcpPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSrPacket,
)

from tests.e2e.conftest import E2E, GHOST, assert_released, eventually
from tests.e2e.test_outbound_calls import portal_room, trunk
from tests.harness.rtp_peer import RtpPeer

pytestmark = pytest.mark.e2e


class RtcpCollector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[tuple[list[object], tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.append((list(RtcpPacket.parse(data)), addr))  # raises (test fails) on a malformed one

    def of_type(self, kind: type) -> list[object]:
        return [p for compound, _ in self.packets for p in compound if isinstance(p, kind)]


async def phone_ports() -> tuple[RtpPeer, RtcpCollector]:
    """An RTP peer on an even port whose port + 1 is free for the RTCP collector."""
    loop = asyncio.get_running_loop()
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1] & ~1
        peer = RtpPeer(tone_hz=1000.0)
        collector = RtcpCollector()
        try:
            await peer.open(port)
        except OSError:
            continue
        try:
            await loop.create_datagram_endpoint(lambda c=collector: c, local_addr=("127.0.0.1", port + 1))  # type: ignore[misc]
        except OSError:
            await peer.close()
            continue
        return peer, collector
    raise RuntimeError("no free RTP/RTCP port pair")


async def test_sip_leg_sends_sender_reports_reads_receiver_reports_and_says_bye(e2e: E2E) -> None:
    peer, collector = await phone_ports()
    try:
        bridge = await e2e.bridge()
        peer.start_sending(seconds=60)
        sipp = await trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(peer.port))
        alice = await e2e.client("alice")
        room = await portal_room(alice)
        call = await alice.place_call(room, GHOST)
        await call.wait_answer(timeout=30)
        await eventually(lambda: peer.received >= 25, 20, "RTP at the phone")
        # the first report comes after 2.5 s x U(0.5, 1.5) / 1.218 (RFC 3550 6.2/6.3): at most ~3.1 s
        await eventually(lambda: bool(collector.of_type(RtcpSrPacket)), 10, "an RTCP sender report")
        media = bridge.calls.outbound[call.call_id].media
        # the bridge's SSRC as the phone saw it on the wire (the leg itself may live in a media worker)
        assert len(peer.received_ssrcs) == 1
        bridge_ssrc = next(iter(peer.received_ssrcs))
        sr = collector.of_type(RtcpSrPacket)[0]
        assert isinstance(sr, RtcpSrPacket) and sr.ssrc == bridge_ssrc
        info = sr.sender_info
        # counts match the RTP the phone got (PCMU: 160 payload bytes a packet); the SR was built a moment ago
        assert 0 < info.packet_count <= peer.received + 1 and info.packet_count >= peer.received - 100
        assert info.octet_count == 160 * info.packet_count
        block = sr.reports[0]
        assert block.ssrc == peer.ssrc and block.packets_lost == 0 and block.fraction_lost == 0
        assert block.jitter < 8000  # under a second of jitter on loopback
        sdes = collector.of_type(RtcpSdesPacket)[0]
        assert isinstance(sdes, RtcpSdesPacket) and sdes.chunks[0].ssrc == bridge_ssrc
        assert any(kind == 1 and value for kind, value in sdes.chunks[0].items)  # CNAME
        bridge_rtcp = collector.packets[0][1]
        assert media.rtp_port is not None and bridge_rtcp == ("127.0.0.1", media.rtp_port + 1)  # RTP port + 1

        # the phone reports 7 of the bridge's packets lost, echoing the SR: loss and RTT reach the stats
        from bridge.media.sip_rtcp import middle32

        report = RtcpRrPacket(ssrc=peer.ssrc, reports=[RtcpReceiverInfo(
            ssrc=bridge_ssrc, fraction_lost=10, packets_lost=7, highest_sequence=0, jitter=40,
            lsr=middle32(info.ntp_timestamp), dlsr=0)])
        assert collector.transport is not None
        collector.transport.sendto(bytes(report), bridge_rtcp)
        await eventually(lambda: media.stats().far_end_lost == 7, 5, "the phone's RR in the stats")
        stats = media.stats()
        assert stats.rtt_s is not None and 0 <= stats.rtt_s < 10 and stats.far_end_jitter_s == 40 / 8000
        assert stats.rtcp_in >= 1 and stats.rtcp_out >= 1

        await call.hangup()
        assert await sipp.wait() == 0, sipp.report()
        await assert_released(bridge)
        byes = collector.of_type(RtcpByePacket)
        assert len(byes) == 1 and isinstance(byes[0], RtcpByePacket) and byes[0].sources == [bridge_ssrc]
    finally:
        await peer.close()
        if collector.transport is not None:
            collector.transport.close()
