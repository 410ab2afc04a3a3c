"""Transcoding between the WebRTC codec and the SIP codec inline, on the event loop: no executor, no thread.

aiortc encodes in the default thread pool and decodes on a thread per receiver, and its Opus encoder resamples
every 8 kHz frame to 48 kHz stereo first (~450 us per 20 ms frame). :class:`OpusG711Transcoder` (the common case,
Opus from Element <-> PCMU/PCMA to the trunk) uses libopus at 8 kHz mono both ways through ctypes (libopus.py) and
G.711 tables (g711.py): no PyAV object, no resampler, no thread; ~150 us of CPU per 20 ms of audio both ways.
Other pairs (G.722 on the SIP leg, or no system libopus) use :class:`AvTranscoder`: PyAV codec contexts called
inline; PyAV runs every audio encoder's input through a filter graph, which starts one thread per core.
"""

from __future__ import annotations

import fractions
from typing import Any

from aiortc.codecs import get_decoder, get_encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import AudioFrame, AudioResampler, CodecContext, Packet

from . import g711, libopus
from .codecs import SipDecoder, SipEncoder, aiortc_parameters

OPUS_CLOCK = 48000
OPUS_TIME_BASE = fractions.Fraction(1, OPUS_CLOCK)


def _single_thread(context: Any) -> None:
    """No codec thread pool (FFmpeg's default is one thread per core for codecs that support threading)."""
    context.thread_count = 1


class OpusPacketEncoder:
    """PCM frames (mono s16 at 8/12/16/24/48 kHz) -> (Opus payload, timestamp on the 48 kHz RTP clock)."""

    def __init__(self, bitrate: int = 32000) -> None:
        self._bitrate = bitrate
        self._context: Any = None
        self._rate = 0
        self._scale = 1
        self._frame_size = 0
        self._rechunk: AudioResampler | None = None
        self._first_pts: int | None = None

    def _open(self, rate: int) -> None:
        context = CodecContext.create("libopus", "w")
        context.format = "s16"
        context.layout = "mono"
        context.sample_rate = rate
        context.bit_rate = self._bitrate
        context.time_base = fractions.Fraction(1, rate)
        context.options = {"application": "voip"}
        _single_thread(context)
        self._context = context
        self._rate = rate
        self._scale = OPUS_CLOCK // rate
        self._frame_size = rate // 50  # 20 ms
        self._rechunk = None
        self._first_pts = None

    def encode(self, frame: AudioFrame) -> list[tuple[bytes, int]]:
        rate = frame.sample_rate
        if self._context is None or rate != self._rate:
            if rate not in (8000, 12000, 16000, 24000, 48000):
                raise ValueError(f"Opus cannot take {rate} Hz")
            self._open(rate)
        frames: list[AudioFrame] = [frame]
        if self._rechunk is not None or frame.samples != self._frame_size or frame.layout.name != "mono":
            # another ptime than 20 ms (or stereo): cut into 20 ms mono frames (sticky, to keep the sample order)
            if self._rechunk is None:
                self._rechunk = AudioResampler(format="s16", layout="mono", rate=rate, frame_size=self._frame_size)
            frames = self._rechunk.resample(frame)
        out: list[tuple[bytes, int]] = []
        for item in frames:
            for packet in self._context.encode(item):
                pts = packet.pts if packet.pts is not None else 0
                if self._first_pts is None:
                    self._first_pts = pts  # libopus starts at minus its look-ahead
                out.append((bytes(packet), (pts - self._first_pts) * self._scale))
        return out


class OpusPacketDecoder:
    """Opus payloads -> mono s16 48 kHz frames (pts on the 48 kHz clock)."""

    def __init__(self) -> None:
        context: Any = CodecContext.create("libopus", "r")
        context.format = "s16"
        context.layout = "mono"
        context.sample_rate = OPUS_CLOCK
        _single_thread(context)
        self._context = context

    def decode(self, payload: bytes, timestamp: int) -> list[AudioFrame]:
        packet = Packet(payload)
        packet.pts = timestamp
        packet.time_base = OPUS_TIME_BASE
        return [f for f in self._context.decode(packet) if isinstance(f, AudioFrame)]


class AiortcPacketDecoder:
    """G.711 / G.722 payloads -> frames, with aiortc's decoder called inline (no decoder thread)."""

    def __init__(self, params: RTCRtpCodecParameters) -> None:
        decoder: Any = get_decoder(params)
        _single_thread(decoder.codec)
        self._decoder = decoder

    def decode(self, payload: bytes, timestamp: int) -> list[AudioFrame]:
        frames = self._decoder.decode(JitterFrame(data=payload, timestamp=timestamp))
        return [f for f in frames if isinstance(f, AudioFrame)]


class AiortcPacketEncoder:
    """Frames -> (payload, RTP timestamp) with aiortc's encoder called inline (no executor)."""

    def __init__(self, params: RTCRtpCodecParameters) -> None:
        encoder: Any = get_encoder(params)
        _single_thread(encoder.codec)
        self._encoder = encoder
        self._step = params.clockRate // 50

    def encode(self, frame: AudioFrame) -> list[tuple[bytes, int]]:
        payloads, timestamp = self._encoder.encode(frame)
        if timestamp is None:
            return []
        return [(payload, timestamp + index * self._step) for index, payload in enumerate(payloads)]


def webrtc_params(name: str, payload_type: int) -> RTCRtpCodecParameters:
    if name.lower() == "opus":
        return RTCRtpCodecParameters(mimeType="audio/opus", clockRate=OPUS_CLOCK, channels=2, payloadType=payload_type)
    return aiortc_parameters(name, payload_type)


def packet_encoder(name: str, payload_type: int) -> OpusPacketEncoder | AiortcPacketEncoder:
    """Encoder for the WebRTC leg's codec (SIP -> Matrix)."""
    return OpusPacketEncoder() if name.lower() == "opus" else AiortcPacketEncoder(webrtc_params(name, payload_type))


def packet_decoder(name: str, payload_type: int) -> OpusPacketDecoder | AiortcPacketDecoder:
    """Decoder for the WebRTC leg's codec (Matrix -> SIP)."""
    return OpusPacketDecoder() if name.lower() == "opus" else AiortcPacketDecoder(webrtc_params(name, payload_type))


class OpusG711Transcoder:
    """Opus (WebRTC, 48 kHz RTP clock) <-> PCMU/PCMA (SIP, 8 kHz), all at 8 kHz mono: libopus + G.711 tables."""

    webrtc_clock = OPUS_CLOCK

    def __init__(self, sip_codec: str, ptime_ms: int = 20) -> None:
        self._sip = sip_codec.upper()
        self._encoder = libopus.Encoder(8000)
        self._decoder = libopus.Decoder(8000)
        self._chunk = 8 * ptime_ms  # samples per SIP packet
        self._pending = b""  # PCM not yet encoded (SIP packets of another size than 20 ms)
        self._pending_pts = 0
        self._pending_end = 0

    def to_webrtc(self, payload: bytes, pts: int) -> list[tuple[bytes, int]]:
        """A SIP payload (``pts`` on the 8 kHz clock) -> Opus packets of 20 ms (timestamp on the 48 kHz clock)."""
        pcm = g711.decode(self._sip, payload)
        if not self._pending and len(payload) == 160:
            return [(self._encoder.encode(pcm, 160), pts * 6)]  # the usual case: one 20 ms packet in, one out
        if not self._pending or pts != self._pending_end:
            self._pending, self._pending_pts = b"", pts  # first packet, or a gap: start afresh
        self._pending += pcm
        self._pending_end = pts + len(payload)
        out = []
        while len(self._pending) >= 320:
            out.append((self._encoder.encode(self._pending[:320], 160), self._pending_pts * 6))
            self._pending = self._pending[320:]
            self._pending_pts += 160
        return out

    def to_sip(self, payload: bytes, pts: int) -> list[tuple[bytes, int | None]]:
        """An Opus packet (``pts`` on the 48 kHz clock) -> SIP payloads of ptime (timestamp on the 8 kHz clock)."""
        pcm = self._decoder.decode(payload)
        base = pts // 6
        chunk = 2 * self._chunk
        return [(g711.encode(self._sip, pcm[i : i + chunk]), base + i // 2) for i in range(0, len(pcm), chunk)]


class AvTranscoder:
    """Any other pair, with PyAV codec contexts called inline (see the module docstring about threads)."""

    def __init__(self, webrtc_codec: str, webrtc_pt: int, sip_codec: str, sip_fmtp: str | None = None) -> None:
        self.webrtc_clock = OPUS_CLOCK if webrtc_codec.lower() == "opus" else 8000
        self._sip_step = OPUS_CLOCK // 50 if sip_codec.upper() == "OPUS" else 0  # Opus: 20 ms packets
        self._sip_decoder = SipDecoder(sip_codec)
        self._sip_encoder = SipEncoder(sip_codec, sip_fmtp)  # an Opus phone's fmtp: bitrate, CBR, FEC
        self._encoder = packet_encoder(webrtc_codec, webrtc_pt)
        self._decoder = packet_decoder(webrtc_codec, webrtc_pt)

    def to_webrtc(self, payload: bytes, pts: int) -> list[tuple[bytes, int]]:
        out: list[tuple[bytes, int]] = []
        for frame in self._sip_decoder.decode(payload, pts):
            out += self._encoder.encode(frame)
        return out

    def to_sip(self, payload: bytes, pts: int) -> list[tuple[bytes, int | None]]:
        out: list[tuple[bytes, int | None]] = []
        for frame in self._decoder.decode(payload, pts):
            payloads, timestamp = self._sip_encoder.encode(frame)
            for item in payloads:
                out.append((item, timestamp))
                if timestamp is not None:
                    timestamp += self._sip_step or len(item)  # G.711/G.722: one byte per 8 kHz tick
        return out


Transcoder = OpusG711Transcoder | AvTranscoder


def make_transcoder(webrtc_codec: str, webrtc_pt: int, sip_codec: str, ptime_ms: int = 20, *,
                    sip_fmtp: str | None = None) -> Transcoder:
    if webrtc_codec.lower() == "opus" and sip_codec.upper() in ("PCMU", "PCMA") and libopus.AVAILABLE:
        return OpusG711Transcoder(sip_codec, ptime_ms)
    return AvTranscoder(webrtc_codec, webrtc_pt, sip_codec, sip_fmtp)
