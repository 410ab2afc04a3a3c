"""RTCP of the WebRTC leg on the fast path: packets aiortc (the client's stack here) parses as RFC 3550 says,
and a real call where the client gets our sender reports and computes its round trip from our report blocks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtcpByePacket, RtcpPacket, RtcpRrPacket, RtcpSdesPacket, RtcpSenderInfo, RtcpSrPacket

from bridge.media import webrtc_fastpath, webrtc_rtcp
from bridge.media.webrtc_rtcp import bye, receiver_report, report_block, sdes_cname, sender_report, sender_report_lsrs

from .call_fixtures import Call, connect_outbound
from .test_call_media import assert_audio_both_ways
from .test_webrtc_fastpath import make_call  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(not webrtc_fastpath.FASTPATH_OK, reason="aiortc/aioice internals differ")


class Packet:
    def __init__(self, seq: int, ts: int) -> None:
        self.sequence_number = seq
        self.timestamp = ts


def stream_with_a_loss() -> StreamStatistics:
    stream = StreamStatistics(8000)
    for seq in (65534, 65535, 1, 2):  # 0 lost, across a wrap
        stream.add(Packet(seq, seq * 160))  # type: ignore[arg-type]
    return stream


def test_a_sender_report_with_a_block_and_sdes_parses_as_aiortc_reads_rtcp() -> None:
    block = report_block(0xCAFE, stream_with_a_loss(), lsr=0x12345678, lsr_time=100.0, now=100.5)
    compound = sender_report(0x11223344, ntp=(5 << 32) | 0x80000000, rtp_ts=4000, packets=7, octets=1120,
                             blocks=[block]) + sdes_cname(0x11223344, b"bridge-cname")
    sr, sdes = RtcpPacket.parse(compound)
    assert isinstance(sr, RtcpSrPacket) and isinstance(sdes, RtcpSdesPacket)
    assert sr.ssrc == 0x11223344
    assert sr.sender_info == RtcpSenderInfo(ntp_timestamp=(5 << 32) | 0x80000000, rtp_timestamp=4000,
                                            packet_count=7, octet_count=1120)
    (report,) = sr.reports
    assert report.ssrc == 0xCAFE and report.packets_lost == 1 and report.fraction_lost == 256 // 5
    assert report.highest_sequence == (1 << 16) + 2  # the wrap counted in the extended sequence number
    assert report.lsr == 0x12345678 and report.dlsr == 65536 // 2  # half a second since that SR
    assert sdes.chunks[0].ssrc == 0x11223344 and sdes.chunks[0].items == [(1, b"bridge-cname")]


def test_receiver_report_and_bye_parse_and_the_lsr_of_a_client_sender_report_is_read() -> None:
    rr, sdes, goodbye = RtcpPacket.parse(receiver_report(0x55, []) + sdes_cname(0x55, b"x" * 7) + bye(0x55))
    assert isinstance(rr, RtcpRrPacket) and rr.ssrc == 0x55 and rr.reports == []
    assert isinstance(sdes, RtcpSdesPacket) and isinstance(goodbye, RtcpByePacket) and goodbye.sources == [0x55]
    client_sr = bytes(RtcpSrPacket(ssrc=0xABCD, sender_info=RtcpSenderInfo(
        ntp_timestamp=0x0102030405060708, rtp_timestamp=1, packet_count=2, octet_count=3)))
    client_rr = bytes(RtcpRrPacket(ssrc=0x99, reports=[]))
    assert sender_report_lsrs(client_rr + client_sr) == [(0xABCD, 0x03040506)]
    assert sender_report_lsrs(client_sr[:-4]) == []  # truncated: nothing read past the end


async def test_a_call_on_the_fast_path_has_our_rtcp_both_ways_and_the_client_measures_its_round_trip(
    make_call: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setattr(webrtc_rtcp, "INTERVAL_S", 0.4)
    call: Call = await make_call(None)
    await connect_outbound(call)
    await assert_audio_both_ways(call)
    webrtc: Any = call.media._webrtc
    rtcp = webrtc.rtcp
    assert rtcp is not None
    peer = call.matrix.transceiver

    async def client_stats() -> tuple[list[Any], list[Any]]:
        sent = (await peer.sender.getStats()).values()
        received = (await peer.receiver.getStats()).values()
        return ([s for s in sent if s.type == "remote-inbound-rtp" and s.roundTripTime is not None],
                [s for s in received if s.type == "remote-outbound-rtp"])

    for _ in range(40):
        rtts, srs = await client_stats()
        if rtts and srs and rtcp.received:
            break
        await asyncio.sleep(0.25)
    # the client read our SR (what we sent) and, from our report block with its LSR/DLSR, its round trip
    assert srs and srs[0].packetsSent >= 20, srs
    assert rtts and 0 <= rtts[0].roundTripTime < 1.0, rtts
    assert rtcp.sent >= 2 and rtcp.received >= 1  # the client's SRTCP was read here, not in aiortc's task
    assert webrtc._transceiver.sender._RTCRtpSender__rtcp_started.is_set()  # our loop stands in for aiortc's
