"""Audio helpers for tests: a paced sine-tone aiortc track and a receiver that can tell which tone arrives.

Pure Python (no numpy in the env): a tone is precomputed once, detection uses the Goertzel algorithm over the
last ~second of received audio, so it works whatever codec (Opus 48 kHz stereo, G.711 8 kHz mono) delivered it.
"""

from __future__ import annotations

import array
import asyncio
import fractions
import math
import time
from collections import deque

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

SAMPLE_RATE = 48000
FRAME_MS = 20
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000
SILENCE_RMS = 200.0  # out of 32767; codec noise on silence stays well below this


def sine_samples(hz: float, sample_rate: int, count: int, amplitude: float = 8000.0) -> array.array[int]:
    return array.array("h", (int(amplitude * math.sin(2 * math.pi * hz * i / sample_rate)) for i in range(count)))


class ToneTrack(MediaStreamTrack):
    """Mono s16 sine tone at 48 kHz in 20 ms frames, paced in real time like aiortc's AudioStreamTrack."""

    kind = "audio"

    def __init__(self, hz: float = 440.0) -> None:
        super().__init__()
        self.hz = hz
        # One second of tone; an integer frequency loops seamlessly after exactly one second.
        self._samples = sine_samples(hz, SAMPLE_RATE, SAMPLE_RATE).tobytes()
        self._frames_per_loop = SAMPLE_RATE // SAMPLES_PER_FRAME
        self._start: float | None = None
        self._index = 0
        self.muted = False  # send silence instead of the tone (the track keeps its timing)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            wait = self._start + self._index * FRAME_MS / 1000 - now
            if wait > 0:
                await asyncio.sleep(wait)
        frame = av.AudioFrame(format="s16", layout="mono", samples=SAMPLES_PER_FRAME)
        if self.muted:
            data = bytes(SAMPLES_PER_FRAME * 2)
        else:
            offset = (self._index % self._frames_per_loop) * SAMPLES_PER_FRAME * 2
            data = self._samples[offset : offset + SAMPLES_PER_FRAME * 2]
        frame.planes[0].update(data)
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._index * SAMPLES_PER_FRAME
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._index += 1
        return frame


def frame_mono_samples(frame: av.AudioFrame) -> array.array[int]:
    """First channel of an s16 (packed) audio frame, as decoded by aiortc's Opus/G.711/G.722 decoders."""
    samples = array.array("h")
    samples.frombytes(bytes(frame.planes[0])[: frame.samples * 2 * len(frame.layout.channels)])
    channels = len(frame.layout.channels)
    return samples if channels == 1 else samples[::channels]


def rms(samples: array.array[int]) -> float:
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


def tone_ratio(samples: array.array[int], sample_rate: int, hz: float) -> float:
    """Share of the signal's energy at ``hz`` (Goertzel): ~1.0 for a pure tone at hz, ~0 for other tones."""
    n = len(samples)
    energy = sum(s * s for s in samples)
    if n == 0 or energy == 0:
        return 0.0
    coeff = 2 * math.cos(2 * math.pi * hz / sample_rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coeff * s1 * s2
    return float(power / (n / 2 * energy))


class AudioReceiver:
    """Consumes a remote track: counts frames and non-silent frames, keeps ~1 s of audio for tone checks."""

    def __init__(self, keep_frames: int = 50) -> None:
        self.frames_received = 0
        self.non_silent_frames = 0
        self._recent: deque[tuple[int, array.array[int]]] = deque(maxlen=keep_frames)

    def add(self, frame: av.AudioFrame) -> None:
        samples = frame_mono_samples(frame)
        self.frames_received += 1
        if rms(samples) > SILENCE_RMS:
            self.non_silent_frames += 1
        self._recent.append((frame.sample_rate, samples))

    async def consume(self, track: MediaStreamTrack) -> None:
        """Run until the track ends (the owner cancels this task on close)."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.AudioFrame):
                self.add(frame)

    def non_silent_fraction(self) -> float:
        return self.non_silent_frames / self.frames_received if self.frames_received else 0.0

    def recent_tone_ratio(self, hz: float) -> float:
        """Goertzel ratio of ``hz`` over the recent audio at its most common sample rate (0.0 if none)."""
        if not self._recent:
            return 0.0
        rates = [rate for rate, _ in self._recent]
        rate = max(set(rates), key=rates.count)
        joined = array.array("h")
        for r, samples in self._recent:
            if r == rate:
                joined.extend(samples)
        return tone_ratio(joined, rate, hz)
