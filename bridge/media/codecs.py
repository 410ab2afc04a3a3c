"""SIP-leg codecs: names, aiortc codec parameters, and encode/decode for transcoding."""

from __future__ import annotations

import fractions
from dataclasses import dataclass
from typing import Any

from aiortc.codecs import get_decoder, get_encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from av import AudioFrame, Packet

from .opus_sip import OPUS_FMTP, OPUS_PT, SipOpusEncoder


@dataclass(frozen=True, slots=True)
class CodecSpec:
    name: str
    static_pt: int
    clock_rate: int
    """RTP clock (8000 for G722 although it samples at 16 kHz, RFC 3551 4.5.2)."""
    channels: int = 1
    fmtp: str | None = None  # what our SIP offer asks for (opus_sip.OPUS_FMTP)


SIP_CODECS: dict[str, CodecSpec] = {
    "PCMU": CodecSpec("PCMU", 0, 8000),
    "PCMA": CodecSpec("PCMA", 8, 8000),
    "G722": CodecSpec("G722", 9, 8000),
    # RFC 7587: always opus/48000/2 in SDP; offered on the SIP leg only when media.codecs lists it
    "OPUS": CodecSpec("opus", OPUS_PT, 48000, 2, OPUS_FMTP),
}
PASSTHROUGH_CODECS = frozenset(SIP_CODECS)
"""Codecs aiortc can carry pre-encoded (its encoder ``pack()`` understands them). Opus only when the phone's
fmtp allows the browser's stream (opus_sip.passthrough_blocker)."""

RTP_TIME_BASE = fractions.Fraction(1, 8000)


def aiortc_parameters(name: str, payload_type: int) -> RTCRtpCodecParameters:
    spec = SIP_CODECS[name.upper()]
    return RTCRtpCodecParameters(
        mimeType=f"audio/{spec.name}", clockRate=spec.clock_rate, channels=spec.channels, payloadType=payload_type
    )


def aiortc_capability(name: str) -> RTCRtpCodecCapability:
    """Capability object as listed by aiortc's get_capabilities (for setCodecPreferences)."""
    if name.lower() == "opus":
        return RTCRtpCodecCapability(mimeType="audio/opus", clockRate=48000, channels=2)
    spec = SIP_CODECS[name.upper()]
    return RTCRtpCodecCapability(mimeType=f"audio/{spec.name}", clockRate=spec.clock_rate, channels=1)


def choose_webrtc_codecs(sip_codec: str | None, offered: list[str], *, passthrough_ok: bool) -> list[str]:
    """Codec preference for the WebRTC leg (names as aiortc knows them).

    The SIP leg's codec comes first when it can be passed through and the Matrix side has it
    (no decode/encode at all); otherwise Opus, then whatever else both sides know.
    """
    offered_upper = [name.upper() for name in offered]
    prefs: list[str] = []
    if sip_codec and passthrough_ok and sip_codec.upper() in PASSTHROUGH_CODECS and sip_codec.upper() in offered_upper:
        return [sip_codec.upper()]
    if "OPUS" in offered_upper:
        prefs.append("opus")
    for name in ("G722", "PCMU", "PCMA"):
        if name in offered_upper:
            prefs.append(name)
    return prefs


class SipDecoder:
    """RTP payload -> PCM frames (for transcoding towards WebRTC)."""

    def __init__(self, name: str) -> None:
        self._decoder = get_decoder(aiortc_parameters(name, SIP_CODECS[name.upper()].static_pt))

    def decode(self, payload: bytes, timestamp: int) -> list[AudioFrame]:
        frames = self._decoder.decode(JitterFrame(data=payload, timestamp=timestamp))
        return [frame for frame in frames if isinstance(frame, AudioFrame)]


class SipEncoder:
    """PCM frames (any rate/layout aiortc decodes to) -> RTP payloads of 20 ms."""

    def __init__(self, name: str, fmtp: str | None = None) -> None:
        """`fmtp`: the phone's, for Opus (bitrate, CBR, FEC; opus_sip.SipOpusEncoder)."""
        self._encoder: Any = (SipOpusEncoder(fmtp) if name.upper() == "OPUS"
                              else get_encoder(aiortc_parameters(name, SIP_CODECS[name.upper()].static_pt)))

    def encode(self, frame: AudioFrame) -> tuple[list[bytes], int | None]:
        """Payloads and the first one's timestamp on the codec's RTP clock (None if unknown)."""
        payloads, timestamp = self._encoder.encode(frame)
        return payloads, timestamp


OPUS_TIME_BASE = fractions.Fraction(1, 48000)


def encoded_packet(payload: bytes, pts: int, clock_rate: int = 8000) -> Packet:
    """Wrap a pre-encoded payload so aiortc's sender ``pack()``s it instead of encoding."""
    packet = Packet(payload)
    packet.pts = pts
    packet.time_base = RTP_TIME_BASE if clock_rate == 8000 else OPUS_TIME_BASE
    return packet


class WebRtcEncoder:
    """PCM frames -> pre-encoded packets for the WebRTC codec (Opus, G.722, G.711).

    Encoding here instead of in aiortc's sender skips its per-sample audio-level loop in pure
    Python and the thread-pool hop per frame (roughly halves transcoding CPU); aiortc then only
    ``pack()``s. Needs the same aiortc internal as passthrough (webrtc_leg.AIORTC_INTERNALS_OK).
    """

    def __init__(self, name: str, payload_type: int) -> None:
        if name.lower() == "opus":
            params = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=payload_type)
        else:
            params = aiortc_parameters(name, payload_type)
        self._encoder = get_encoder(params)
        self._time_base = fractions.Fraction(1, params.clockRate)
        self._step = params.clockRate // 50  # RTP clock ticks per 20 ms packet

    def encode(self, frame: AudioFrame) -> list[Packet]:
        payloads, timestamp = self._encoder.encode(frame)
        packets = []
        for index, payload in enumerate(payloads):
            packet = Packet(payload)
            packet.pts = timestamp + index * self._step
            packet.time_base = self._time_base
            packets.append(packet)
        return packets
