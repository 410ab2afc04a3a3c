"""RTCP on the SIP leg (RFC 3550): sender/receiver reports, SDES CNAME and BYE to the far end, and the far
end's receiver reports read back (loss, jitter, round-trip time).

The packet classes are aiortc's (aiortc.rtp: RtcpSrPacket, RtcpRrPacket, RtcpSdesPacket, RtcpByePacket, and
RtcpPacket.parse), so only the statistics and the timing live here. RTCP is sent from the socket on RTP port + 1
(ours, bound next to the RTP socket) to the far end's RTCP address: its a=rtcp (RFC 3605), else its RTP port
+ 1, or where its own RTCP comes from (symmetric RTCP behind NAT). Nothing is sent before the RTP source
guard (rtp_source.py) has a far end, and RTCP is taken only from that far end's IP address.

Every datagram leaves through :meth:`RtcpSession.transmit` (SRTCP will wrap that one function).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from aiortc.rtp import (
    RtcpByePacket,
    RtcpPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
)

Address = tuple[str, int]

RTCP_MIN_INTERVAL_S = 5.0  # RFC 3550 6.2 minimum; the first report after half of it
COMPENSATION = 2.71828 - 1.5  # RFC 3550 6.3.1: divides the randomized interval (timer reconsideration)
SDES_CNAME = 1
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900 to 1970


def ntp_now() -> int:
    """64-bit NTP timestamp of the wall clock."""
    now = time.time() + NTP_EPOCH_OFFSET
    return (int(now) << 32) | int((now % 1) * (1 << 32))


def middle32(ntp: int) -> int:
    return (ntp >> 16) & 0xFFFFFFFF


class SendSide(Protocol):
    """What the reports need from the RTP leg (rtp_leg.RtpLeg)."""

    ssrc: int
    packets_out: int
    bytes_out: int
    clock_rate: int
    interarrival_jitter: float
    receive_stats: ReceiveStats

    def rtp_timestamp_now(self) -> int | None: ...
    def rtcp_destination(self) -> Address | None: ...
    def protect_rtcp(self, data: bytes) -> bytes: ...
    def unprotect_rtcp(self, data: bytes) -> bytes | None: ...


class ReceiveStats:
    """RFC 3550 A.1/A.3 sequence bookkeeping of the far end's stream (one per call: its SSRC may change)."""

    __slots__ = ("base_seq", "cycles", "expected_prior", "max_seq", "received", "received_prior", "ssrc")

    def __init__(self) -> None:
        self.ssrc: int | None = None
        self.base_seq = 0
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0

    def update(self, ssrc: int, seq: int) -> None:
        """Per received audio packet: a few integer operations."""
        if ssrc != self.ssrc:
            self.ssrc = ssrc
            self.base_seq = self.max_seq = seq
            self.cycles = self.received = self.expected_prior = self.received_prior = 0
        else:
            delta = (seq - self.max_seq) & 0xFFFF
            if 0 < delta < 3000:
                if seq < self.max_seq:
                    self.cycles += 1 << 16  # wrapped
                self.max_seq = seq
            elif delta > 0xFFFF - 100:
                pass  # a late or duplicate packet: counted, the highest number stays
            else:
                self.base_seq = self.max_seq = seq  # a big jump: the sender restarted (A.1, simplified)
                self.cycles = self.received = self.expected_prior = self.received_prior = 0
        self.received += 1

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    def report_block(self, jitter_units: int, lsr: int, dlsr: int) -> RtcpReceiverInfo:
        """A.3: cumulative and interval loss (the interval counters move on)."""
        expected = self.extended_max - self.base_seq + 1
        lost = max(-(1 << 23), min(expected - self.received, (1 << 23) - 1))
        expected_interval = expected - self.expected_prior
        received_interval = self.received - self.received_prior
        self.expected_prior, self.received_prior = expected, self.received
        lost_interval = expected_interval - received_interval
        fraction = 0 if expected_interval <= 0 or lost_interval <= 0 else (lost_interval << 8) // expected_interval
        return RtcpReceiverInfo(ssrc=self.ssrc or 0, fraction_lost=min(fraction, 255), packets_lost=lost,
                                highest_sequence=self.extended_max & 0xFFFFFFFF, jitter=jitter_units,
                                lsr=lsr, dlsr=dlsr)


@dataclass
class FarEndReport:
    """The far end's latest receiver report about our stream."""

    fraction_lost: float  # 0..1, of the last interval
    packets_lost: int  # cumulative
    jitter_s: float
    rtt_s: float | None  # from LSR/DLSR, None before it echoed one of our SRs


class RtcpSession(asyncio.DatagramProtocol):
    """The RTCP socket (RTP port + 1) and the report timer of one SIP leg."""

    def __init__(self, leg: SendSide, *, log: logging.Logger | logging.LoggerAdapter[Any],
                 allowed_ip: Callable[[], str | None], interval_s: float = RTCP_MIN_INTERVAL_S,
                 rng: random.Random | None = None) -> None:
        self.leg = leg
        self.log = log
        self._allowed_ip = allowed_ip
        self.interval_s = interval_s
        self._rng = rng or random.Random()
        self.cname = f"{secrets.token_hex(8)}@bridge".encode()
        self.receive = leg.receive_stats
        self.transport: asyncio.DatagramTransport | None = None
        self.fallback_send: Callable[[bytes, Address], None] | None = None
        """Sends from the RTP socket when no RTCP socket could be bound."""
        self.learned: Address | None = None  # where the far end's RTCP comes from (symmetric RTCP)
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sent_packets_at_report = 0
        self._last_sr: tuple[int, float] | None = None  # far end's SR: (middle 32 bits of its NTP, arrival)
        self._our_srs: dict[int, float] = {}  # middle 32 bits of our SR NTP -> send time (for RTT)
        self.reports_sent = 0
        self.sender_reports_sent = 0
        self.reports_in = 0  # compound RTCP packets read from the far end (this socket or muxed)
        self.socket_in = 0  # datagrams taken on this socket
        self.refused = 0
        self.malformed = 0
        self.far_end: FarEndReport | None = None
        self.bye_received = False
        self._closed = False

    # -- socket ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._lost.set()

    def error_received(self, exc: Exception) -> None:
        self.log.debug("RTCP socket error: %s", exc)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Taken from the far end's RTCP address; from another port of the far end's IP (NAT) only when it is
        RTCP sent by the SSRC of the RTP stream we receive, and then our reports go there (symmetric RTCP)."""
        if addr != self.learned and addr != self.leg.rtcp_destination():
            ssrc = self.receive.ssrc
            if (addr[0] != self._allowed_ip() or ssrc is None or len(data) < 8 or not 200 <= data[1] <= 201
                    or int.from_bytes(data[4:8], "big") != ssrc):
                self.refused += 1  # anybody else (a port sprayer on the far end's IP too) gets nothing
                return
            self.learned = addr  # the first 8 bytes (header, SSRC) are in clear in SRTCP too
        clear = self.leg.unprotect_rtcp(data)
        if clear is None:
            self.refused += 1  # SRTCP that fails authentication or is a replay
            return
        self.socket_in += 1
        self.on_rtcp(clear)

    # -- reports in -------------------------------------------------------------------------------
    def on_rtcp(self, data: bytes) -> None:
        """A compound RTCP packet from the far end (here, or muxed on the RTP socket)."""
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            self.malformed += 1
            return
        self.reports_in += 1
        arrival = time.time()
        for packet in packets:
            if isinstance(packet, RtcpSrPacket):
                self._last_sr = (middle32(packet.sender_info.ntp_timestamp), arrival)
                self._read_blocks(packet.reports, arrival)
            elif isinstance(packet, RtcpRrPacket):
                self._read_blocks(packet.reports, arrival)
            elif isinstance(packet, RtcpByePacket):
                self.bye_received = True

    def _read_blocks(self, blocks: list[RtcpReceiverInfo], arrival: float) -> None:
        for block in blocks:
            if block.ssrc != self.leg.ssrc:
                continue
            rtt = None
            sent = self._our_srs.get(block.lsr) if block.lsr else None
            if sent is not None:
                rtt = max(0.0, arrival - sent - block.dlsr / 65536)
            self.far_end = FarEndReport(block.fraction_lost / 256, block.packets_lost,
                                        block.jitter / self.leg.clock_rate, rtt)

    # -- reports out ------------------------------------------------------------------------------
    def build_report(self, *, bye: bool = False) -> bytes:
        """Compound packet: SR if we sent RTP since the last report, else RR; SDES CNAME; BYE if asked."""
        leg = self.leg
        blocks = []
        if self.receive.ssrc is not None:
            lsr, dlsr = 0, 0
            if self._last_sr is not None:
                lsr = self._last_sr[0]
                dlsr = int((time.time() - self._last_sr[1]) * 65536) & 0xFFFFFFFF
            blocks.append(self.receive.report_block(int(leg.interarrival_jitter * leg.clock_rate), lsr, dlsr))
        rtp_ts = leg.rtp_timestamp_now()
        first: RtcpSrPacket | RtcpRrPacket
        if leg.packets_out > self._sent_packets_at_report and rtp_ts is not None:
            ntp = ntp_now()
            self._our_srs[middle32(ntp)] = time.time()
            while len(self._our_srs) > 8:
                del self._our_srs[next(iter(self._our_srs))]
            octets = max(0, leg.bytes_out - 12 * leg.packets_out)  # payload octets: our headers are 12 bytes
            first = RtcpSrPacket(ssrc=leg.ssrc, sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp, rtp_timestamp=rtp_ts, packet_count=leg.packets_out & 0xFFFFFFFF,
                octet_count=octets & 0xFFFFFFFF), reports=blocks)
            self.sender_reports_sent += 1
        else:
            first = RtcpRrPacket(ssrc=leg.ssrc, reports=blocks)
        self._sent_packets_at_report = leg.packets_out
        data = bytes(first) + bytes(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=leg.ssrc,
                                                                          items=[(SDES_CNAME, self.cname)])]))
        if bye:
            data += bytes(RtcpByePacket(sources=[leg.ssrc]))
        return data

    def transmit(self, data: bytes) -> bool:
        """The one way out for RTCP (as SRTCP on an encrypted leg). False when there is no far end yet."""
        learned = self.learned
        destination = learned if learned is not None and learned[0] == self._allowed_ip() else (
            self.leg.rtcp_destination())
        if destination is None:
            return False
        data = self.leg.protect_rtcp(data)
        if self.transport is not None:
            self.transport.sendto(data, destination)
        elif self.fallback_send is not None:
            self.fallback_send(data, destination)
        else:
            return False
        self.reports_sent += 1
        return True

    def next_interval(self, initial: bool = False) -> float:
        """RFC 3550 6.2/6.3: the minimum (halved for the first report) x U(0.5, 1.5) / (e - 3/2)."""
        base = self.interval_s / 2 if initial else self.interval_s
        return base * self._rng.uniform(0.5, 1.5) / COMPENSATION

    def start(self) -> None:
        if self._task is None and self.interval_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sip-rtcp")

    async def _run(self) -> None:
        initial = True
        while True:
            await asyncio.sleep(self.next_interval(initial))
            initial = False
            if self.leg.rtcp_destination() is None:
                continue  # no far end qualified yet (or held with c=0.0.0.0)
            try:
                self.transmit(self.build_report())
            except OSError as exc:
                self.log.debug("cannot send RTCP: %s", exc)

    async def close(self) -> None:
        """Stop the timer, send a final report with a BYE (if a report was ever due), close the socket."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            try:
                self.transmit(self.build_report(bye=True))
            except OSError as exc:
                self.log.debug("cannot send RTCP BYE: %s", exc)
        if self.transport is not None:
            self.transport.close()
            await self._lost.wait()
