"""Recording early media: bounded while recording, a playable 16-bit PCM WAV of what was heard afterwards."""

from __future__ import annotations

import array
import io
import wave

from bridge.media.early_audio import EarlyAudioRecorder
from bridge.media.rtp_packet import RtpPacket
from tests.harness.rtp_peer import pcmu_tone
from tests.harness.tone import tone_ratio


def packets(n: int) -> list[RtpPacket]:
    return [RtpPacket(0, i == 0, i, i * 160, 1, payload) for i, payload in enumerate(pcmu_tone(1000.0, n))]


def test_pcmu_early_media_becomes_a_wav_of_the_same_tone() -> None:
    rec = EarlyAudioRecorder("PCMU")
    for p in packets(100):  # 2 s
        rec.feed(p)
    assert rec.duration_ms == 2000
    with wave.open(io.BytesIO(rec.wav())) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 8000, 16000)
        samples = array.array("h", w.readframes(w.getnframes()))
    assert tone_ratio(samples, 8000, 1000.0) > 0.9


def test_recording_stops_at_its_bound() -> None:
    rec = EarlyAudioRecorder("PCMU", max_seconds=1.0)
    for p in packets(200):
        rec.feed(p)
    assert rec.duration_ms == 1000 and rec.packets == 50
