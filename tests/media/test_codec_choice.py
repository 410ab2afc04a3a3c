from __future__ import annotations

from bridge.media.codecs import choose_webrtc_codecs
from bridge.media.webrtc_sdp import add_telephone_event, audio_rtpmaps, find_codec

CHROME_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "c=IN IP4 0.0.0.0",
        "a=mid:0",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:13 CN/8000",
        "a=rtpmap:110 telephone-event/48000",
        "a=rtpmap:126 telephone-event/8000",
        "a=rtpmap:bad",
        "",
    ]
)


def test_pcmu_on_sip_and_in_the_matrix_offer_selects_passthrough_only() -> None:
    assert choose_webrtc_codecs("PCMU", ["opus", "G722", "PCMU", "PCMA"], passthrough_ok=True) == ["PCMU"]
    assert choose_webrtc_codecs("PCMA", ["opus", "PCMA"], passthrough_ok=True) == ["PCMA"]


def test_opus_only_matrix_offer_falls_back_to_transcoding() -> None:
    assert choose_webrtc_codecs("PCMU", ["opus"], passthrough_ok=True) == ["opus"]


def test_without_usable_aiortc_internals_no_passthrough_is_chosen() -> None:
    assert choose_webrtc_codecs("PCMU", ["opus", "PCMU"], passthrough_ok=False) == ["opus", "PCMU"]


def test_rtpmaps_follow_m_line_order_and_skip_broken_lines() -> None:
    names = [(c.name, c.payload_type) for c in audio_rtpmaps(CHROME_OFFER)]
    assert names[:5] == [("opus", 111), ("red", 63), ("G722", 9), ("PCMU", 0), ("PCMA", 8)]
    assert find_codec(CHROME_OFFER, "telephone-event", 8000) is not None
    assert find_codec(CHROME_OFFER, "telephone-event", 8000).payload_type == 126  # type: ignore[union-attr]


def test_telephone_event_is_added_to_the_audio_m_line_once() -> None:
    sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\na=mid:0\r\n"
    out = add_telephone_event(sdp, 101, 8000)
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 0 101\r\n" in out
    assert "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n" in out
    assert add_telephone_event(out, 101, 8000) == out
