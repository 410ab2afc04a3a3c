"""Recording of early media (a 183 Session Progress with SDP): the announcement a failing call plays.

Per packet the recorder keeps a reference to the payload (bounded: at most ``max_seconds`` of audio); the
decoding to 16-bit PCM and the WAV file are made once, when the call failed and the recording is wanted.
"""

from __future__ import annotations

import io
import wave

from .codecs import SIP_CODECS, SipDecoder
from .rtp_packet import RtpPacket


class EarlyAudioRecorder:
    def __init__(self, codec: str, *, max_seconds: float = 30.0) -> None:
        self.codec = codec.upper()
        self._payloads: list[bytes] = []
        # G.711 and G.722 both advance the 8 kHz RTP clock by one tick per payload byte
        self._max_bytes = int(max_seconds * 8000)
        self._bytes = 0
        self.packets = 0

    def feed(self, packet: RtpPacket) -> None:
        if self._bytes >= self._max_bytes:
            return
        self._payloads.append(packet.payload)
        self._bytes += len(packet.payload)
        self.packets += 1

    @property
    def duration_ms(self) -> int:
        return self._bytes // 8

    def wav(self) -> bytes:
        """The recording as a mono 16-bit PCM WAV file (8 kHz for G.711, 16 kHz for G.722)."""
        decoder = SipDecoder(self.codec)
        pcm = bytearray()
        rate = 8000
        pts = 0
        for payload in self._payloads:
            for frame in decoder.decode(payload, pts):
                rate = frame.sample_rate
                # aiortc's G.711/G.722 decoders give packed s16 mono (the plane may be padded)
                pcm += bytes(frame.planes[0])[: frame.samples * 2]
            pts += len(payload)
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(bytes(pcm))
        return out.getvalue()


def recordable(codec: str | None) -> bool:
    return codec is not None and codec.upper() in SIP_CODECS and codec.upper() != "OPUS"  # WAV of 8 kHz clocks
