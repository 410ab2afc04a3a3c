"""Transcoding between the WebRTC codec and the SIP codec inline, on the event loop: no executor, no thread.

aiortc encodes in the default thread pool and decodes on a thread per receiver, and its Opus encoder resamples
every 8 kHz frame to 48 kHz stereo first (~450 us per 20 ms frame). Here Opus is encoded mono straight from the
SIP leg's rate (8 or 16 kHz: libopus takes those natively; ~100 us per frame) and decoded mono; every PyAV codec
context is opened with ``thread_count = 1``. Cost per call for Opus <-> PCMU: about 200 us of CPU per 20 ms of
audio both ways (bench/scale_bench.py --mode transcode).
"""

from __future__ import annotations

import fractions
from typing import Any

from aiortc.codecs import get_decoder, get_encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import AudioFrame, AudioResampler, CodecContext, Packet

from .codecs import aiortc_parameters

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
        self._decoder: Any = get_decoder(params)
        _single_thread(self._decoder.codec)

    def decode(self, payload: bytes, timestamp: int) -> list[AudioFrame]:
        frames = self._decoder.decode(JitterFrame(data=payload, timestamp=timestamp))
        return [f for f in frames if isinstance(f, AudioFrame)]


class AiortcPacketEncoder:
    """Frames -> (payload, RTP timestamp) with aiortc's encoder called inline (no executor)."""

    def __init__(self, params: RTCRtpCodecParameters) -> None:
        self._encoder: Any = get_encoder(params)
        _single_thread(self._encoder.codec)
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
