"""Joins the RTP leg and the WebRTC leg of one call.

Passthrough (same G.711/G.722 codec on both legs): SIP payloads go out on the WebRTC leg as they are, and
Matrix payloads are taken from the RTP tap straight to the RTP leg; nothing is decoded. Otherwise both directions
are transcoded inline (inline_codec.py): SIP payload -> PCM -> Opus -> WebRTC leg, and Matrix payload (from the
tap, through a jitter buffer) -> PCM -> SIP codec -> RTP leg.

With the fast path (webrtc_fastpath.py) every step runs synchronously in a datagram callback: no task, queue or
thread per packet. Without it (another aiortc) the relay falls back to aiortc's track and decoder.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from . import fastrelay, webrtc_leg
from .codecs import SipDecoder, SipEncoder, WebRtcEncoder, encoded_packet
from .dtmf import DtmfDetector, DtmfError, DtmfEvent, decode_event, encode_event
from .inline_codec import OPUS_CLOCK, Transcoder, make_transcoder
from .jitter import JitterBuffer
from .rtcp_feed import ReceiverReportFeed
from .rtp_leg import RtpLeg
from .rtp_packet import RtpPacket, RtpParseError, parse_rtp
from .webrtc_leg import WebRtcLeg

DtmfCallback = Callable[[str, str], None]
_SEQ_TS_SSRC = struct.Struct("!HII")  # from byte 2 of the RTP header


@dataclass(frozen=True)
class RelayPlan:
    sip_codec: str
    webrtc_codec: str
    webrtc_pt: int
    telephone_event_pt: int | None
    telephone_event_clock: int
    passthrough: bool
    sip_fmtp: str | None = None  # the phone's a=fmtp (the Opus encoder follows it when transcoding)


class Relay:
    def __init__(self, rtp: RtpLeg, webrtc: WebRtcLeg, *, log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.log = log
        self.rtp = rtp
        self.webrtc = webrtc
        self.plan: RelayPlan | None = None
        self.on_dtmf: DtmfCallback | None = None
        self.early_sink: Callable[[RtpPacket], None] | None = None
        """Gets the SIP leg's audio before the relay runs (early media being recorded)."""
        self.hold = False
        self.running = False
        self.webrtc_frames_in = 0
        self.webrtc_frames_out = 0
        self.dropped = 0
        self.dtmf_digits: list[tuple[str, str]] = []
        self._decoder: SipDecoder | None = None
        self._webrtc_encoder: WebRtcEncoder | None = None
        self._encoder: SipEncoder | None = None
        self._pump: asyncio.Task[None] | None = None
        self._ts_base: int | None = None
        self._transcoder: Transcoder | None = None
        """Inline transcoding (fast path only): both directions, synchronously."""
        self._webrtc_jitter = JitterBuffer(3, 50)
        self._webrtc_ts_base: int | None = None
        self._rr_feed: ReceiverReportFeed | None = None
        self._dtmf_in = DtmfDetector()
        # compiled twins of the two per-packet steady states, when built (fastrelay.py)
        fastrelay.bind(self, "_from_sip_fast", "relay_from_sip")
        fastrelay.bind(self, "_from_webrtc_rtp", "relay_from_webrtc")
        rtp.set_audio_sinks(self._from_sip, self._from_sip_fast)
        rtp.on_dtmf = self._sip_dtmf
        rtp.on_dtmf_event = self._sip_dtmf_event
        self._dtmf_out_ts = 0
        webrtc.set_rtp_tap(self._from_webrtc_rtp)

    def configure(self, plan: RelayPlan) -> None:
        self.plan = plan
        self._decoder = self._encoder = self._webrtc_encoder = self._transcoder = None
        self._webrtc_jitter.reset()
        self._webrtc_ts_base = None
        if not plan.passthrough and self.webrtc.direct is not None:
            self._transcoder = make_transcoder(plan.webrtc_codec, plan.webrtc_pt, plan.sip_codec, self.rtp.ptime,
                                               sip_fmtp=plan.sip_fmtp)
        elif not plan.passthrough:  # without the fast path: aiortc's track and decoder thread
            self._decoder = SipDecoder(plan.sip_codec)
            self._encoder = SipEncoder(plan.sip_codec, plan.sip_fmtp)
            if webrtc_leg.AIORTC_INTERNALS_OK:
                self._webrtc_encoder = WebRtcEncoder(plan.webrtc_codec, plan.webrtc_pt)
        # the tap bypasses aiortc's receiver, which would then send no RTCP RR (rtcp_feed.py)
        tapped = plan.passthrough or self._transcoder is not None
        clock = OPUS_CLOCK if plan.webrtc_codec.lower() == "opus" else 8000
        self._rr_feed = self.webrtc.receiver_report_feed(clock) if tapped else None
        self.log.info(
            "media plan: SIP %s <-> WebRTC %s (%s), telephone-event %s",
            plan.sip_codec,
            plan.webrtc_codec,
            "passthrough" if plan.passthrough else "transcoding",
            plan.telephone_event_pt,
        )
        if self.running:
            self._ensure_pump()

    def start(self) -> None:
        if self.running:
            return
        self.running = True
        self._ensure_pump()

    def _ensure_pump(self) -> None:
        if self.plan is None or self.plan.passthrough or self._transcoder is not None or self._pump is not None:
            return
        self._pump = asyncio.get_running_loop().create_task(self._pump_webrtc_to_sip())

    # -- SIP -> Matrix ------------------------------------------------------------------------
    def _from_sip_fast(self, data: bytes, timestamp: int) -> None:
        """In-order audio from the RTP leg (plain 12-byte header): passthrough on the fast path sends the payload
        as is; anything else takes the full path."""
        direct = self.webrtc.direct
        plan = self.plan
        if direct is None or plan is None or not plan.passthrough or not self.running or self.hold \
                or self._decoder is not None:
            self._from_sip(parse_rtp(data))
            return
        base = self._ts_base
        if base is None:
            self._ts_base = base = timestamp
        direct.send(plan.webrtc_pt, data[12:], (timestamp - base) & 0xFFFFFFFF, direct.last_seq is None)
        self.webrtc_frames_out += 1  # handed to the WebRTC leg (which drops it while Matrix holds)

    def _from_sip(self, packet: RtpPacket) -> None:
        if not self.running or self.hold or self.plan is None:
            if self.early_sink is not None and not self.running:
                self.early_sink(packet)
                return
            self.dropped += 1
            return
        if self._ts_base is None:
            self._ts_base = packet.timestamp
        pts = (packet.timestamp - self._ts_base) & 0xFFFFFFFF
        direct = self.webrtc.direct
        transcoder = self._transcoder
        if transcoder is not None and direct is not None:
            pt = self.plan.webrtc_pt
            try:
                for payload, timestamp in transcoder.to_webrtc(packet.payload, pts):
                    direct.send(pt, payload, timestamp, direct.last_seq is None)
                    self.webrtc_frames_out += 1
            except Exception as exc:  # a corrupt payload must not stop the stream
                self.dropped += 1
                self.log.debug("cannot transcode SIP payload: %s", exc)
            return
        if self._decoder is None:
            if direct is not None:
                direct.send(self.plan.webrtc_pt, packet.payload, pts, direct.last_seq is None)
                self.webrtc_frames_out += 1  # handed to the WebRTC leg (which drops it while Matrix holds)
                return
            self.webrtc.outgoing.push(encoded_packet(packet.payload, pts, self.rtp.clock_rate))
            self.webrtc_frames_out += 1
            return
        try:
            frames = self._decoder.decode(packet.payload, pts)
        except Exception as exc:  # a corrupt payload must not stop the stream
            self.dropped += 1
            self.log.debug("cannot decode SIP payload: %s", exc)
            return
        track = self.webrtc.outgoing
        encoder = self._webrtc_encoder
        for frame in frames:
            if encoder is None:
                track.push(frame)  # aiortc encodes
                self.webrtc_frames_out += 1
                continue
            for encoded in encoder.encode(frame):
                track.push(encoded)
                self.webrtc_frames_out += 1

    def _sip_dtmf(self, digit: str) -> None:
        self._report_dtmf(digit, "sip")

    def _sip_dtmf_event(self, event: DtmfEvent, new: bool) -> None:
        """Forward the phone's RFC 4733 packets into the WebRTC stream (browsers play them as tones)."""
        plan, injector = self.plan, self.webrtc.injector
        if plan is None or plan.telephone_event_pt is None or injector is None or not self.running or self.hold:
            return
        clock = plan.telephone_event_clock
        if new or injector.last_timestamp is None:
            # the event starts where the next audio packet would: same clock as the WebRTC codec
            self._dtmf_out_ts = ((injector.last_timestamp or 0) + clock // 50) & 0xFFFFFFFF
        duration = event.duration * clock // self.rtp.clock_rate  # the SIP leg's event clock is its codec's
        payload = encode_event(event.event, end=event.end, volume=event.volume, duration=duration)
        injector.inject(plan.telephone_event_pt, new, self._dtmf_out_ts, payload)

    # -- Matrix -> SIP ------------------------------------------------------------------------
    def _from_webrtc_rtp(self, data: bytes) -> bool:
        """RTP tap (see webrtc_leg): consume telephone-event always, audio in passthrough."""
        plan = self.plan
        if plan is None:
            return False
        b0 = data[0]
        if plan.passthrough and (data[1] & 0x7F) == plan.webrtc_pt and b0 & 0xEF == 0x80 and len(data) > 12:
            # fast path: passthrough audio without CSRC or padding (Element's: mid / abs-send-time / audio level
            # extension), as below without an RtpPacket
            seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(data, 2)
            offset = 12
            if b0 & 0x10:
                offset = 16 + 4 * ((data[14] << 8) | data[15]) if len(data) >= 16 else len(data) + 1
            if offset <= len(data):
                if self._rr_feed is not None:
                    self._rr_feed.feed(ssrc, seq, ts)
                if self.running and not self.hold:
                    self.rtp.send_audio(data[offset:], source_ts=ts)  # same codec, same clock
                    self.webrtc_frames_in += 1
                else:
                    self.dropped += 1
                return True
        try:
            packet = parse_rtp(data)
        except RtpParseError:
            return False
        pt = packet.payload_type
        if pt == plan.telephone_event_pt:
            self._webrtc_dtmf(packet, plan)
            return True
        if plan.passthrough and pt == plan.webrtc_pt:
            if self._rr_feed is not None:
                self._rr_feed.feed(packet.ssrc, packet.sequence, packet.timestamp)
            if self.running and not self.hold:
                self.rtp.send_audio(packet.payload, source_ts=packet.timestamp)  # same codec, same clock
                self.webrtc_frames_in += 1
            else:
                self.dropped += 1
            return True
        if pt == plan.webrtc_pt and self._transcoder is not None:
            if self._rr_feed is not None:
                self._rr_feed.feed(packet.ssrc, packet.sequence, packet.timestamp)
            if self.running and not self.hold:
                for ready in self._webrtc_jitter.push(packet):
                    self._transcode_to_sip(ready)
            else:
                self.dropped += 1
            return True
        return False

    def _transcode_to_sip(self, packet: RtpPacket) -> None:
        """Inline transcoding, Matrix -> SIP: WebRTC payload -> PCM -> SIP codec -> RTP leg."""
        if self._webrtc_ts_base is None:
            self._webrtc_ts_base = packet.timestamp
        pts = (packet.timestamp - self._webrtc_ts_base) & 0xFFFFFFFF
        transcoder = self._transcoder
        if transcoder is None:
            return
        try:
            self.webrtc_frames_in += 1
            for payload, timestamp in transcoder.to_sip(packet.payload, pts):
                self.rtp.send_audio(payload, source_ts=timestamp)
        except Exception as exc:  # a corrupt payload must not stop the stream
            self.dropped += 1
            self.log.debug("cannot transcode WebRTC payload: %s", exc)

    def _webrtc_dtmf(self, packet: RtpPacket, plan: RelayPlan) -> None:
        try:
            event = decode_event(packet.payload)
        except DtmfError:
            return
        new = self._dtmf_in.feed(packet.timestamp, event)
        if new and event.digit:
            self._report_dtmf(event.digit, "matrix")
        sip_clock = self.rtp.clock_rate
        if plan.telephone_event_clock != sip_clock:  # e.g. telephone-event/48000 next to Opus, G.711 to the phone
            event = DtmfEvent(event.event, event.end, event.volume,
                              event.duration * sip_clock // plan.telephone_event_clock)
        if self.running and not self.hold:
            self.rtp.relay_dtmf(event, new)

    async def _pump_webrtc_to_sip(self) -> None:
        """Transcoding: decoded frames from aiortc -> SIP codec -> RTP."""
        try:
            await self.webrtc.remote_track_ready.wait()
            track = self.webrtc.remote_track
            assert track is not None
            while True:
                frame = await track.recv()
                encoder = self._encoder
                if encoder is None or self.hold or not isinstance(frame, AudioFrame):
                    continue
                self.webrtc_frames_in += 1
                payloads, timestamp = encoder.encode(frame)
                clock = self.rtp.clock_rate
                for payload in payloads:
                    self.rtp.send_audio(payload, source_ts=timestamp)
                    if timestamp is not None:
                        # G.711/G.722: one byte per 8 kHz tick; Opus: 20 ms packets
                        timestamp += len(payload) if clock == 8000 else clock // 50
        except MediaStreamError:
            self.log.debug("WebRTC track ended")

    def _report_dtmf(self, digit: str, direction: str) -> None:
        self.dtmf_digits.append((digit, direction))
        self.log.info("DTMF %s from %s", digit, direction)
        if self.on_dtmf is not None:
            try:
                self.on_dtmf(digit, direction)
            except Exception:
                self.log.exception("DTMF callback failed")

    async def close(self) -> None:
        self.running = False
        self.webrtc.set_rtp_tap(None)
        self.rtp.set_audio_sinks(None, None)
        self.rtp.on_dtmf = None
        self.rtp.on_dtmf_event = None
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None
