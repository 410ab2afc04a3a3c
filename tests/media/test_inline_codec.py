"""Inline transcoding pieces: G.711 tables against FFmpeg, and Opus <-> G.711 through libopus without threads."""

from __future__ import annotations

import array
import fractions
import os
from typing import Any

import pytest
from av import AudioFrame, CodecContext, Packet

from bridge.media import g711, libopus
from bridge.media.inline_codec import OpusG711Transcoder, make_transcoder
from tests.harness.tone import sine_samples, tone_ratio


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.parametrize(("codec", "ffmpeg"), [("PCMU", "pcm_mulaw"), ("PCMA", "pcm_alaw")])
def test_g711_decoding_matches_ffmpeg_for_every_code(codec: str, ffmpeg: str) -> None:
    decoder: Any = CodecContext.create(ffmpeg, "r")
    decoder.format, decoder.layout, decoder.sample_rate = "s16", "mono", 8000
    codes = bytes(range(256))
    expected = bytes(decoder.decode(Packet(codes))[0].planes[0])[:512]
    assert g711.decode(codec, codes) == expected


@pytest.mark.parametrize(("codec", "ffmpeg"), [("PCMU", "pcm_mulaw"), ("PCMA", "pcm_alaw")])
def test_g711_encoding_picks_the_nearest_code_never_worse_than_ffmpeg(codec: str, ffmpeg: str) -> None:
    encoder: Any = CodecContext.create(ffmpeg, "w")
    encoder.format, encoder.layout, encoder.sample_rate = "s16", "mono", 8000
    encoder.time_base = fractions.Fraction(1, 8000)
    levels = [g711._ULAW[b] if codec == "PCMU" else g711._ALAW[b] for b in range(256)]
    pcm = array.array("h", range(-32768, 32768, 3))[: 160 * 136]
    for start in range(0, len(pcm), 160):
        chunk = pcm[start : start + 160]
        frame = AudioFrame(format="s16", layout="mono", samples=160)
        frame.planes[0].update(chunk.tobytes())
        frame.sample_rate, frame.pts, frame.time_base = 8000, start, fractions.Fraction(1, 8000)
        theirs = b"".join(bytes(p) for p in encoder.encode(frame))
        ours = g711.encode(codec, chunk.tobytes())
        assert len(ours) == 160
        for sample, a, b in zip(chunk, theirs, ours, strict=True):
            assert abs(levels[b] - sample) <= abs(levels[a] - sample), (sample, a, b)


@pytest.mark.skipif(not libopus.AVAILABLE, reason="system libopus (Debian libopus0) not installed")
def test_opus_g711_transcoder_carries_a_tone_both_ways_in_20ms_packets_without_starting_threads() -> None:
    threads = _threads()
    transcoder = make_transcoder("opus", 111, "PCMU")
    assert isinstance(transcoder, OpusG711Transcoder)
    tone = sine_samples(440.0, 8000, 160 * 50).tobytes()
    payloads = [g711.encode("PCMU", tone[i * 320 : (i + 1) * 320]) for i in range(50)]
    opus: list[tuple[bytes, int]] = []
    for index, payload in enumerate(payloads):
        out = transcoder.to_webrtc(payload, 1000 + 160 * index)
        assert len(out) == 1  # one 20 ms SIP packet in, one Opus packet out
        opus += out
    assert [ts for _, ts in opus] == [6 * (1000 + 160 * i) for i in range(50)]  # 48 kHz RTP clock
    back: list[bytes] = []
    for payload, ts in opus:
        for sip_payload, sip_ts in transcoder.to_sip(payload, ts):
            assert len(sip_payload) == 160 and sip_ts == ts // 6
            back.append(sip_payload)
    heard = array.array("h", g711.decode("PCMU", b"".join(back[10:])))
    assert tone_ratio(heard, 8000, 440.0) > 0.8
    assert tone_ratio(heard, 8000, 1000.0) < 0.05
    assert _threads() == threads


@pytest.mark.skipif(not libopus.AVAILABLE, reason="system libopus (Debian libopus0) not installed")
def test_opus_g711_transcoder_regroups_30ms_sip_packets_into_20ms_opus_packets() -> None:
    transcoder = OpusG711Transcoder("PCMA", ptime_ms=30)
    tone = sine_samples(440.0, 8000, 240 * 4).tobytes()
    out = []
    for index in range(4):  # 4 x 30 ms = 6 x 20 ms
        out += transcoder.to_webrtc(g711.encode("PCMA", tone[index * 480 : (index + 1) * 480]), 240 * index)
    assert [ts for _, ts in out] == [6 * 160 * i for i in range(6)]
    # one 20 ms Opus packet back: at most ptime per SIP packet, so one packet of 20 ms here
    assert [(len(p), ts) for p, ts in transcoder.to_sip(out[1][0], out[1][1])] == [(160, 160)]
