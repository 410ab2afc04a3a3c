"""An aiortc peer standing in for the Matrix client (Element) in tests and the benchmark."""

from __future__ import annotations

import array
import asyncio
import fractions
import itertools
import math
import random
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from bridge.media.dtmf import encode_event
from bridge.media.rtp_packet import RtpPacket, RtpParseError, build_rtp, parse_rtp
from bridge.media.webrtc_leg import rtc_configuration
from bridge.media.webrtc_sdp import add_telephone_event

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960


class ToneTrack(MediaStreamTrack):
    """20 ms mono s16 frames of a sine tone, paced in real time."""

    kind = "audio"

    def __init__(self, freq: float) -> None:
        super().__init__()
        self.freq = freq
        self._n = 0
        self._start: float | None = None
        step = 2 * math.pi * freq / SAMPLE_RATE
        period = round(SAMPLE_RATE / math.gcd(int(freq), SAMPLE_RATE))  # samples until the wave repeats
        self._wave = array.array("h", (int(8000 * math.sin(step * i)) for i in range(period + FRAME_SAMPLES)))
        self._period = period

    async def recv(self) -> AudioFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        index = self._n // FRAME_SAMPLES
        await asyncio.sleep(max(0.0, self._start + index * 0.02 - loop.time()))
        offset = self._n % self._period
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(self._wave[offset : offset + FRAME_SAMPLES].tobytes())
        frame.pts = self._n
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._n += FRAME_SAMPLES
        return frame


def dominant_frequency(samples: array.array[int], sample_rate: int) -> float:
    """Frequency of a clean tone from its zero crossings (good enough to tell 440 from 1000 Hz)."""
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    return crossings / 2 / (len(samples) / sample_rate)


def frame_mono_samples(frame: AudioFrame) -> array.array[int]:
    samples = array.array("h", bytes(frame.planes[0])[: frame.samples * 2 * len(frame.layout.channels)])
    channels = len(frame.layout.channels)
    return samples[::channels] if channels > 1 else samples


class MatrixPeer:
    """The 'Matrix client': plays a tone, records what it hears."""

    def __init__(self, *, freq: float = 1000.0, codecs: list[str] | None = None) -> None:
        self.pc = RTCPeerConnection(rtc_configuration([]))
        self.tone = ToneTrack(freq)
        self.transceiver = self.pc.addTransceiver(self.tone, direction="sendrecv")
        if codecs:
            caps = RTCRtpSender.getCapabilities("audio").codecs
            self.transceiver.setCodecPreferences(
                [c for name in codecs for c in caps if c.mimeType.lower() == f"audio/{name.lower()}"]
            )
        self.frames: list[AudioFrame] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._dtmf_seq = random.getrandbits(15)
        self._dtmf_ssrc = random.getrandbits(32)
        self.pc.on("track", self._on_track)
        self.telephone_events: list[RtpPacket] = []
        self.audio_seqs: list[int] = []
        self._watch_incoming_rtp()

    def _watch_incoming_rtp(self) -> None:
        """Record telephone-event packets (aiortc drops them) and audio sequence numbers."""
        transport = self.transceiver.receiver.transport
        original = transport._handle_rtp_data

        async def watching(data: bytes, arrival_time_ms: int) -> None:
            try:
                packet = parse_rtp(data)
            except RtpParseError:
                packet = None
            if packet is not None and packet.payload_type in (101, 110, 126):
                self.telephone_events.append(packet)
            elif packet is not None and len(self.audio_seqs) < 10000:
                self.audio_seqs.append(packet.sequence)
            await original(data, arrival_time_ms=arrival_time_ms)

        transport._handle_rtp_data = watching  # type: ignore[method-assign]

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._consume(track)))

    async def _consume(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, AudioFrame) and len(self.frames) < 5000:
                    self.frames.append(frame)
        except MediaStreamError:
            pass

    def heard_frequency(self, last: int = 25) -> float:
        frames = self.frames[-last:]
        samples: array.array[int] = array.array("h")
        for frame in frames:
            samples.extend(frame_mono_samples(frame))
        return dominant_frequency(samples, frames[0].sample_rate) if frames else 0.0

    async def offer(self, *, telephone_event: bool = True) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = self.pc.localDescription.sdp
        if telephone_event:  # Chrome offers telephone-event at both clocks; aiortc offers none
            sdp = add_telephone_event(sdp, 126, 8000)
            sdp = add_telephone_event(sdp, 110, 48000)
        return sdp

    async def answer(self, offer_sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    async def send_dtmf(self, event: int, payload_type: int, clock_rate: int = 8000) -> None:
        """Inject an RFC 4733 key press into the SRTP stream, as a browser's RTCDTMFSender does.

        aiortc cannot send telephone-event, so this goes straight to its DTLS transport with a
        second SSRC (the receiving side must not care which SSRC carries the events)."""
        transport = self.transceiver.sender.transport
        step = clock_rate // 50
        ts = random.getrandbits(32)
        for i in range(5):
            end = i >= 2
            payload = encode_event(event, end=end, volume=10, duration=step * min(i + 1, 3))
            await transport._send_rtp(build_rtp(payload_type, i == 0, self._dtmf_seq, ts, self._dtmf_ssrc, payload))
            self._dtmf_seq += 1
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def strip_candidates(sdp: str) -> tuple[str, list[dict[str, Any]]]:
    """Split an SDP into a candidate-less SDP and Matrix-style candidate dicts (as Element trickles)."""
    lines, candidates = [], []
    mline = -1
    mid = "0"
    for line in sdp.splitlines():
        if line.startswith("m="):
            mline += 1
        if line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        if line.startswith("a=candidate:"):
            candidates.append({"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": mline})
            continue
        if line.startswith("a=end-of-candidates"):
            continue
        lines.append(line)
    return "\r\n".join(lines) + "\r\n", candidates
