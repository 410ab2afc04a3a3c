"""Property tests: generated SIP/SDP round-trip, and hostile bytes only ever raise the parsers' own errors."""

from __future__ import annotations

import ipaddress
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.sip.headers import canonical_name
from bridge.sip.message import (
    Headers,
    NameAddr,
    Request,
    Response,
    SipParseError,
    StreamFramer,
    Via,
    parse_message,
)
from bridge.sip.sdp import (
    STATIC_PAYLOADS,
    Codec,
    MediaDescription,
    Origin,
    SdpError,
    SessionDescription,
    negotiate_answer,
    read_answer,
)
from bridge.sip.uri import SipUri

PROFILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALNUM = string.ascii_letters + string.digits
TOKEN_CHARS = ALNUM + "-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
lower_tokens = st.text(string.ascii_lowercase + string.digits + "-.!%*_+`'~", min_size=1, max_size=10)

# ---------------------------------------------------------------- generators for SIP structures

hostnames = st.lists(st.text(ALNUM, min_size=1, max_size=8), min_size=1, max_size=4).map(".".join)
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: ipaddress.IPv6Address(n).compressed)
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.none() | st.integers(0, 65535)

USER_CHARS = ALNUM + "-_.!~*'()&=+$,;?/%"
PARAM_VALUE_CHARS = ALNUM + "-_.!~*'()%+$:/[]&"
uri_params = st.dictionaries(lower_tokens, st.none() | st.text(PARAM_VALUE_CHARS, max_size=8), max_size=4)
uri_headers = st.dictionaries(
    st.text(ALNUM + "-_.", min_size=1, max_size=8), st.text(ALNUM + "-_.%:", max_size=8), max_size=3
)


@st.composite
def sip_uris(draw: st.DrawFn) -> SipUri:
    user = draw(st.none() | st.text(USER_CHARS, min_size=1, max_size=12))
    password = draw(st.none() | st.text(ALNUM + "&=+$,-_.", max_size=8)) if user is not None else None
    return SipUri(
        scheme=draw(st.sampled_from(["sip", "sips"])),
        user=user,
        password=password,
        host=draw(hosts),
        port=draw(ports),
        params=draw(uri_params),
        headers=draw(uri_headers),
    )


header_param_values = st.none() | st.text(TOKEN_CHARS, min_size=1, max_size=10)
header_params = st.dictionaries(lower_tokens, header_param_values, max_size=3)
# Any UTF-8 text but CR, LF and NUL, which no header can carry.
header_chars = st.characters(codec="utf-8", exclude_characters="\r\n\x00")
display_names = st.none() | st.text(header_chars, max_size=20)


@st.composite
def name_addrs(draw: st.DrawFn) -> NameAddr:
    return NameAddr(draw(sip_uris()), draw(display_names), draw(header_params))


@st.composite
def vias(draw: st.DrawFn) -> Via:
    params = draw(header_params)
    params["branch"] = "z9hG4bK" + draw(tokens)
    return Via(draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP"])), draw(hosts), draw(ports), params)


def _free_extra_header(name: str) -> bool:
    """Extra headers must not be a second From/To/Call-ID/CSeq (an error) or a Content-Length."""
    return canonical_name(name)[1] not in ("content-length", "from", "to", "call-id", "cseq")


header_values = st.text(header_chars, max_size=40).map(str.strip)
extra_headers = st.lists(st.tuples(tokens.filter(_free_extra_header), header_values), max_size=8)
bodies = st.binary(max_size=300)


@st.composite
def common_headers(draw: st.DrawFn, method: str) -> Headers:
    h = Headers()
    for via in draw(st.lists(vias(), min_size=1, max_size=3)):
        h.add("Via", str(via))
    h.add("From", str(draw(name_addrs())))
    h.add("To", str(draw(name_addrs())))
    h.add("Call-ID", draw(tokens) + "@" + draw(hostnames))
    h.add("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}")
    for name, value in draw(extra_headers):
        h.add(name, value)
    return h


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER"]) | tokens)
    return Request(method, str(draw(sip_uris())), draw(common_headers(method)), draw(bodies))


@st.composite
def responses(draw: st.DrawFn) -> Response:
    method = draw(st.sampled_from(["INVITE", "BYE"]) | tokens)
    reason = draw(header_values)
    return Response(draw(st.integers(100, 699)), reason, draw(common_headers(method)), draw(bodies))


# ---------------------------------------------------------------- SIP properties


@PROFILE
@given(sip_uris())
def test_generated_uris_round_trip(uri: SipUri) -> None:
    assert SipUri.parse(str(uri)) == uri


@PROFILE
@given(name_addrs())
def test_generated_name_addrs_round_trip(na: NameAddr) -> None:
    assert NameAddr.parse(str(na)) == na


@PROFILE
@given(vias())
def test_generated_vias_round_trip(via: Via) -> None:
    assert Via.parse(str(via)) == via


@PROFILE
@given(requests() | responses())
def test_generated_messages_round_trip_through_serialize_and_parse(msg: Request | Response) -> None:
    parsed = parse_message(msg.serialize())
    assert parsed == msg
    assert parsed.headers.get("Content-Length") == str(len(msg.body))


@PROFILE
@given(st.lists(requests() | responses(), min_size=1, max_size=4), st.data())
def test_stream_framer_recovers_generated_messages_from_any_segmentation(
    msgs: list[Request | Response], data: st.DataObject
) -> None:
    stream = b"".join(m.serialize() for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    framer = StreamFramer()
    out: list[Request | Response | SipParseError] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += framer.feed(stream[start:end])
    assert out == msgs
    assert framer.pending() == 0


def _only_sip_parse_errors(data: bytes) -> None:
    try:
        parse_message(data)
    except SipParseError:
        pass
    framer = StreamFramer(max_size=2048)
    for i in range(0, len(data), 97):
        for item in framer.feed(data[i : i + 97]):
            assert isinstance(item, Request | Response | SipParseError)


@PROFILE
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_sip_parse_error(data: bytes) -> None:
    _only_sip_parse_errors(data)


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(requests() | responses()).serialize())
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(raw)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = draw(
            st.sampled_from([b"\r\n", b"\n", b" ", b":", b";", b",", b'"', b"<", b">", b"\x00", b"\xff", b"9"])
        )
        if action == "insert":
            raw[pos:pos] = chunk
        elif action == "delete":
            del raw[pos : pos + draw(st.integers(1, 20))]
        else:
            raw[pos : pos + len(chunk)] = chunk
    return bytes(raw)


@PROFILE
@given(mutated_messages())
def test_mutated_valid_messages_raise_only_sip_parse_error(data: bytes) -> None:
    _only_sip_parse_errors(data)


@PROFILE
@given(mutated_messages())
def test_convenience_properties_of_any_parsed_message_raise_only_sip_parse_error(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except SipParseError:
        return
    for prop in ("call_id", "cseq", "vias", "top_via", "branch", "from_", "to", "contact", "content_type"):
        try:
            getattr(msg, prop)
        except SipParseError:
            pass


# ---------------------------------------------------------------- SDP generators and properties

SDP_TEXT = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="\r\n") | st.just("\t"), min_size=1, max_size=20
)
SDP_TOKEN_CHARS = ALNUM + "!#$%&'*+.^_`{|}~-"
sdp_tokens = st.text(SDP_TOKEN_CHARS, min_size=1, max_size=10)
non_ws = st.text(ALNUM + "/.:-_", min_size=1, max_size=12)
addresses = st.one_of(ipv4, ipv6, hostnames)
sdp_attributes = st.lists(st.tuples(sdp_tokens, st.none() | SDP_TEXT | st.just("")), max_size=5)
bandwidths = st.lists(st.tuples(sdp_tokens, st.integers(0, 2**32 - 1)), max_size=2)


@st.composite
def media_descriptions(draw: st.DrawFn) -> MediaDescription:
    return MediaDescription(
        kind=draw(sdp_tokens),
        port=draw(st.integers(0, 65535)),
        proto=draw(non_ws),
        formats=draw(st.lists(non_ws, min_size=1, max_size=5)),
        connection=draw(st.none() | addresses),
        attributes=draw(sdp_attributes),
        bandwidths=draw(bandwidths),
        port_count=draw(st.none() | st.integers(0, 65535)),
    )


@st.composite
def session_descriptions(draw: st.DrawFn) -> SessionDescription:
    address = draw(addresses)
    origin = Origin(
        draw(non_ws),
        draw(st.integers(0, 2**64 - 1)),
        draw(st.integers(0, 2**64 - 1)),
        "IN",
        "IP6" if ":" in address else "IP4",
        address,
    )
    return SessionDescription(
        origin=origin,
        session_name=draw(SDP_TEXT),
        connection=draw(st.none() | addresses),
        attributes=draw(sdp_attributes),
        media=draw(st.lists(media_descriptions(), max_size=4)),
        timing=draw(st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)), min_size=1, max_size=2)),
        bandwidths=draw(bandwidths),
    )


@PROFILE
@given(session_descriptions())
def test_generated_sdp_round_trips(sdp: SessionDescription) -> None:
    text = sdp.serialize()
    assert SessionDescription.parse(text, max_size=10**6) == sdp
    assert SessionDescription.parse(text.encode(), max_size=10**6) == sdp


def _only_sdp_errors(data: str | bytes) -> None:
    try:
        sdp = SessionDescription.parse(data)
    except SdpError:
        return
    for media in sdp.media:  # derived views must not blow up on odd but parsable input
        _ = (media.codecs, media.ptime, media.telephone_event, media.direction)


@PROFILE
@given(st.binary(max_size=600) | st.text(max_size=300))
def test_arbitrary_input_raises_only_sdp_error(data: str | bytes) -> None:
    _only_sdp_errors(data)


@st.composite
def mutated_sdps(draw: st.DrawFn) -> str:
    text = list(draw(session_descriptions()).serialize())
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(text)))
        text[pos:pos] = draw(
            st.sampled_from(["\r\n", "\n", "=", " ", ":", "/", "a=rtpmap:", "m=", "9" * 25, "\x00", "é"])
        )
    return "".join(text)


@PROFILE
@given(mutated_sdps())
def test_mutated_sdp_raises_only_sdp_error(text: str) -> None:
    _only_sdp_errors(text)


# ---------------------------------------------------------------- offer/answer invariants

SUPPORTED = [STATIC_PAYLOADS[0], STATIC_PAYLOADS[8], Codec(96, "opus", 48000, 2)]


@st.composite
def audio_offers(draw: st.DrawFn) -> SessionDescription:
    """Offers from phones: random audio/video streams, payload types, rtpmaps, directions, hold addresses."""
    media = []
    for _ in range(draw(st.integers(1, 3))):
        pts = draw(st.lists(st.integers(0, 127), min_size=1, max_size=5, unique=True))
        attrs: list[tuple[str, str | None]] = []
        for pt in pts:
            if pt >= 96 or draw(st.booleans()):
                name, rate = draw(
                    st.sampled_from(
                        [
                            ("PCMU", 8000),
                            ("pcma", 8000),
                            ("opus", 48000),
                            ("telephone-event", 8000),
                            ("telephone-event", 48000),
                            ("G729", 8000),
                            ("speex", 16000),
                        ]
                    )
                )
                chans = "/2" if name == "opus" else ""
                attrs.append(("rtpmap", f"{pt} {name}/{rate}{chans}"))
        if draw(st.booleans()):
            attrs.append((draw(st.sampled_from(["sendrecv", "sendonly", "recvonly", "inactive"])), None))
        if draw(st.booleans()):
            attrs.append(("ptime", draw(st.sampled_from(["10", "20", "30", "0", "x"]))))
        media.append(
            MediaDescription(
                kind=draw(st.sampled_from(["audio", "audio", "video"])),
                port=draw(st.sampled_from([0, 4000, 50000])),
                proto=draw(st.sampled_from(["RTP/AVP", "RTP/AVPF", "RTP/SAVP"])),
                formats=[str(pt) for pt in pts],
                connection=draw(st.none() | st.sampled_from(["192.0.2.7", "0.0.0.0"])),
                attributes=attrs,
            )
        )
    return SessionDescription(
        origin=Origin("-", 1, 1, "IN", "IP4", "192.0.2.7"),
        connection=draw(st.none() | st.sampled_from(["192.0.2.8", "0.0.0.0", "::1"])),
        media=media,
    )


@PROFILE
@given(audio_offers())
def test_answers_to_any_offer_keep_rfc3264_invariants(offer: SessionDescription) -> None:
    offer = SessionDescription.parse(offer.serialize())
    try:
        answer, neg = negotiate_answer(offer, address="198.51.100.1", port=7000, supported=SUPPORTED)
    except SdpError:
        return
    answer = SessionDescription.parse(answer.serialize())
    assert len(answer.media) == len(offer.media)
    accepted = [i for i, m in enumerate(answer.media) if m.port != 0]
    assert accepted == [neg.media_index]
    offered = offer.media[neg.media_index]
    assert offered.kind == "audio"
    assert neg.codec in offered.codecs
    assert any(neg.codec.same_format(s) for s in SUPPORTED)
    assert answer.media[neg.media_index].codecs[0] == Codec(
        neg.codec.payload_type, neg.codec.name, neg.codec.clock_rate, neg.codec.channels
    )
    for rejected, original in zip(answer.media, offer.media, strict=True):
        if rejected.port == 0:
            assert rejected.formats == original.formats
    # what the offerer learns from our answer matches what we negotiated
    back = read_answer(offer, answer)
    assert back.codec.payload_type == neg.codec.payload_type
    assert back.telephone_event_pt == neg.telephone_event_pt
    assert (back.remote_address, back.remote_port) == ("198.51.100.1", 7000)


@PROFILE
@given(mutated_sdps(), mutated_sdps())
def test_offer_answer_on_hostile_sdp_raises_only_sdp_error(offer_text: str, answer_text: str) -> None:
    try:
        offer = SessionDescription.parse(offer_text)
        answer = SessionDescription.parse(answer_text)
    except SdpError:
        return
    for call in (
        lambda: negotiate_answer(offer, address="192.0.2.1", port=5000, supported=SUPPORTED),
        lambda: read_answer(offer, answer),
    ):
        try:
            call()
        except SdpError:
            pass
