"""The plain-RTP (SIP side) leg: one UDP socket, symmetric RTP, jitter buffer, RFC 4733.

Media is taken only from the source :class:`RtpSourceGuard` allows (the SDP address, or a NATed far end
that qualified); the per-packet cost is one tuple compare with the guard's locked source.

Everything here runs in ``datagram_received`` or is called synchronously by the relay, so
the hot path has no task switches; the only task is the optional DTMF generator.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import Callable
from typing import Any, cast

from . import fastrelay
from .dtmf import DtmfDetector, DtmfError, DtmfEvent, decode_event, digit_to_event, encode_event
from .jitter import JitterBuffer
from .rtp_packet import RtpPacket, RtpParseError, build_rtp, is_rtcp, parse_rtp, seq_add, ts_add, ts_diff
from .rtp_source import RtpSourceGuard
from .sip_rtcp import ReceiveStats, RtcpSession
from .srtp_session import SrtpSession

Address = tuple[str, int]
AudioSink = Callable[[RtpPacket], None]
DtmfSink = Callable[[str], None]

COMFORT_NOISE_PT = 13
DTMF_VOLUME = 10
_SEQ_TS_SSRC = struct.Struct("!HII")  # from byte 2 of the RTP header
_HEADER = struct.Struct("!BBHII")
_monotonic = time.monotonic


class RtpLeg(asyncio.DatagramProtocol):
    """One plain RTP stream pair. Configure with :meth:`configure` once SDP is negotiated."""

    def __init__(
        self,
        *,
        log: logging.Logger | logging.LoggerAdapter[Any],
        ptime: int = 20,
        jitter_ms: int = 60,
        queue_packets: int = 50,
        source_mode: str = "signalling",
        latch_packets: int = 4,
    ) -> None:
        self.log = log
        self.ptime = ptime
        self.transport: asyncio.DatagramTransport | None = None
        self._lost = asyncio.Event()
        self.on_audio: AudioSink | None = None
        self.on_audio_fast: Callable[[bytes, int], None] | None = None
        """Takes in-order audio as (whole datagram with a plain 12-byte header, RTP timestamp) instead of
        ``on_audio``: no RtpPacket, no jitter buffer work (the relay in passthrough). Everything else (events,
        reordering, CSRC/extension/padding) still goes to ``on_audio``. Used only while ``on_audio`` is the sink
        it was set with (set_audio_sinks): whoever replaces ``on_audio`` gets every packet."""
        self._fast_pairs_with: AudioSink | None = None
        self.on_dtmf: DtmfSink | None = None
        """Called once per key press with the digit."""
        self.on_dtmf_event: Callable[[DtmfEvent, bool], None] | None = None
        """Called for every telephone-event packet (event, starts a new key press)."""
        self.hold = False
        """When True nothing is sent (the SIP side is held)."""

        self.payload_type: int | None = None
        self.telephone_event_pt: int | None = None
        self.clock_rate = 8000
        self.guard = RtpSourceGuard(log, mode=source_mode, latch_packets=latch_packets)
        self._jitter = JitterBuffer(max(1, jitter_ms // ptime), queue_packets)
        self._dtmf_in = DtmfDetector()

        # outgoing stream state (RFC 3550 5.1: random initial values)
        self.ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._last_send: float | None = None
        self._marker = True
        self._pending_samples = 0
        self._ts_offset: int | None = None
        self._dtmf_out_ts: int | None = None
        self._dtmf_active = False
        self._dtmf_tasks: set[asyncio.Task[None]] = set()

        # counters (read by stats())
        self.packets_in = 0
        self.packets_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.interarrival_jitter = 0.0
        """RFC 3550 6.4.1 estimate for the incoming audio stream, in seconds."""
        self._arrival: float | None = None  # of the previous audio packet (monotonic s)
        self._arrival_ts = 0  # its RTP timestamp
        self.malformed = 0
        self.foreign = 0
        self.rtcp_in = 0
        self.dropped = 0
        self._malformed_logged = False
        self.srtp: SrtpSession | None = None
        """SDES-SRTP contexts (set_srtp) when the SIP leg is encrypted: applied at the one receive and the one
        send point below, so RTP, RFC 4733 events and RTCP are all protected."""
        # RTCP (sip_rtcp.py): the far end's stream statistics, its RTCP address from the SDP, the session
        self.receive_stats = ReceiveStats()
        self._sdp_remote: Address | None = None
        self._sdp_rtcp: Address | None = None
        self.rtcp: RtcpSession | None = None
        fastrelay.bind(self, "datagram_received", "rtp_receive")  # its compiled twin, when built

    # -- setup ------------------------------------------------------------------------------
    def configure(
        self,
        *,
        payload_type: int,
        clock_rate: int,
        telephone_event_pt: int | None,
        remote: Address | None,
        rtcp: Address | None = None,
    ) -> None:
        """`rtcp`: the far end's RTCP address from its a=rtcp (None: RTP port + 1)."""
        self._sdp_remote, self._sdp_rtcp = remote, rtcp
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.telephone_event_pt = telephone_event_pt
        pts = (payload_type,) if telephone_event_pt is None else (payload_type, telephone_event_pt)
        target = self.guard.target
        self.guard.configure(remote, pts)
        if self.guard.target != target:
            self._jitter.reset()  # new far end (first answer or re-INVITE): its stream starts afresh

    def set_audio_sinks(self, sink: AudioSink | None, fast: Callable[[bytes, int], None] | None) -> None:
        """``on_audio`` and its fast variant (see on_audio_fast)."""
        self.on_audio = self._fast_pairs_with = sink
        self.on_audio_fast = fast

    def set_srtp(self, keys: tuple[str, bytes, bytes] | None) -> None:
        """(suite, our key, the peer's key) as negotiated, or None for plain RTP. Unchanged keys keep the
        contexts (ROC and replay window survive re-INVITEs); a changed key replaces that direction's."""
        if keys is None:
            self.srtp = None
        elif self.srtp is None:
            self.srtp = SrtpSession(*keys)
        elif self.srtp.update(*keys):
            self.log.info("SRTP re-keyed (%s)", keys[0])

    def set_signalling_peer(self, ip: str | None) -> None:
        """The IP the SIP signalling came from: a NATed far end may send its RTP from there."""
        self.guard.set_signalling_peer(ip)

    @property
    def remote(self) -> Address | None:
        """Where we send: the locked source, else what the SDP said."""
        return self.guard.target

    def leave_far_end(self) -> None:
        """The far end is being replaced by another (a transfer): its address is never latched onto again."""
        if self.guard.target is not None:
            self.guard.forbid(self.guard.target)

    @property
    def latched(self) -> bool:
        return self.guard.latched

    @property
    def refused(self) -> int:
        """Datagrams refused because of where they came from (RTP and RTCP)."""
        return self.guard.refused

    @property
    def local_address(self) -> Address | None:
        if self.transport is None:
            return None
        sockname = self.transport.get_extra_info("sockname")
        return (sockname[0], sockname[1]) if sockname else None

    # -- asyncio protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a cast, not an isinstance check: CPython 3.11's selector datagram transport does not
        # subclass asyncio.DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._lost.set()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the far end may not be up yet
        self.log.debug("RTP socket error: %s", exc)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if addr != self.guard.source and not self._admit(data, addr):
            return  # not from the far end the SDP / signalling names: counted (and logged once) by the guard
        if self.srtp is not None:
            clear = self.srtp.unprotect_rtcp(data) if is_rtcp(data) else self.srtp.unprotect(data)
            if clear is None:
                return  # forged, replayed or not SRTP at all: counted by the session
            data = clear
        # fast path: a plain-header packet of the audio codec, next in sequence, nothing held in the jitter buffer
        # (the steady state): the same bookkeeping as below, inline (PT < 72, so never RTCP)
        fast = self.on_audio_fast
        if fast is not None and self.on_audio is self._fast_pairs_with and data[0] == 0x80 \
                and (data[1] & 0x7F) == self.payload_type and len(data) > 12:
            seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(data, 2)
            if self._jitter.take_in_order(seq):
                self.packets_in += 1
                self.bytes_in += len(data)
                now = _monotonic()
                arrival = self._arrival
                if arrival is not None:  # _update_jitter
                    d = (now - arrival) - ((((ts - self._arrival_ts) + 0x80000000) & 0xFFFFFFFF) - 0x80000000) \
                        / self.clock_rate
                    if d < 0:
                        d = -d
                    if d < 5.0:
                        self.interarrival_jitter += (d - self.interarrival_jitter) / 16
                self._arrival = now
                self._arrival_ts = ts
                stats = self.receive_stats
                if ssrc == stats.ssrc and 0 < seq - stats.max_seq < 3000:  # ReceiveStats.update, no wrap
                    stats.max_seq = seq
                    stats.received += 1
                else:
                    stats.update(ssrc, seq)
                try:
                    fast(data, ts)
                except Exception:
                    self.log.exception("RTP audio sink failed")
                return
        if is_rtcp(data):
            self.rtcp_in += 1  # RTCP is not relayed: read for statistics (mostly it comes to port + 1)
            if self.rtcp is not None:
                self.rtcp.on_rtcp(data)
            return
        try:
            packet = parse_rtp(data)
        except RtpParseError as exc:
            self.malformed += 1
            if not self._malformed_logged:
                self._malformed_logged = True
                self.log.info("dropping malformed RTP from %s:%s (%s); further ones only counted", *addr, exc)
            return
        pt = packet.payload_type
        if pt != self.payload_type and pt != self.telephone_event_pt:
            if pt != COMFORT_NOISE_PT:
                self.foreign += 1
            return
        if pt == self.telephone_event_pt:
            self._handle_dtmf(packet)
            return
        self.packets_in += 1
        self.bytes_in += len(data)
        self._update_jitter(packet.timestamp)
        self.receive_stats.update(packet.ssrc, packet.sequence)
        for ready in self._jitter.push(packet):
            if self.on_audio is not None:
                try:
                    self.on_audio(ready)
                except Exception:
                    self.log.exception("RTP audio sink failed")

    def _sink_failed(self, exc: BaseException) -> None:
        """The compiled twin's ``except``: the sink raised (the packet is not retried)."""
        self.log.error("RTP audio sink failed", exc_info=exc)

    def _admit(self, data: bytes, addr: Address) -> bool:
        """Slow path: a datagram from anywhere but the locked source."""
        if not self.guard.admit(data, addr):
            return False
        if self.guard.source == addr:
            self._jitter.reset()  # a newly locked source: its sequence numbers are not the old stream's
        return True

    def _update_jitter(self, timestamp: int) -> None:
        """RFC 3550 A.8: J += (|D| - J) / 16, D the change in transit time between consecutive packets."""
        now = time.monotonic()
        if self._arrival is not None:
            d = abs((now - self._arrival) - ts_diff(timestamp, self._arrival_ts) / self.clock_rate)
            if d < 5.0:  # larger: a new stream or a timestamp jump, not jitter
                self.interarrival_jitter += (d - self.interarrival_jitter) / 16
        self._arrival = now
        self._arrival_ts = timestamp

    def _handle_dtmf(self, packet: RtpPacket) -> None:
        try:
            event = decode_event(packet.payload)
        except DtmfError:
            self.malformed += 1
            return
        new = self._dtmf_in.feed(packet.timestamp, event)
        try:
            if new and event.digit and self.on_dtmf is not None:
                self.on_dtmf(event.digit)
            if self.on_dtmf_event is not None:
                self.on_dtmf_event(event, new)
        except Exception:
            self.log.exception("DTMF sink failed")

    # -- RTCP (sip_rtcp.py) ----------------------------------------------------------------------
    async def open_rtcp(self, host: str, port: int, interval_s: float) -> None:
        """Bind the RTCP socket (RTP port + 1) and start reports; without that port, send from the RTP one."""
        if interval_s <= 0 or self.rtcp is not None:
            return
        session = RtcpSession(self, log=self.log, interval_s=interval_s,
                              allowed_ip=lambda: self.guard.target[0] if self.guard.target else None)
        try:
            await asyncio.get_running_loop().create_datagram_endpoint(lambda: session, local_addr=(host, port))
        except OSError as exc:
            self.log.info("RTCP port %s unavailable (%s): sending RTCP from the RTP port", port, exc)
            session.fallback_send = self._send_raw
        self.rtcp = session
        session.start()

    def _send_raw(self, data: bytes, addr: Address) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def rtp_timestamp_now(self) -> int | None:
        """Our RTP clock now (for a sender report), None before the first packet."""
        if self._last_send is None:
            return None
        return ts_add(self._ts, int((time.monotonic() - self._last_send) * self.clock_rate))

    def rtcp_destination(self) -> Address | None:
        """The far end's RTCP address: its a=rtcp, else RTP port + 1 of where we send RTP; None without one
        (the RTP source guard decides who that is: nothing goes to a source that has not qualified)."""
        target = self.guard.target
        if target is None:
            return None
        if self._sdp_rtcp is not None and target == self._sdp_remote:
            return self._sdp_rtcp
        return target[0], target[1] + 1

    # -- sending ------------------------------------------------------------------------------
    def _sendto(self, data: bytes) -> bool:
        """Send one packet; False when it was not sent (held, no far end). The caller advances the
        sequence number only for packets sent, so a hold leaves no gap in it (RFC 3550 5.1)."""
        remote = self.remote
        if self.transport is None or remote is None or self.hold:
            self.dropped += 1
            return False
        if self.srtp is not None:
            data = self.srtp.protect(data)
        self.transport.sendto(data, remote)
        self.packets_out += 1
        self.bytes_out += len(data)
        return True

    def protect_rtcp(self, data: bytes) -> bytes:
        """RTCP as it goes on the wire: SRTCP when the leg is encrypted (sip_rtcp.RtcpSession sends it)."""
        return self.srtp.protect_rtcp(data) if self.srtp is not None else data

    def unprotect_rtcp(self, data: bytes) -> bytes | None:
        """RTCP from the RTCP socket in clear; None when it fails SRTCP authentication or replay checks."""
        return self.srtp.unprotect_rtcp(data) if self.srtp is not None else data

    def send_audio(self, payload: bytes, source_ts: int | None = None, samples: int | None = None) -> None:
        """Send one audio payload.

        ``source_ts`` is the payload's timestamp on the sender's 8 kHz clock (the Matrix
        stream's RTP timestamp in passthrough, the decoded frame's pts when transcoding). Our
        timestamp then moves with it (offset fixed per talk, rebased after DTMF or a source
        jump), so arrival jitter cannot make our clock drift; a payload older than the last
        one sent is dropped as late. Without it the wall clock stands in for the source clock.
        ``samples`` defaults to ``len(payload)``: right for PCMU/PCMA (1 byte per sample) and
        G.722 (1 byte per 8 kHz RTP clock tick).
        """
        offset = self._ts_offset
        if source_ts is not None and offset is not None and samples is None and self.clock_rate == 8000:
            # fast path: G.711/G.722 in step with the source clock (the next packet exactly): as below
            pending = self._pending_samples
            ts = (source_ts + offset) & 0xFFFFFFFF
            if ts == (self._ts + pending) & 0xFFFFFFFF and pending > 0 and self._last_send is not None \
                    and not self._dtmf_active and self.payload_type is not None:
                self._ts = ts
                self._pending_samples = len(payload)
                self._last_send = _monotonic()
                marker = self._marker
                self._marker = False
                transport, remote = self.transport, self.guard.target
                if transport is None or remote is None or self.hold:
                    self.dropped += 1
                    return
                data = _HEADER.pack(0x80, 0x80 | self.payload_type if marker else self.payload_type, self._seq, ts,
                                    self.ssrc) + payload
                if self.srtp is not None:
                    data = self.srtp.protect(data)
                transport.sendto(data, remote)
                self.packets_out += 1
                self.bytes_out += len(data)
                self._seq = (self._seq + 1) & 0xFFFF
                return
        if self.payload_type is None or self._dtmf_active:
            self.dropped += 1  # not negotiated yet, or a DTMF event owns the stream
            return
        expected = ts_add(self._ts, self._pending_samples) if self._last_send is not None else self._ts
        now = time.monotonic()
        limit = 5 * self.clock_rate  # 5 s: beyond that the source restarted, not a gap
        if source_ts is not None:
            ts = (source_ts + self._ts_offset) & 0xFFFFFFFF if self._ts_offset is not None else expected
            jump = ts_diff(ts, expected)
            if self._ts_offset is None or jump > limit or ts_diff(ts, self._ts) < -limit:
                self._ts_offset = (expected - source_ts) & 0xFFFFFFFF
                ts, jump = expected, 0
            elif self._last_send is not None and ts_diff(ts, self._ts) <= 0:
                self.dropped += 1  # late or duplicate: its slot has been sent already
                return
            gap = jump * 1000 / self.clock_rate
        else:
            gap = (now - self._last_send) * 1000 - self.ptime if self._last_send is not None else 0.0
            ts = expected
            if gap > 2 * self.ptime:  # wall-clock silence: move the timestamp on (RFC 3550 5.1)
                ts = ts_add(expected, round(gap / self.ptime) * self.clock_rate * self.ptime // 1000)
        # the marker starts a talkspurt: first packet, after DTMF, after a silence (RFC 3551 4.1)
        marker = self._marker or gap > 2 * self.ptime
        self._ts = ts
        if samples is None:  # G.711/G.722: one byte per 8 kHz tick; otherwise (Opus) one ptime of the clock
            samples = len(payload) if self.clock_rate == 8000 else self.clock_rate * self.ptime // 1000
        self._pending_samples = samples
        self._last_send = now
        self._marker = False
        if self._sendto(build_rtp(self.payload_type, marker, self._seq, ts, self.ssrc, payload)):
            self._seq = seq_add(self._seq, 1)

    def relay_dtmf(self, event: DtmfEvent, new: bool) -> None:
        """Forward one telephone-event packet (duration in this leg's 8 kHz clock).

        ``new`` marks the first packet of a key press: it gets the marker bit and a fresh
        event timestamp; updates and the end packets reuse that timestamp (RFC 4733 2.5).
        """
        if self.telephone_event_pt is None:
            self.dropped += 1
            return
        if new or self._dtmf_out_ts is None:
            if self._last_send is not None:
                self._ts = ts_add(self._ts, self._pending_samples)
                self._pending_samples = 0
            self._dtmf_out_ts = self._ts
            self._dtmf_active = True
            marker = True
        else:
            marker = False
        payload = encode_event(event.event, end=event.end, volume=event.volume, duration=event.duration)
        if self._sendto(build_rtp(self.telephone_event_pt, marker, self._seq, self._dtmf_out_ts, self.ssrc, payload)):
            self._seq = seq_add(self._seq, 1)
        if event.end and self._dtmf_active:
            # audio resumes after the event (the end retransmits keep the event timestamp)
            self._dtmf_active = False
            self._ts = ts_add(self._dtmf_out_ts, event.duration)
            self._pending_samples = 0
            self._last_send = time.monotonic()
            self._marker = True
            self._ts_offset = None  # our clock moved on its own: rebase on the next audio

    def send_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        """Generate one RFC 4733 key press (updates every ptime, end packet sent 3 times)."""
        event = digit_to_event(digit)
        task = asyncio.get_running_loop().create_task(self._dtmf_press(event, duration_ms))
        self._dtmf_tasks.add(task)
        task.add_done_callback(self._dtmf_tasks.discard)

    async def _dtmf_press(self, event: int, duration_ms: int) -> None:
        step = self.clock_rate * self.ptime // 1000
        total = max(step, self.clock_rate * duration_ms // 1000)
        duration = step
        first = True
        while duration < total:
            self.relay_dtmf(DtmfEvent(event, False, DTMF_VOLUME, duration), first)
            first = False
            await asyncio.sleep(self.ptime / 1000)
            duration += step
        for _ in range(3):
            self.relay_dtmf(DtmfEvent(event, True, DTMF_VOLUME, total), first)
            first = False

    # -- teardown -----------------------------------------------------------------------------
    async def close(self) -> None:
        for task in list(self._dtmf_tasks):
            task.cancel()
        if self._dtmf_tasks:
            await asyncio.gather(*self._dtmf_tasks, return_exceptions=True)
        if self.rtcp is not None:
            await self.rtcp.close()  # its BYE may leave through the RTP socket: close that after
        if self.transport is not None:
            # the socket is only closed on a later loop iteration: wait so the port is really free
            self.transport.close()
            await self._lost.wait()

    @property
    def jitter(self) -> JitterBuffer:
        return self._jitter
