"""RTCP of the WebRTC leg on the fast path (aiortc 1.16 internals, guarded by ``webrtc_fastpath.FASTPATH_OK``).

aiortc runs two RTCP coroutines per call, a sender-report loop and a receiver-report loop, each waking about once
a second and building its packets from dataclasses with ``datetime``-based NTP conversions; every SRTCP packet
from the client goes through an asyncio queue and the DTLS transport's task before it is parsed. Profiled at 20
passthrough calls (py-spy, media worker) that was a fifth of the worker's CPU, more than the SRTP of the audio.

Here, per call:

* **sending**: aiortc's two loops are replaced (on the instances) by one: a compound SRTCP packet - an SR for our
  stream carrying the report block of the client's stream (or an RR before we sent anything) and an SDES CNAME -
  built with ``struct`` every 5 s x [0.5, 1.5], the interval libwebrtc uses for audio (RFC 3550 6.2: randomised
  so that reports do not synchronise). On stop, a BYE, as aiortc sends.
* **receiving**: an SRTCP packet from the client is unprotected in the socket callback (``install_receive``) and
  read only for what our reports need: the LSR of its sender report, so the client can compute the round trip
  from our report block (Chrome's RTT and loss figures). Nothing else in RTCP matters for one audio stream.

The statistics of the client's stream are aiortc's own ``StreamStatistics`` that ``rtcp_feed`` keeps up to date.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from typing import Any

import pylibsrtp
from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics
from aiortc.rtcrtpsender import RTCRtpSender

from .webrtc_fastpath import fast_srtp

INTERVAL_S = 5.0  # mean; libwebrtc's audio report interval
_SR, _RR, _SDES, _BYE = 200, 201, 202, 203
_COMMON = struct.Struct("!BBH")
_SENDER_INFO = struct.Struct("!IIIIII")  # SSRC, NTP msw, NTP lsw, RTP timestamp, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # SSRC, fraction lost << 24 | cumulative lost, highest seq, jitter, LSR, DLSR
_MAX_BLOCKS = 31


def next_interval(mean: float = INTERVAL_S) -> float:
    return mean * (0.5 + random.random())


def report_block(ssrc: int, stream: StreamStatistics, lsr: int, lsr_time: float | None, now: float) -> bytes:
    """RFC 3550 6.4.1 report block of one received stream (aiortc's statistics, read as its RR loop did)."""
    fraction = stream.fraction_lost & 0xFF  # property: also starts the next interval
    lost = max(-0x800000, min(0x7FFFFF, stream.packets_lost)) & 0xFFFFFF
    highest = (stream.cycles + (stream.max_seq or 0)) & 0xFFFFFFFF
    dlsr = 0
    if lsr_time is not None and 0 < now - lsr_time < 65536:
        dlsr = int((now - lsr_time) * 65536)
    return _BLOCK.pack(ssrc, fraction << 24 | lost, highest, stream.jitter & 0xFFFFFFFF, lsr, dlsr)


def sdes_cname(ssrc: int, cname: bytes) -> bytes:
    item = bytes((1, len(cname))) + cname + b"\x00"  # CNAME, then the END item
    item += b"\x00" * (-(4 + len(item)) % 4)  # the chunk ends on a 32-bit boundary
    return _COMMON.pack(0x81, _SDES, (4 + len(item)) // 4) + ssrc.to_bytes(4, "big") + item


def sender_report(ssrc: int, ntp: int, rtp_ts: int, packets: int, octets: int, blocks: list[bytes]) -> bytes:
    body = _SENDER_INFO.pack(ssrc, (ntp >> 32) & 0xFFFFFFFF, ntp & 0xFFFFFFFF, rtp_ts & 0xFFFFFFFF,
                             packets & 0xFFFFFFFF, octets & 0xFFFFFFFF) + b"".join(blocks)
    return _COMMON.pack(0x80 | len(blocks), _SR, (4 + len(body)) // 4 - 1) + body


def receiver_report(ssrc: int, blocks: list[bytes]) -> bytes:
    body = ssrc.to_bytes(4, "big") + b"".join(blocks)
    return _COMMON.pack(0x80 | len(blocks), _RR, (4 + len(body)) // 4 - 1) + body


def bye(ssrc: int) -> bytes:
    return _COMMON.pack(0x81, _BYE, 1) + ssrc.to_bytes(4, "big")


def sender_report_lsrs(packet: bytes) -> list[tuple[int, int]]:
    """(SSRC, LSR) of each sender report in a compound RTCP packet (LSR: the middle 32 bits of its NTP time)."""
    found = []
    offset = 0
    while offset + 4 <= len(packet):
        _, pt, length = _COMMON.unpack_from(packet, offset)
        end = offset + 4 * (length + 1)
        if end > len(packet):
            break
        if pt == _SR and end - offset >= 16:
            ssrc, msw, lsw = struct.unpack_from("!III", packet, offset + 4)
            found.append((ssrc, ((msw & 0xFFFF) << 16) | (lsw >> 16)))
        offset = end
    return found


class WebrtcRtcp:
    """RTCP for one connection's audio stream; ``direct`` is its ``DirectSender`` (our stream's counters)."""

    def __init__(self, sender: RTCRtpSender, receiver: RTCRtpReceiver, direct: Any,
                 *, log: logging.Logger | logging.LoggerAdapter[Any], interval: float | None = None) -> None:
        self.log = log
        self.interval = INTERVAL_S if interval is None else interval
        self._sender: Any = sender
        self._receiver: Any = receiver
        self._direct = direct
        self._dtls: Any = sender.transport
        self._lsr: dict[int, tuple[int, float]] = {}  # client SSRC -> (LSR, when its SR arrived)
        self._srtp: list[Any] = [None]  # FastSrtp of the receiving session (no per-packet cffi allocation)
        self.sent = 0
        self.received = 0

    def replace_aiortc_loops(self) -> None:
        """Before ``send()``/``receive()`` start them: aiortc's two RTCP loops become :meth:`_run` and an idle
        one (each sets the events aiortc's ``stop()`` waits for)."""
        sender, receiver = self._sender, self._receiver

        async def sender_loop() -> None:
            sender._RTCRtpSender__rtcp_started.set()
            try:
                await self._run()
            finally:
                sender._RTCRtpSender__rtcp_exited.set()

        async def receiver_loop() -> None:
            receiver._RTCRtpReceiver__rtcp_started.set()
            try:
                await asyncio.Event().wait()  # reports about the client's stream go in our SR
            finally:
                receiver._RTCRtpReceiver__rtcp_exited.set()

        sender._run_rtcp = sender_loop
        receiver._run_rtcp = receiver_loop

    async def _run(self) -> None:
        delay = next_interval(self.interval) / 2  # RFC 3550 6.3.2: the first report after half an interval
        try:
            while True:
                await asyncio.sleep(delay)
                delay = next_interval(self.interval)
                report = self.report()
                if report:
                    await self._send(report)
        except asyncio.CancelledError:
            ssrc = self._direct.ssrc  # RFC 3550 6.1: a compound packet starts with a report, BYE comes last
            await self._send(receiver_report(ssrc, []) + sdes_cname(ssrc, self._cname()) + bye(ssrc))
            raise

    def _cname(self) -> bytes:
        cname = getattr(self._sender, "_RTCRtpSender__cname", None) or ""
        return str(cname).encode()[:255]

    def report(self) -> bytes:
        """The compound packet due now: SR (or RR before we sent any audio) + SDES; b"" when nothing to say."""
        now = time.time()
        streams: dict[int, StreamStatistics] = self._receiver._RTCRtpReceiver__remote_streams
        blocks = []
        for ssrc, stream in list(streams.items())[:_MAX_BLOCKS]:
            if stream.max_seq is None:
                continue
            lsr, lsr_time = self._lsr.get(ssrc, (0, None))
            blocks.append(report_block(ssrc, stream, lsr, lsr_time, now))
        direct = self._direct
        ssrc = direct.ssrc
        if direct.sent:
            first = sender_report(ssrc, direct.last_ntp, direct.last_timestamp or 0, direct.sent, direct.octets,
                                  blocks)
        elif blocks:
            first = receiver_report(ssrc, blocks)
        else:
            return b""
        return first + sdes_cname(ssrc, self._cname())

    async def _send(self, packet: bytes) -> None:
        try:
            await self._dtls._send_rtp(packet)  # SRTCP-protected and sent on the nominated pair by aiortc
            self.sent += 1
        except (ConnectionError, OSError, pylibsrtp.Error) as exc:
            self.log.debug("RTCP not sent: %s", exc)

    def on_srtcp(self, data: bytes) -> bool:
        """An SRTCP packet from the client (socket callback); False: not ours to read (aiortc's path)."""
        srtp = fast_srtp(self._srtp, self._dtls._rx_srtp)
        if srtp is None:
            return False
        try:
            plain = srtp.unprotect_rtcp(data)
        except (pylibsrtp.Error, ValueError):
            return True  # replayed or forged: aiortc drops those too
        self.received += 1
        now = time.time()
        for ssrc, lsr in sender_report_lsrs(plain):
            self._lsr[ssrc] = (lsr, now)
        return True
