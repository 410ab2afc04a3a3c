"""SDP parsing/printing (RFC 4566) and audio offer/answer (RFC 3264)."""

from __future__ import annotations

import pytest

from bridge.sip.sdp import (
    STATIC_PAYLOADS,
    Codec,
    MediaDescription,
    Negotiated,
    SdpError,
    SessionDescription,
    build_offer,
    negotiate_answer,
    read_answer,
)

PCMU = STATIC_PAYLOADS[0]
PCMA = STATIC_PAYLOADS[8]
OPUS = Codec(111, "opus", 48000, 2, "minptime=10;useinbandfec=1")

PHONE_OFFER = (
    "v=0\r\n"
    "o=- 1234 5678 IN IP4 192.0.2.10\r\n"
    "s=Phone\r\n"
    "c=IN IP4 192.0.2.10\r\n"
    "t=0 0\r\n"
    "m=audio 40000 RTP/AVP 9 8 0 18 101\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "a=fmtp:18 annexb=no\r\n"
    "a=ptime:30\r\n"
    "a=sendrecv\r\n"
)


def test_parse_reads_session_and_media_fields() -> None:
    sdp = SessionDescription.parse(PHONE_OFFER.encode())
    assert sdp.origin.session_id == 1234
    assert sdp.origin.session_version == 5678
    assert sdp.origin.address == "192.0.2.10"
    assert sdp.session_name == "Phone"
    assert sdp.connection == "192.0.2.10"
    assert sdp.timing == [(0, 0)]
    (audio,) = sdp.media
    assert (audio.kind, audio.port, audio.proto) == ("audio", 40000, "RTP/AVP")
    assert audio.formats == ["9", "8", "0", "18", "101"]
    assert audio.ptime == 30
    assert audio.direction == "sendrecv"


def test_codecs_combine_static_defaults_rtpmap_and_fmtp_in_m_line_order() -> None:
    audio = SessionDescription.parse(PHONE_OFFER).media[0]
    assert audio.codecs == [
        Codec(9, "G722", 8000),
        Codec(8, "PCMA", 8000),
        Codec(0, "PCMU", 8000),
        Codec(18, "G729", 8000, fmtp="annexb=no"),
        Codec(101, "telephone-event", 8000, fmtp="0-15"),
    ]
    assert audio.telephone_event == Codec(101, "telephone-event", 8000, fmtp="0-15")


def test_g722_keeps_the_sdp_clock_rate_8000() -> None:
    assert STATIC_PAYLOADS[9].clock_rate == 8000
    assert STATIC_PAYLOADS[9].rtpmap == "G722/8000"


def test_dynamic_payload_without_rtpmap_is_skipped() -> None:
    sdp = SessionDescription.parse("v=0\no=- 1 1 IN IP4 h\ns=-\nt=0 0\nm=audio 5 RTP/AVP 96 0\n")
    assert sdp.media[0].codecs == [PCMU]


def test_session_level_direction_applies_to_media_without_their_own() -> None:
    sdp = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\na=sendonly\r\n"
        "m=audio 5000 RTP/AVP 0\r\nm=audio 5002 RTP/AVP 0\r\na=inactive\r\n"
    )
    assert sdp.direction == "sendonly"
    assert [m.direction for m in sdp.media] == ["sendonly", "inactive"]


def test_media_level_connection_overrides_session_level() -> None:
    sdp = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\n"
        "m=audio 5000 RTP/AVP 0\r\nc=IN IP4 10.0.0.1\r\nm=audio 6000/2 RTP/AVP 8\r\nb=AS:64\r\n"
    )
    assert sdp.connection_for(sdp.media[0]) == "10.0.0.1"
    assert sdp.connection_for(sdp.media[1]) == "::1"
    assert sdp.media[1].port_count == 2
    assert sdp.media[1].bandwidths == [("AS", 64)]


def test_serialize_round_trips_and_uses_crlf() -> None:
    sdp = SessionDescription.parse(PHONE_OFFER)
    text = sdp.serialize()
    assert text == PHONE_OFFER
    assert SessionDescription.parse(text) == sdp


def test_webrtc_style_sdp_with_many_attributes_parses() -> None:
    text = (
        "v=0\r\no=- 3912345678 3912345678 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
        "a=msid-semantic:WMS *\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\nc=IN IP4 0.0.0.0\r\n"
        "a=rtcp:9 IN IP4 0.0.0.0\r\na=candidate:1 1 udp 2130706431 192.0.2.1 50000 typ host\r\n"
        "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef01234567\r\n"
        "a=fingerprint:sha-256 AB:CD:EF\r\na=setup:actpass\r\na=mid:0\r\na=rtcp-mux\r\n"
        "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=end-of-candidates\r\n"
    )
    sdp = SessionDescription.parse(text)
    assert sdp.media[0].codecs[0] == OPUS
    assert sdp.media[0].attribute("mid") == "0"
    assert sdp.media[0].has_attribute("rtcp-mux")
    assert sdp.media[0].attribute_values("candidate") == ["1 1 udp 2130706431 192.0.2.1 50000 typ host"]
    assert sdp.serialize() == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\r\n",
        "o=- 1 1 IN IP4 h\r\nv=0\r\n",
        "v=1\r\no=- 1 1 IN IP4 h\r\n",
        "v=0\r\ns=-\r\n",
        "v=0\r\no=- 1 IN IP4 h\r\n",
        "v=0\r\no=- x 1 IN IP4 h\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\no=- 1 1 IN IP4 h\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nv=0\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nbogus line\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nX=upper\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nc=IN IP4\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nc=ATM NSAP x\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 70000 RTP/AVP 0\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio -1 RTP/AVP 0\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 5000 RTP/AVP\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 5000/x RTP/AVP 0\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nb=AS\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nt=now 0\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\na=:value\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\na=x\x00y\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\ns=a\rb\r\n",
    ],
)
def test_malformed_sdp_raises_sdp_error(text: str) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(text)


def test_binary_and_non_utf8_input_raises_sdp_error() -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(b"v=0\r\no=- 1 1 IN IP4 h\r\ns=\xff\xfe\r\n")
    with pytest.raises(SdpError):
        SessionDescription.parse(bytes(range(256)))


def test_utf8_session_name_is_accepted() -> None:
    sdp = SessionDescription.parse("v=0\r\no=- 1 1 IN IP4 h\r\ns=Appel de Zoë\r\nt=0 0\r\n".encode())
    assert sdp.session_name == "Appel de Zoë"


def test_huge_sdp_and_thousands_of_media_lines_are_refused() -> None:
    head = "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\n"
    with pytest.raises(SdpError):
        SessionDescription.parse(head + "a=x:" + "y" * 20000 + "\r\n")
    with pytest.raises(SdpError):
        SessionDescription.parse(head + "m=audio 5000 RTP/AVP 0\r\n" * 3000, max_size=10**6)
    with pytest.raises(SdpError):
        SessionDescription.parse(head + "m=audio 5000 RTP/AVP 0\r\n" * 17)


def test_build_offer_lists_codecs_events_ptime_and_direction() -> None:
    offer = build_offer("192.0.2.5", 30000, [PCMU, PCMA, OPUS], ptime=20, session_id=42, version=3)
    text = offer.serialize()
    assert text.startswith("v=0\r\no=- 42 3 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\n")
    assert "m=audio 30000 RTP/AVP 0 8 111 101 110\r\n" in text
    assert "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n" in text
    assert "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n" in text
    # Opus offered: RFC 4733 events on its 48 kHz clock too
    assert "a=rtpmap:110 telephone-event/48000\r\na=fmtp:110 0-16\r\n" in text
    assert text.endswith("a=ptime:20\r\na=sendrecv\r\n")
    assert SessionDescription.parse(text) == offer


def test_build_offer_without_telephone_event_and_on_hold() -> None:
    offer = build_offer("::1", 4000, [PCMA], telephone_event_pt=None, direction="sendonly")
    media = offer.media[0]
    assert media.formats == ["8"]
    assert media.direction == "sendonly"
    assert offer.origin.addrtype == "IP6"
    with pytest.raises(SdpError):
        build_offer("::1", 4000, [])


def test_answer_keeps_the_offerers_order_among_supported_codecs() -> None:
    offer = SessionDescription.parse(PHONE_OFFER)
    answer, neg = negotiate_answer(offer, address="198.51.100.7", port=20000, supported=[PCMU, PCMA], session_id=7)
    # offer order is 9 8 0 ...: G722 unsupported, so PCMA (8) wins over our preferred PCMU
    assert neg == Negotiated(
        codec=PCMA,
        telephone_event_pt=101,
        remote_address="192.0.2.10",
        remote_port=40000,
        direction="sendrecv",
        ptime=30,
        media_index=0,
    )
    media = answer.media[0]
    assert media.formats == ["8", "101"]
    assert media.port == 20000
    assert media.telephone_event == Codec(101, "telephone-event", 8000, fmtp="0-15")
    assert media.ptime == 30
    assert answer.connection == "198.51.100.7"
    assert answer.origin.session_id == 7


def test_telephone_event_keeps_the_offers_payload_type() -> None:
    offer = build_offer("192.0.2.1", 5000, [PCMU], telephone_event_pt=96)
    answer, neg = negotiate_answer(offer, address="192.0.2.2", port=6000, supported=[PCMU])
    assert neg.telephone_event_pt == 96
    assert answer.media[0].formats == ["0", "96"]


def test_telephone_event_can_be_declined() -> None:
    offer = build_offer("192.0.2.1", 5000, [PCMU])
    answer, neg = negotiate_answer(offer, address="192.0.2.2", port=6000, supported=[PCMU], telephone_event=False)
    assert neg.telephone_event_pt is None
    assert answer.media[0].formats == ["0"]


@pytest.mark.parametrize(
    ("offered", "answered"),
    [("sendonly", "recvonly"), ("recvonly", "sendonly"), ("inactive", "inactive"), ("sendrecv", "sendrecv")],
)
def test_answer_direction_mirrors_the_offer(offered: str, answered: str) -> None:
    offer = build_offer("192.0.2.1", 5000, [PCMU], direction=offered)
    answer, neg = negotiate_answer(offer, address="192.0.2.2", port=6000, supported=[PCMU])
    assert neg.direction == answered
    assert answer.media[0].direction == answered


def test_old_style_hold_with_zero_address_is_treated_as_inactive() -> None:
    offer = SessionDescription.parse(PHONE_OFFER.replace("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0"))
    answer, neg = negotiate_answer(offer, address="192.0.2.2", port=6000, supported=[PCMU])
    assert neg.direction == "inactive"
    assert neg.on_hold
    assert answer.media[0].direction == "inactive"


def test_other_and_unsupported_streams_are_rejected_with_port_zero_and_same_formats() -> None:
    offer = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        "m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
        "m=audio 5002 RTP/AVP 18\r\n"
        "m=audio 5004 RTP/SAVP 0\r\n"
        "m=audio 5006 RTP/AVP 0 8\r\n"
        "m=audio 5008 RTP/AVP 0\r\n"
    )
    answer, neg = negotiate_answer(offer, address="192.0.2.2", port=7000, supported=[PCMU])
    assert [(m.kind, m.port, m.proto, m.formats) for m in answer.media] == [
        ("video", 0, "RTP/AVP", ["96"]),
        ("audio", 0, "RTP/AVP", ["18"]),
        ("audio", 0, "RTP/SAVP", ["0"]),
        ("audio", 7000, "RTP/AVP", ["0"]),
        ("audio", 0, "RTP/AVP", ["0"]),
    ]
    assert neg.media_index == 3
    assert neg.remote_port == 5006
    assert neg.telephone_event_pt is None


def test_offer_without_acceptable_audio_raises_sdp_error() -> None:
    offer = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 5002 RTP/AVP 18 101\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
    )
    with pytest.raises(SdpError):
        negotiate_answer(offer, address="192.0.2.2", port=6000, supported=[PCMU, PCMA])


def test_offer_without_connection_address_is_not_acceptable() -> None:
    offer = SessionDescription.parse("v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\nm=audio 5002 RTP/AVP 0\r\n")
    with pytest.raises(SdpError):
        negotiate_answer(offer, address="192.0.2.2", port=6000, supported=[PCMU])


def test_codec_matching_ignores_name_case_and_payload_type() -> None:
    offer = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 5002 RTP/AVP 97\r\n"
        "a=rtpmap:97 OPUS/48000/2\r\n"
    )
    _, neg = negotiate_answer(offer, address="192.0.2.2", port=6000, supported=[OPUS])
    assert neg.codec.payload_type == 97
    assert neg.codec.name == "OPUS"


def test_read_answer_reports_the_codec_address_and_events_the_answerer_picked() -> None:
    offer = build_offer("192.0.2.1", 5000, [PCMU, PCMA])
    answer = SessionDescription.parse(
        "v=0\r\no=- 9 9 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
        "m=audio 9000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:40\r\n"
    )
    neg = read_answer(offer, answer)
    assert neg == Negotiated(PCMA, 101, "192.0.2.9", 9000, "sendrecv", 40, 0)


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        ("sendrecv", "recvonly", "sendonly"),
        ("sendrecv", "sendonly", "recvonly"),
        ("sendonly", "recvonly", "sendonly"),
        ("sendrecv", "inactive", "inactive"),
        ("inactive", "sendrecv", "inactive"),
    ],
)
def test_read_answer_computes_our_direction(ours: str, theirs: str, expected: str) -> None:
    offer = build_offer("192.0.2.1", 5000, [PCMU], direction=ours)
    answer = build_offer("192.0.2.9", 9000, [PCMU], direction=theirs)
    assert read_answer(offer, answer).direction == expected


def test_read_answer_with_zero_address_means_we_must_not_send() -> None:
    offer = build_offer("192.0.2.1", 5000, [PCMU])
    answer = build_offer("0.0.0.0", 9000, [PCMU])
    assert read_answer(offer, answer).direction == "recvonly"


def test_read_answer_errors() -> None:
    offer = build_offer("192.0.2.1", 5000, [PCMU])
    with pytest.raises(SdpError):  # codec we did not offer
        read_answer(offer, build_offer("192.0.2.9", 9000, [PCMA]))
    with pytest.raises(SdpError):  # stream rejected
        rejected = build_offer("192.0.2.9", 9000, [PCMU])
        rejected.media[0].port = 0
        read_answer(offer, rejected)
    with pytest.raises(SdpError):  # wrong number of m= lines
        two = build_offer("192.0.2.9", 9000, [PCMU])
        two.media.append(MediaDescription("video", 0, "RTP/AVP", ["96"]))
        read_answer(offer, two)
    with pytest.raises(SdpError):  # no address
        bare = build_offer("192.0.2.9", 9000, [PCMU])
        bare.connection = None
        read_answer(offer, bare)


def test_telephone_event_with_the_chosen_codecs_clock_rate_is_used() -> None:
    offer = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 5002 RTP/AVP 111 101 110\r\n"
        "a=rtpmap:111 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\na=rtpmap:110 telephone-event/48000\r\n"
    )
    answer, neg = negotiate_answer(offer, address="192.0.2.2", port=6000, supported=[OPUS])
    assert neg.telephone_event_pt == 110
    assert answer.media[0].formats == ["111", "110"]
    assert read_answer(offer, answer).telephone_event_pt == 110


def test_telephone_event_with_another_clock_rate_is_not_negotiated() -> None:
    offer = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 5002 RTP/AVP 111 101\r\n"
        "a=rtpmap:111 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
    _, neg = negotiate_answer(offer, address="192.0.2.2", port=6000, supported=[OPUS])
    assert neg.telephone_event_pt is None


def test_build_offer_refuses_clashing_or_out_of_range_payload_types() -> None:
    with pytest.raises(SdpError):
        build_offer("192.0.2.1", 5000, [PCMU, Codec(101, "opus", 48000, 2)])
    with pytest.raises(SdpError):
        build_offer("192.0.2.1", 5000, [Codec(200, "opus", 48000, 2)])


def test_extra_spaces_in_o_c_and_m_lines_are_tolerated() -> None:
    sdp = SessionDescription.parse(
        "v=0\r\no=-  1 1 IN IP4 h \r\ns=-\r\nc=IN IP4  192.0.2.1\r\nt=0 0 \r\nm=audio 5000  RTP/AVP 0 8 \r\n"
    )
    assert sdp.connection == "192.0.2.1"
    assert sdp.media[0].formats == ["0", "8"]
    assert sdp.timing == [(0, 0)]
