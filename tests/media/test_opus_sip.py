"""Opus on the SIP leg: which phone fmtp lets the browser's Opus through, the transcoding encoder following the
phone's fmtp, and SDP negotiation of Opus with its 48 kHz telephone-event."""

from __future__ import annotations

import av
import pytest

from bridge.media.opus_sip import SipOpusEncoder, parse_fmtp, passthrough_blocker
from bridge.sip.sdp import Codec, SessionDescription, negotiate_answer
from tests.harness.tone import sine_samples

OPUS = Codec(111, "opus", 48000, 2, "minptime=10;useinbandfec=1")


@pytest.mark.parametrize("fmtp", [None, "", "minptime=10;useinbandfec=1", "maxplaybackrate=16000;stereo=1",
                                  "maxaveragebitrate=64000;usedtx=1", "maxptime=40", "garbage;;=x"])
def test_hints_in_the_phones_fmtp_allow_passthrough(fmtp: str | None) -> None:
    assert passthrough_blocker(fmtp) is None


@pytest.mark.parametrize("fmtp,why", [("cbr=1", "constant bitrate"), ("maxaveragebitrate=16000", "16000 bit/s"),
                                      ("maxptime=10", "at most 10 ms"), ("minptime=40", "at least 40 ms")])
def test_limits_a_browser_stream_breaks_force_transcoding(fmtp: str, why: str) -> None:
    blocker = passthrough_blocker(fmtp)
    assert blocker is not None and why in blocker


def test_parse_fmtp_lowercases_names() -> None:
    assert parse_fmtp("MaxAverageBitrate=20000; cbr=1") == {"maxaveragebitrate": "20000", "cbr": "1"}


def _tone_frames(count: int) -> list[av.AudioFrame]:
    samples = sine_samples(440.0, 48000, 960 * count)
    frames = []
    for index in range(count):
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(samples[index * 960:(index + 1) * 960].tobytes())
        frame.sample_rate = 48000
        frame.pts = index * 960
        frames.append(frame)
    return frames


def test_transcoding_encoder_keeps_the_phones_cbr_bitrate() -> None:
    encoder = SipOpusEncoder("cbr=1;maxaveragebitrate=20000")
    payloads: list[bytes] = []
    stamps: list[int] = []
    for frame in _tone_frames(30):
        out, ts = encoder.encode(frame)
        payloads += out
        if ts is not None:
            stamps.append(ts)
    assert len(payloads) >= 25 and {len(p) for p in payloads[2:]} == {20000 // 8 // 50}
    assert stamps[1] - stamps[0] == 960  # 20 ms on the 48 kHz RTP clock


def test_phone_offering_opus_with_its_own_payload_types_is_answered_in_them() -> None:
    offer = SessionDescription.parse(
        "v=0\r\no=phone 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
        "m=audio 4000 RTP/AVP 107 0 101 108\r\na=rtpmap:107 opus/48000/2\r\na=fmtp:107 useinbandfec=1\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=rtpmap:108 telephone-event/48000\r\na=rtcp:4005\r\n")
    answer, negotiated = negotiate_answer(offer, address="192.0.2.1", port=5000,
                                          supported=[OPUS, Codec(0, "PCMU", 8000)])
    assert negotiated.codec.payload_type == 107 and negotiated.codec.fmtp == "useinbandfec=1"
    assert negotiated.telephone_event_pt == 108  # the event clock follows Opus' 48 kHz
    assert negotiated.remote_rtcp == ("192.0.2.9", 4005)
    assert "m=audio 5000 RTP/AVP 107 108\r\n" in answer.serialize()
