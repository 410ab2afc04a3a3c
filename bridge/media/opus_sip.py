"""Opus on the SIP leg (RFC 7587): our fmtp, whether a phone's fmtp lets the Matrix client's Opus pass through
untouched, and an encoder that honours the phone's fmtp when we transcode.

Passthrough sends the browser's own Opus packets (20 ms, VBR, about 32 kbit/s, in-band FEC, mono in a stereo
stream) to the phone. RFC 7587 makes every receiver decode any Opus stream, so most fmtp parameters are
hints (maxplaybackrate, stereo, useinbandfec, usedtx); the ones a browser stream can break are:
``cbr=1`` (the phone wants constant bitrate), ``maxaveragebitrate`` below what browsers send, and a
``maxptime`` under 20 ms (or a ``minptime`` over it). Those make us transcode with the phone's limits.
"""

from __future__ import annotations

import fractions

from av import AudioFrame, AudioResampler, CodecContext

OPUS_PT = 111  # dynamic payload type of our SIP offer (the one browsers use too)
OPUS_FMTP = "minptime=10;useinbandfec=1"
"""What we ask of the phone's Opus stream (RFC 7587 6.1): we can take FEC and 10 ms frames."""
BROWSER_BITRATE = 32000  # Chrome/Firefox default for a voice Opus stream (bit/s)
PTIME_MS = 20
SAMPLE_RATE = 48000
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


def parse_fmtp(fmtp: str | None) -> dict[str, str]:
    """'a=b;c=d' -> {'a': 'b', 'c': 'd'} (names lower-case; malformed pieces skipped)."""
    out: dict[str, str] = {}
    for item in (fmtp or "").split(";"):
        name, eq, value = item.strip().partition("=")
        if eq and name:
            out[name.strip().lower()] = value.strip()
    return out


def _int(params: dict[str, str], name: str) -> int | None:
    value = params.get(name, "")
    return int(value) if value.isdigit() else None


def passthrough_blocker(sip_fmtp: str | None) -> str | None:
    """Why the browser's Opus may not go to this phone unchanged (None: it may)."""
    params = parse_fmtp(sip_fmtp)
    if params.get("cbr") == "1":
        return "the phone asks for constant bitrate (cbr=1)"
    bitrate = _int(params, "maxaveragebitrate")
    if bitrate is not None and bitrate < BROWSER_BITRATE:
        return f"the phone caps the bitrate at {bitrate} bit/s (maxaveragebitrate)"
    maxptime = _int(params, "maxptime")
    if maxptime is not None and maxptime < PTIME_MS:
        return f"the phone takes at most {maxptime} ms packets (maxptime)"
    minptime = _int(params, "minptime")
    if minptime is not None and minptime > PTIME_MS:
        return f"the phone wants packets of at least {minptime} ms (minptime)"
    return None


class SipOpusEncoder:
    """PCM frames -> 20 ms Opus payloads within the phone's fmtp (bitrate, CBR, FEC, stereo)."""

    def __init__(self, fmtp: str | None) -> None:
        params = parse_fmtp(fmtp)
        bitrate = _int(params, "maxaveragebitrate")
        layout = "stereo" if params.get("stereo") == "1" else "mono"
        self.codec = CodecContext.create("libopus", "w")
        self.codec.bit_rate = min(bitrate, BROWSER_BITRATE) if bitrate else BROWSER_BITRATE
        self.codec.format = "s16"
        self.codec.layout = layout
        self.codec.sample_rate = SAMPLE_RATE
        self.codec.time_base = TIME_BASE
        options = {"application": "voip", "vbr": "off" if params.get("cbr") == "1" else "on"}
        if params.get("useinbandfec") == "1":
            options.update(fec="1", packet_loss="5")
        self.codec.options = options
        self._resampler = AudioResampler(format="s16", layout=layout, rate=SAMPLE_RATE,
                                         frame_size=SAMPLE_RATE * PTIME_MS // 1000)
        self._first_pts: int | None = None

    def encode(self, frame: AudioFrame) -> tuple[list[bytes], int | None]:
        """Payloads and the first one's timestamp on the 48 kHz RTP clock (None while the encoder buffers)."""
        packets = []
        for resampled in self._resampler.resample(frame):
            packets += self.codec.encode(resampled)
        if not packets:
            return [], None
        first = packets[0].pts or 0
        if self._first_pts is None:
            self._first_pts = first
        return [bytes(p) for p in packets], first - self._first_pts
